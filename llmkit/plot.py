"""`llmkit plot`: training curves from `report.json`, and the pictures a training run leaves in its output.

- `read_runs(path)`: the curves of a finetune or distill output (a folder or its report.json): training loss,
  its KD/hard-label parts (distill) and learning rate by step; validation loss and metrics by evaluation. A
  distill run with `--baseline` gives two runs: the student and the same student trained without the teacher.
- `figure(runs)`: one matplotlib figure, a panel each for loss, learning rate and validation metrics, every run
  overlaid in its own colour; `plot()` writes it as a PNG (`OUTPUT/curves.png` at the end of training).
- `terminal_chart(runs)`: a small plotext chart of the loss for the closing summary on a terminal.
- `confusion_figure()` / `write_confusion_matrix()`: a classification evaluation's confusion matrix.

matplotlib (drawn off-screen with Agg, without pyplot's global state) and plotext are the optional extra
`llmkit[plot]`; they are imported inside the functions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmkit.errors import DataError, MissingDependencyError, NotFoundError, library_words

DEFAULT_OUTPUT = "curves.png"
CURVES_FILE = "curves.png"  # written into a training output folder
CONFUSION_FILE = "confusion_matrix.png"
INSTALL_HINT = "pip install 'llmkit[plot]'"
PANEL_INCHES = (4.6, 3.6)  # width, height of one panel
DPI = 100
TERMINAL_HEIGHT = 14  # rows of the closing summary's chart

# Names of the loss parts distill logs (training.py's log records), in drawing order, with their legend names.
LOSS_PARTS = {"loss_kd": "KD part", "loss_hard": "hard-label part", "loss_hidden": "hidden part",
              "loss_attention": "attention part"}  # fmt: skip
_NOT_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step")
_METRIC_NAMES = {"eval_accuracy": "accuracy", "eval_macro_f1": "macro-F1", "eval_perplexity": "perplexity",
                 "eval_mse": "MSE", "eval_mae": "MAE", "eval_pearson": "Pearson r"}  # fmt: skip


@dataclass(frozen=True)
class Run:
    """The curves of one training run.

    Attributes:
        name: the legend name (the output folder's name; distill's baseline adds "(no KD)").
        task: classification, regression, causal-lm, masked-lm, or None when the report does not say.
        log: training records by step (`step`, `loss`, `learning_rate`, distill's `loss_kd`, `loss_hard`, ...).
        evaluations: validation records by step (`step`, `eval_loss`, `eval_accuracy`, ...).
    """

    name: str
    task: str | None
    log: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str, *, evaluation: bool = False) -> tuple[list[int], list[float]]:
        """(steps, values) of `key`, leaving out records without a finite value."""
        steps, values = [], []
        for record in self.evaluations if evaluation else self.log:
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value) and isinstance(record.get("step"), int):
                steps.append(int(record["step"]))
                values.append(float(value))
        return steps, values

    def metrics(self) -> list[str]:
        """The validation metrics this run has, besides the loss (eval_accuracy, eval_perplexity, ...)."""
        names: list[str] = []
        for record in self.evaluations:
            for key, value in record.items():
                if key.startswith("eval_") and key not in _NOT_METRICS and isinstance(value, (int, float)):
                    if key not in names:
                        names.append(key)
        return names


@dataclass(frozen=True)
class PlotResult:
    """A picture written by `plot`: where, its size in pixels, and what it shows."""

    output: str
    width: int
    height: int
    runs: list[str]
    panels: list[str]
    series: int  # lines drawn, over all panels
    title: str | None = None


# --- reading ------------------------------------------------------------------------------------------------


def read_runs(path: Path | str) -> list[Run]:
    """The runs in one training output: a folder holding report.json, or the report.json file.

    Raises:
        NotFoundError: no report.json there. DataError: a report.json without a training log.
    """
    path = Path(path)
    report_path = path / "report.json" if path.is_dir() else path
    if not report_path.is_file():
        raise NotFoundError(f"{path}: no report.json (give a folder written by llmkit finetune, distill or pretrain)")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{report_path}: not valid JSON ({exc})") from None
    name = report_path.parent.name or str(report_path.parent)
    return runs_from_report(report, name, source=str(report_path))


def runs_from_report(report: dict[str, Any], name: str, *, source: str = "report.json") -> list[Run]:
    """The runs a report dict holds (finetune: one; distill with --baseline: the student and its baseline).

    Raises:
        DataError: no training log in the report (one written before llmkit recorded it).
    """
    if not isinstance(report, dict) or not isinstance(report.get("log"), list):
        raise DataError(
            f"{source}: no training log (\"log\") in it; it was written by an llmkit that did not record one, "
            "train again to draw its curves"
        )
    result = report.get("result")
    task = (result.get("task") if isinstance(result, dict) else None) or report.get("task")
    evaluations = report.get("evaluations")
    runs = [Run(name, task, _records(report["log"]), _records(evaluations if isinstance(evaluations, list) else []))]
    if isinstance(report.get("baseline_log"), list):
        runs.append(Run(f"{name} (no KD)", task, _records(report["baseline_log"])))
    return runs


def _records(items: list[Any]) -> list[dict[str, Any]]:
    return [r for r in items if isinstance(r, dict)]


# --- drawing ------------------------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise MissingDependencyError (the install command) when matplotlib is not installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError(f"drawing curves needs matplotlib: {INSTALL_HINT}")


def _loss_label(runs: Sequence[Run]) -> str:
    tasks = {r.task for r in runs}
    if tasks == {"regression"}:
        return "loss (mean squared error)"
    if not tasks <= {"classification", "causal-lm", "masked-lm"}:
        return "loss"
    unit = "nats per token" if tasks & {"causal-lm", "masked-lm"} else "nats per example"
    distilled = any(r.series(part)[0] for r in runs for part in ("loss_kd", "loss_hidden", "loss_attention"))
    # distill's loss mixes cross-entropy with T^2 KL (and MSE parts): both are in nats, the sum is not CE.
    return f"loss ({unit})" if distilled else f"cross-entropy loss ({unit})"


def _metric_label(names: Sequence[str]) -> str:
    if names and all(n in ("eval_accuracy", "eval_macro_f1", "eval_pearson") for n in names):
        return "score (0 to 1, higher is better)"
    if names == ["eval_perplexity"]:
        return "perplexity (lower is better)"
    return ", ".join(_METRIC_NAMES.get(n, n.removeprefix("eval_")) for n in names)


def figure(runs: Sequence[Run], *, title: str | None = None) -> Any:
    """A matplotlib Figure of `runs`: loss (training, validation, and distill's parts), learning rate, and
    validation metrics (when there are any), each run in its own colour.

    Raises:
        MissingDependencyError: matplotlib is not installed. DataError: no run has a logged loss.
    """
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not any(r.series("loss")[0] for r in runs):
        raise DataError("nothing to draw: no training loss was logged (was the run a single step?)")
    metrics: list[str] = []
    for run in runs:
        metrics += [m for m in run.metrics() if m not in metrics]
    panels = ["Loss", "Learning rate"] + (["Validation metrics"] if metrics else [])
    fig = Figure(figsize=(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True)[0]
    colours = [f"C{i % 10}" for i in range(len(runs))]
    several = len(runs) > 1
    metric_styles = ["-", "--", ":", "-."]

    def label(run: Run, what: str) -> str:
        return f"{run.name}: {what}" if several else what

    loss_ax, lr_ax = axes[0], axes[1]
    for run, colour in zip(runs, colours, strict=True):
        steps, values = run.series("loss")
        loss_ax.plot(steps, values, color=colour, linewidth=1.6, label=label(run, "training"))
        teacher_parts = [p for p in LOSS_PARTS if run.series(p)[0]]
        if teacher_parts != ["loss_hard"]:  # a run on labels alone: its one part is its loss
            for part, style in zip(teacher_parts, (":", "-.", (0, (1, 3)), (0, (5, 1))), strict=False):
                steps, values = run.series(part)
                loss_ax.plot(steps, values, color=colour, linestyle=style, linewidth=1.2,
                             label=label(run, LOSS_PARTS[part]))
        steps, values = run.series("eval_loss", evaluation=True)
        if steps:
            loss_ax.plot(steps, values, color=colour, linestyle="--", marker="o", markersize=4, linewidth=1.2,
                         label=label(run, "validation"))
        steps, values = run.series("learning_rate")
        lr_ax.plot(steps, values, color=colour, linewidth=1.6, label=run.name)
        if metrics:
            for name, style in zip(metrics, metric_styles * 3, strict=False):
                steps, values = run.series(name, evaluation=True)
                if steps:
                    axes[2].plot(steps, values, color=colour, linestyle=style, marker="o", markersize=4,
                                 label=label(run, _METRIC_NAMES.get(name, name.removeprefix("eval_"))))
    loss_ax.set_ylabel(_loss_label(runs))
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if metrics:
        axes[2].set_ylabel(_metric_label(metrics))
        if metrics == ["eval_perplexity"]:
            axes[2].set_yscale("log")
    for ax, name in zip(axes, panels, strict=True):
        ax.set_title(name)
        ax.set_xlabel("step (optimizer updates)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax is not lr_ax or several:
            ax.legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    return fig


def _save_png(fig: Any, output: Path) -> tuple[int, int]:
    """Write `fig` to `output` (a temp name, then renamed); return its size in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.pid{os.getpid()}.tmp.png"
    canvas = FigureCanvasAgg(fig)
    try:
        fig.savefig(str(tmp), format="png")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    width, height = canvas.get_width_height()
    return int(width), int(height)


def plot(sources: Sequence[Path | str], output: Path | str = DEFAULT_OUTPUT, *, title: str | None = None) -> PlotResult:
    """Draw the runs of one or more training outputs, overlaid, into the PNG `output`.

    Args:
        sources: finetune, distill or pretrain output folders (or their report.json files).
        output: the picture to write (replaced if it exists, only once the new one is complete).
        title: a title over the panels.

    Raises:
        MissingDependencyError: matplotlib is not installed (nothing is written). NotFoundError, DataError.
    """
    require_matplotlib()
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise DataError(f"{output}: the picture is a PNG; name it .png")
    per_source = [read_runs(source) for source in sources]
    runs = [run for found in per_source for run in found]
    if len({r.name for r in runs}) < len(runs):  # two folders of the same name: name the runs by their paths
        runs = [
            replace(run, name=str(Path(source)) + run.name.removeprefix(Path(source).name))
            for source, found in zip(sources, per_source, strict=True)
            for run in found
        ]
    fig = figure(runs, title=title)
    width, height = _save_png(fig, output)
    lines = sum(len(ax.get_lines()) for ax in fig.axes)
    panels = [ax.get_title() for ax in fig.axes]
    return PlotResult(str(output), width, height, [r.name for r in runs], panels, lines, fig.get_suptitle() or None)


def training_pictures(folder: Path, report: dict[str, Any], name: str) -> list[str]:
    """At the end of training: `curves.png` (and for a classification validation `confusion_matrix.png`) into
    the output folder being written. Returns the names of the files written; nothing without matplotlib.

    A picture that cannot be drawn is a warning, never an error: the trained model matters more than its curves.
    """
    import importlib.util

    from llmkit.console import warn

    if importlib.util.find_spec("matplotlib") is None:
        return []
    written = []
    try:
        runs = runs_from_report(report, name)
        if any(r.series("loss")[0] for r in runs):
            _save_png(figure(runs), folder / CURVES_FILE)
            written.append(CURVES_FILE)
        result = report.get("result")
        validation = result.get("validation") if isinstance(result, dict) else None
        if isinstance(validation, dict) and validation.get("confusion_matrix"):
            write_confusion_matrix(validation["labels"], validation["confusion_matrix"], folder / CONFUSION_FILE,
                                   title=f"{name}: validation")
            written.append(CONFUSION_FILE)
    except Exception as exc:  # matplotlib failing on odd data must not cost the run its output
        warn(f"training pictures not drawn ({library_words(exc)}); the model and its report are written")
    return written


def missing_note() -> str | None:
    """The note a training run gives when it cannot draw its curves (matplotlib is not installed)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return f"{CURVES_FILE} not drawn: matplotlib is not installed ({INSTALL_HINT})"
    return None


# --- confusion matrix ---------------------------------------------------------------------------------------


def confusion_figure(labels: Sequence[str], matrix: Sequence[Sequence[int]], *, title: str | None = None) -> Any:
    """A matplotlib Figure of a confusion matrix: rows are the true labels, columns the predicted ones, each
    cell its count (shaded by the share of its row, so small classes read as clearly as large ones)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    n = len(labels)
    if n == 0 or len(matrix) != n or any(len(row) != n for row in matrix):
        raise DataError("a confusion matrix needs one row and one column per label")
    share = [[cell / max(1, sum(row)) for cell in row] for row in matrix]
    side = min(12.0, 2.6 + 0.55 * n)
    fig = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true label's examples")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize="small" if n > 8 else "medium",
                    color="white" if share[i][j] > 0.6 else "black")
    ax.set_xticks(range(n), [str(x) for x in labels], rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), [str(x) for x in labels])
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    total = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(n))
    accuracy = f", accuracy {correct / total:.3f}" if total else ""
    ax.set_title(f"{title + ': ' if title else ''}{total} examples{accuracy}", fontsize="medium")
    return fig


def write_confusion_matrix(
    labels: Sequence[str], matrix: Sequence[Sequence[int]], output: Path | str, *, title: str | None = None
) -> tuple[int, int]:
    """Write the confusion matrix picture (PNG) to `output`; return its size in pixels.

    Raises:
        MissingDependencyError: matplotlib is not installed. DataError: not a .png name, or a malformed matrix.
    """
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise DataError(f"{output}: the confusion matrix picture is a PNG; name it .png")
    return _save_png(confusion_figure(labels, matrix, title=title), output)


# --- terminal -----------------------------------------------------------------------------------------------


def terminal_chart(runs: Sequence[Run], *, width: int = 80, height: int = TERMINAL_HEIGHT) -> str | None:
    """The loss by step (training, and validation where evaluated) as a small plotext chart with ANSI colours,
    or None without plotext (the `plot` extra) or without a logged loss."""
    try:
        import plotext
    except ImportError:
        return None
    if not any(r.series("loss")[0] for r in runs):
        return None
    fig = plotext.figure  # plotext 6: one master figure, drawn from signals
    fig.clear()
    fig.plot_size(width, height)
    fig.theme("simple")  # no background colours: the terminal's own
    several = len(runs) > 1
    for run in runs:
        for key, what, evaluation in (("loss", "training", False), ("eval_loss", "validation", True)):
            steps, values = run.series(key, evaluation=evaluation)
            if steps:
                fig.draw(fig.signal(steps, values).label(f"{run.name}: {what}" if several else what).lines())
    fig.title("loss by step")
    fig.label("step", axis="x")
    chart = str(fig.build())
    fig.clear()
    return chart


def terminal_renderable(runs: Sequence[Run], width: int = 80) -> Any:
    """`terminal_chart` as a rich renderable (None when there is nothing to draw)."""
    chart = terminal_chart(runs, width=width)
    if chart is None:
        return None
    from rich.text import Text

    return Text.from_ansi(chart)


def show_training_summary(output: Path | str, report_to: Sequence[str], fmt: str) -> None:
    """The end of a training command's output: on a terminal (`fmt` rich) the loss chart on stdout, then on
    stderr where the curves picture and each local tracker's log are, with the command that shows them."""
    from llmkit import output as out
    from llmkit.tracking import viewing_hints

    output = Path(output)
    if fmt == "rich" and (output / "report.json").is_file():
        console = out.stdout_console()
        try:
            chart = terminal_renderable(read_runs(output), width=min(100, console.width))
        except (DataError, NotFoundError):
            chart = None
        if chart is not None:
            console.print(chart)
    if (output / CURVES_FILE).is_file():
        out.info(f"Curves: {output / CURVES_FILE} (redraw or compare runs: llmkit plot {output} OTHER_RUN)")
    for line in viewing_hints(report_to, output):
        out.info(f"Log for {line}")
