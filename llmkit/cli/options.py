"""Option aliases shared by every command: one definition, so all commands agree on names and help.

Only typer is imported here (no torch, no task module), so `llmkit --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

FORMATS = ("auto", "json", "text", "rich")


def _check_format(value: str) -> str:
    """Reject a misspelt --format (exit 2) instead of silently printing rich tables into a pipe."""
    if value not in FORMATS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(FORMATS)}")
    return value


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id, local folder, .gguf file, or built-in alias (see `llmkit models`)."),
]
AdapterOpt = Annotated[
    str | None,
    typer.Option(
        "--adapter",
        help="A peft adapter folder (LoRA, prompt or prefix tuning, e.g. from llmkit finetune --strategy) to run "
        "on --model without merging; --model ADAPTER_DIR alone finds its base.",
    ),
]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.")]
AllowPickleOpt = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow .bin/.pt checkpoints (unpickling can run code).")
]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|mps (auto: cuda, then mps, then cpu).")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto|float32|bfloat16|float16 (auto: the fastest faithful choice per task).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed, for reproducible sampling/training.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout, even on a terminal.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="auto|json|text|rich (auto: rich on a terminal, JSON lines in a pipe).",
        callback=_check_format,
    ),
]
InputOpt = Annotated[
    Path | None,
    typer.Option("--input", "-i", help="Read inputs from FILE (text lines, .jsonl, .json, .csv, .tsv, .parquet)."),
]
InputFormatOpt = Annotated[
    str, typer.Option("--input-format", help="auto|text|jsonl|csv|tsv|parquet (auto: a file by its suffix; stdin "
                 "by its first line: JSON lines holding the text column, a CSV/TSV header naming --text-column, "
                 "else one text per line).")
]
TextColumnOpt = Annotated[
    str,
    typer.Option(
        "--text-column", "--field", help="Column/field with the text (tables, JSONL); other fields are passed through."
    ),
]
LabelColumnOpt = Annotated[
    str | None, typer.Option("--label-column", "--label-field", help="Column/field with the true label.")
]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Inputs per forward pass.", min=1)]
TruncateOpt = Annotated[
    bool,
    typer.Option(
        "--truncate/--no-truncate",
        help="Cut inputs longer than the model's maximum (with one warning), or stop with an error.",
    ),
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor",
        help="local|ray: run in this process (or each process of torchrun/accelerate launch), or on a Ray cluster "
        "through Ray Data: actors that each load the model once, the same records in the same order "
        "(pip install 'llmkit[ray]'; docs/ray.md).",
    ),
]
ActorsOpt = Annotated[
    int | None, typer.Option("--actors", help="--executor ray: actors, each holding one copy of the model [default: 2].",
                             min=1)
]
ActorCpusOpt = Annotated[
    float | None, typer.Option("--actor-cpus", help="--executor ray: CPUs each actor reserves (and its threads) "
                               "[default: 1].")
]
ActorGpusOpt = Annotated[
    float | None, typer.Option("--actor-gpus", help="--executor ray: GPUs each actor reserves (fractions share one) "
                               "[default: 0].", min=0)
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", envvar="RAY_ADDRESS", help="--executor ray: the cluster to join (host:port, or "
                 "ray://host:10001); none: a local cluster for this run, stopped after it."),
]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option("--output-dir", help="--executor ray: write the records as a folder of part files written by Ray "
                 "(a path or URI, e.g. s3://bucket/out; JSONL parts when the name ends in .jsonl, else Parquet), "
                 "each with an index column; renamed into place when complete."),
]
ReportToOpt = Annotated[
    str | None,
    typer.Option(
        "--report-to",
        help="Trackers for the training log, comma-separated, through the Trainer's integrations: none, tensorboard, "
        "trackio, mlflow, wandb (local-first: they write into OUTPUT/runs; wandb offline without an account), "
        "comet_ml, clearml, swanlab, ... [default: none].",
    ),
]
RunNameOpt = Annotated[
    str | None, typer.Option("--run-name", help="The run's name in the trackers [default: the output folder's name].")
]
EncoderEngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="auto|onnx|transformers (auto: ONNX Runtime for an encoder on the CPU, exported once into "
        "$LLMKIT_HOME/onnx; transformers for causal LMs, adapters, remote code, GPUs without onnxruntime-gpu; "
        "each record's engine_reason says why).",
    ),
]
TextsArg = Annotated[
    list[str] | None, typer.Argument(help="Input texts; '-' or none (with piped stdin) reads one per line.")
]


def command_app() -> typer.Typer:
    """The one-command Typer app each command module defines (same settings everywhere)."""
    return typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
