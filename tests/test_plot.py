"""`llmkit plot` and the pictures of a training run, on report.json files written by real tiny runs: the figure
object is inspected (panels, series, the values drawn), not just the file."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmkit import plot
from llmkit.cli import app
from llmkit.errors import EXIT_MISSING_DEPENDENCY, EXIT_NOT_FOUND, EXIT_USAGE, DataError

SENTIMENT = Path(__file__).parent / "data" / "sentiment.csv"
RUN = ["--validation-split", "0.25", "--batch-size", "4", "--max-steps", "6", "--eval-steps", "3", "--lr", "0.01",
       "--seed", "1", "--json"]  # fmt: skip


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def two_runs(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Full fine-tuning and head-only training of the tiny encoder on the same 16 rows: two real report.json."""
    import torch

    rows = SENTIMENT.read_text().splitlines()
    pos = [r for r in rows[1:] if r.endswith(",positive")][:8]
    neg = [r for r in rows[1:] if r.endswith(",negative")][:8]
    folder = tmp_path_factory.mktemp("plot")
    data = folder / "small.csv"
    data.write_text("\n".join([rows[0]] + [x for pair in zip(pos, neg, strict=True) for x in pair]) + "\n")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, extra in (("full", []), ("head", ["--train-only", "head"])):
            result = invoke(["finetune", str(data), "-m", str(tiny_encoder), "-o", str(folder / name), *RUN, *extra])
            assert result.exit_code == 0, result.stderr
    finally:
        torch.set_num_threads(before)
    return folder / "full", folder / "head"


def test_training_writes_curves_and_a_confusion_matrix_into_its_output(two_runs: tuple[Path, Path]) -> None:
    full, _ = two_runs
    width, height = png_size(full / "curves.png")
    # loss, learning rate and validation metrics: three panels of PANEL_INCHES at DPI
    assert (width, height) == (round(3 * plot.PANEL_INCHES[0] * plot.DPI), round(plot.PANEL_INCHES[1] * plot.DPI))
    assert png_size(full / "confusion_matrix.png")[0] > 200


def test_report_json_holds_the_history_the_curves_are_drawn_from(two_runs: tuple[Path, Path]) -> None:
    full, _ = two_runs
    (run,) = plot.read_runs(full)
    report = json.loads((full / "report.json").read_text())
    assert run.name == "full" and run.task == "classification"
    assert run.series("loss")[0] == [1, 2, 3, 4, 5, 6]
    assert run.series("learning_rate")[1][0] == pytest.approx(0.01)
    assert run.series("eval_loss", evaluation=True)[0] == [3, 6]
    assert run.metrics() == ["eval_accuracy", "eval_macro_f1"]
    assert run.series("loss")[1] == [r["loss"] for r in report["log"] if "loss" in r]


def test_plot_overlays_two_real_runs(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    full, head = two_runs
    runs = plot.read_runs(full) + plot.read_runs(head)
    fig = plot.figure(runs)
    loss, rate, metrics = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Learning rate", "Validation metrics"]
    assert [line.get_label() for line in loss.get_lines()] == [
        "full: training", "full: validation", "head: training", "head: validation"
    ]  # fmt: skip
    assert loss.get_xlabel() == "step (optimizer updates)"
    assert loss.get_ylabel() == "cross-entropy loss (nats per example)"
    assert rate.get_ylabel() == "learning rate"
    assert metrics.get_ylabel() == "score (0 to 1, higher is better)"
    # the lines hold the values of each report, each run in its own colour
    for line, run in zip(loss.get_lines()[::2], runs, strict=True):
        assert list(line.get_xdata()) == run.series("loss")[0]
        assert list(line.get_ydata()) == run.series("loss")[1]
    assert loss.get_lines()[0].get_color() != loss.get_lines()[2].get_color()
    assert {line.get_label() for line in metrics.get_lines()} == {
        "full: accuracy", "full: macro-F1", "head: accuracy", "head: macro-F1"
    }  # fmt: skip
    assert len(rate.get_lines()) == 2 and [t.get_text() for t in rate.get_legend().get_texts()] == ["full", "head"]

    result = plot.plot([full, head], tmp_path / "both.png")
    assert png_size(tmp_path / "both.png") == (result.width, result.height) == (1380, 360)
    assert result.runs == ["full", "head"] and result.series == 10


def test_plot_command_writes_the_png_and_says_what_it_drew(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    full, head = two_runs
    out = tmp_path / "full-vs-head.png"
    result = invoke(["plot", str(full), str(head / "report.json"), "-o", str(out), "--title", "full vs head",
                     "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record == {"output": str(out), "width": 1380, "height": 360,
                      "runs": ["full", "head"], "panels": ["Loss", "Learning rate", "Validation metrics"],
                      "series": 10, "title": "full vs head"}  # fmt: skip
    assert png_size(out) == (record["width"], record["height"])
    text = invoke(["plot", str(full), "-o", str(tmp_path / "one.png"), "--format", "text"])
    assert text.stdout.startswith(f"Wrote {tmp_path / 'one.png'} (1380x360 px): Loss, Learning rate")


def test_two_runs_of_the_same_name_are_told_apart_by_their_paths(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    full, _ = two_runs
    other = tmp_path / "again" / "full"
    shutil.copytree(full, other)
    result = plot.plot([full, other], tmp_path / "same.png")
    assert result.runs == [str(full), str(other)]


def test_distill_runs_give_the_student_and_its_baseline() -> None:
    report = {
        "task": "classification",
        "log": [{"step": 1, "loss": 0.5, "loss_kd": 0.2, "loss_hard": 0.8, "learning_rate": 1e-3},
                {"step": 2, "loss": 0.4, "loss_kd": 0.1, "loss_hard": 0.7, "learning_rate": 5e-4}],
        "baseline_log": [{"step": 1, "loss": 0.9, "loss_hard": 0.9, "learning_rate": 1e-3},
                         {"step": 2, "loss": 0.8, "loss_hard": 0.8, "learning_rate": 5e-4}],
    }  # fmt: skip
    runs = plot.runs_from_report(report, "small")
    assert [r.name for r in runs] == ["small", "small (no KD)"]
    fig = plot.figure(runs)
    assert len(fig.axes) == 2  # no evaluations: loss and learning rate
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    # the student's loss and its two parts; the baseline's loss is its hard-label loss, drawn once
    assert labels == ["small: training", "small: KD part", "small: hard-label part", "small (no KD): training"]
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == [0.2, 0.1]
    assert fig.axes[0].get_ylabel() == "loss (nats per example)"


def test_a_report_without_a_log_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps({"result": {"task": "classification"}}))
    result = invoke(["plot", str(tmp_path / "old"), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.startswith("Error: ") and "no training log" in result.stderr
    missing = invoke(["plot", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.png")])
    assert missing.exit_code == EXIT_NOT_FOUND
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(DataError, match="name it .png"):
        plot.plot([tmp_path / "old"], tmp_path / "x.jpg")


def test_plot_without_matplotlib_is_one_line_and_writes_nothing(
    two_runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    result = invoke(["plot", str(two_runs[0]), "-o", str(tmp_path / "c.png")])
    assert result.exit_code == EXIT_MISSING_DEPENDENCY
    assert result.stdout == ""
    assert result.stderr == "Error: drawing curves needs matplotlib: pip install 'llmkit[plot]'\n"
    assert list(tmp_path.iterdir()) == []


def test_training_without_matplotlib_says_so_and_still_finishes(
    tiny_encoder: Path, two_runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    data = two_runs[0].parent / "small.csv"
    result = invoke(["finetune", str(data), "-m", str(tiny_encoder), "-o", str(tmp_path / "m"), *RUN,
                     "--max-steps", "2"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "curves.png not drawn: matplotlib is not installed (pip install 'llmkit[plot]')" in result.stderr
    assert (tmp_path / "m" / "report.json").exists() and not (tmp_path / "m" / "curves.png").exists()


def test_terminal_chart_draws_the_loss(two_runs: tuple[Path, Path]) -> None:
    chart = plot.terminal_chart(plot.read_runs(two_runs[0]), width=60, height=12)
    assert chart is not None
    lines = chart.splitlines()
    assert len(lines) == 12 and "loss by step" in lines[0]
    assert "training" in chart and "validation" in chart
    assert plot.terminal_chart([plot.Run("empty", None)]) is None


def test_confusion_figure_shows_each_count(tmp_path: Path) -> None:
    fig = plot.confusion_figure(["cat", "dog", "fish"], [[5, 1, 0], [2, 7, 0], [0, 0, 3]], title="pets")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["5", "1", "0", "2", "7", "0", "0", "0", "3"]
    assert ax.get_xlabel() == "predicted label" and ax.get_ylabel() == "true label"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "fish"]
    assert ax.get_title() == "pets: 18 examples, accuracy 0.833"
    width, height = plot.write_confusion_matrix(["a", "b"], [[1, 0], [0, 1]], tmp_path / "cm.png")
    assert png_size(tmp_path / "cm.png") == (width, height)
    with pytest.raises(DataError):
        plot.confusion_figure(["a", "b"], [[1, 0]])


def test_classify_evaluate_draws_the_confusion_matrix(tiny_classifier: Path, tmp_path: Path) -> None:
    table = tmp_path / "gold.csv"
    table.write_text("text,label\ngood film,positive\nbad film,negative\ngreat movie,positive\nawful plot,negative\n")
    picture = tmp_path / "cm.png"
    result = invoke(["classify", "-m", str(tiny_classifier), "-i", str(table), "--label-column", "label",
                     "--evaluate", "--confusion-matrix", str(picture), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert sum(map(sum, report["confusion"])) == 4
    assert png_size(picture)[0] > 200
    assert f"Confusion matrix: {picture}" in result.stderr


def test_confusion_matrix_needs_evaluate_and_a_png(tiny_classifier: Path, tmp_path: Path) -> None:
    base = ["classify", "-m", str(tiny_classifier), "-i", str(SENTIMENT), "--label-column", "label"]
    no_eval = invoke([*base, "--confusion-matrix", str(tmp_path / "cm.png")])
    assert no_eval.exit_code == EXIT_USAGE and "add --evaluate" in no_eval.stderr
    jpg = invoke([*base, "--evaluate", "--confusion-matrix", str(tmp_path / "cm.jpg")])
    assert jpg.exit_code == EXIT_USAGE and "name it .png" in jpg.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_picture_that_fails_to_draw_never_costs_the_trained_model(
    tiny_encoder: Path, two_runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise ValueError("no room on the canvas")

    monkeypatch.setattr(plot, "figure", broken)
    data = two_runs[0].parent / "small.csv"
    result = invoke(["finetune", str(data), "-m", str(tiny_encoder), "-o", str(tmp_path / "m"), *RUN,
                     "--max-steps", "2"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "Warning: training pictures not drawn: ValueError: no room on the canvas" in result.stderr
    assert (tmp_path / "m" / "model.safetensors").exists() and not (tmp_path / "m" / "curves.png").exists()
