"""`llmkit quantize`: options and the thin command over `llmkit.quantize.quantize()`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit import quantize as _quant  # torch-free at import: defaults for --help
from llmkit.cli.options import (
    AllowPickleOpt,
    DeviceOpt,
    FormatOpt,
    JsonOpt,
    ModelOpt,
    RevisionOpt,
    TextColumnOpt,
    TrustRemoteCodeOpt,
    command_app,
)
from llmkit.generate import DEFAULT_MODEL

app = command_app()


@app.command(
    "quantize",
    epilog="Examples:\n\n"
    "  llmkit quantize --method gguf --gguf-type q8_0 -o smollm2-q8_0.gguf\n\n"
    "  llmkit quantize --method gguf --gguf-type q4_k_m --imatrix notes.txt -o smollm2-q4_k_m.gguf\n\n"
    "  llmkit quantize --method int8-weight --max-drop 3 -o smollm2-int8\n\n"
    "  llmkit quantize -m ./my-classifier --method int8-weight --eval-data test.csv -o small\n\n"
    "  llmkit quantize -m ./my-classifier --method onnx-int8 --eval-data test.csv -o fast-int8\n\n"
    "  llmkit generate --model smollm2-int8 \"Hello\""
)
def quantize(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Folder to write (a .gguf file for --method gguf); must be new."),
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="gguf|int8-weight|int4-weight|dynamic-int8|bnb-8bit|bnb-4bit|onnx-int8 (no default: each trades "
            "size, speed and quality differently; see docs/quantize.md). onnx-int8: encoders (classifiers, masked "
            "LMs) for ONNX Runtime on the CPU.",
        ),
    ],
    model: ModelOpt = None,
    gguf_type: Annotated[
        str | None,
        typer.Option(
            "--gguf-type",
            help="--method gguf: f16|q8_0|q6_k|q5_k_m|q5_k_s|q5_1|q5_0|q4_k_m|q4_k_s|q4_1|q4_0 (default: q8_0); "
            "the K-quants (_k) use llama.cpp's own encoder and per-tensor mix (needs llmkit[llama]).",
        ),
    ] = None,
    imatrix: Annotated[
        Path | None,
        typer.Option(
            "--imatrix",
            help="--method gguf, 4/5-bit types: a calibration text file; its activations weigh the rounding "
            "(llama.cpp's importance matrix; a few thousand words of text like the model's use).",
        ),
    ] = None,
    group_size: Annotated[
        int | None,
        typer.Option(
            "--group-size",
            help=f"--method int4-weight: weights per scale (default {_quant.DEFAULT_GROUP_SIZE}).",
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip",
            help="Module kept in full precision (name, dotted prefix or suffix; repeatable; 'none' for none) "
            f"(default: {_quant.DEFAULT_SKIP_HELP}).",
        ),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            "--eval-data",
            help="Text to measure quality on (LMs: perplexity; classifiers with labels: accuracy); "
            ".txt/.jsonl/.csv/.tsv. Default: a built-in English sample.",
        ),
    ] = None,
    text_column: TextColumnOpt = "text",
    label_column: Annotated[
        str,
        typer.Option(
            "--label-column", "--label-field", help="Column with the gold label in --eval-data (classifiers)."
        ),
    ] = "label",
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            help="Refuse the result (exit 5, nothing kept) if quality drops by more than this many percent.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: Annotated[
        str, typer.Option("--dtype", help="float32|bfloat16|float16: dtype of the parts left unquantized.")
    ] = _quant.DEFAULT_DTYPE,
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Quantize a model (smaller, often faster) and report what it cost: size, load time, speed and quality.

    Both the original and the result are measured as llmkit runs them: size on disk, load time, tokens/s
    (examples/s for classifiers), quality (perplexity for LMs, accuracy on labeled --eval-data for
    classifiers), top-1 agreement and KL divergence against the original. A .gguf output is measured under
    llama.cpp (where it runs), the original's float weights under transformers; each row names its engine. The output loads directly with
    `llmkit generate/classify/fill-mask --model OUT` (its settings are saved in it); the report is also saved
    as OUT/report.json (beside a .gguf: NAME.report.json).
    """
    from llmkit import output as out
    from llmkit.data import read_inputs

    fmt = out.resolve_format(fmt, json_out)
    texts: list[str] | None = None
    labels: list[str] | None = None
    if eval_data is not None:
        records = list(read_inputs(input_file=eval_data, text_field=text_column))
        texts = [r.text for r in records]
        found = [r.fields.get(label_column) for r in records]
        if found and all(v is not None and str(v) != "" for v in found):
            labels = [str(v) for v in found]
    skipped = None if skip is None else tuple(s for s in skip if s.lower() != "none")
    calibration: list[str] | None = None
    if imatrix is not None:
        calibration = [r.text for r in read_inputs(input_file=imatrix, text_field=text_column) if r.text.strip()]
    report = _quant.quantize(
        model or DEFAULT_MODEL,
        output,
        method=method,
        gguf_type=gguf_type,
        group_size=group_size,
        skip=skipped,
        eval_texts=texts,
        eval_labels=labels,
        max_drop=max_drop,
        device=device,
        dtype=dtype,
        revision=revision,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        progress=out.info,
        imatrix_texts=calibration,
    )
    emitter = out.Emitter(
        fmt,
        text=lambda r: f"{r.output}\t{r.quantized.size_bytes}\t{r.quantized.quality_metric}="
        f"{r.quantized.quality:.4g}\tdrop={r.quality_drop_percent:.2f}%",
        rich=out.quantize_table,
    )
    emitter.emit(report)
