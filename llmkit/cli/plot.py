"""`llmkit plot`: options and the thin command over `llmkit.plot.plot()`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit import plot as _plot  # matplotlib is imported only when it draws
from llmkit.cli.options import FormatOpt, JsonOpt, command_app

app = command_app()


@app.command(
    "plot",
    epilog="Examples:\n\n"
    "  llmkit plot ./sentiment   (training and validation loss, learning rate, accuracy and macro-F1)\n\n"
    "  llmkit plot ./sentiment-full ./sentiment-lora -o full-vs-lora.png\n\n"
    "  llmkit plot ./small   (a distill --baseline run: the student against the same student without KD)\n\n"
    "  llmkit plot ./a ./b --json | jq .series",
)
def plot(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Output folders of llmkit finetune, distill or pretrain (or their report.json files).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The PNG to write (replaced once the new one is complete).")
    ] = Path(_plot.DEFAULT_OUTPUT),
    title: Annotated[str | None, typer.Option("--title", help="A title over the panels.")] = None,
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Draw training curves from finetune, distill or pretrain outputs (report.json) into a PNG, several runs overlaid.

    Panels: the loss by step (training, validation, and for distill its KD and hard-label parts), the learning
    rate, and the validation metrics (accuracy and macro-F1, perplexity, MSE, ...). Each run gets its own colour,
    so full fine-tuning against LoRA, or a student against one trained without the teacher, read at a glance.
    matplotlib draws it (pip install 'llmkit[plot]'); on a terminal the loss also shows as a text chart.
    """
    from llmkit import output as out

    fmt = out.resolve_format(fmt, json_out)
    result = _plot.plot(runs, output, title=title)
    if fmt == "rich":
        chart = _plot.terminal_renderable([r for source in runs for r in _plot.read_runs(source)],
                                          width=min(100, out.stdout_console().width))
        if chart is not None:
            out.stdout_console().print(chart)
    out.Emitter(fmt, text=_describe).emit(result)


def _describe(result: _plot.PlotResult) -> str:
    return (
        f"Wrote {result.output} ({result.width}x{result.height} px): {', '.join(result.panels)} of "
        f"{', '.join(result.runs)}"
    )
