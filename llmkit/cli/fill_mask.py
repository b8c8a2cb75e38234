"""`llmkit fill-mask`: options and the thin command over `llmkit.fill_mask.fill_mask()`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmkit import fill_mask as _fm  # torch-free at import: defaults for --help
from llmkit.cli.options import (
    AdapterOpt,
    AllowPickleOpt,
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    EncoderEngineOpt,
    FormatOpt,
    InputFormatOpt,
    InputOpt,
    JsonOpt,
    ModelOpt,
    RevisionOpt,
    TextColumnOpt,
    TextsArg,
    TruncateOpt,
    TrustRemoteCodeOpt,
    command_app,
)

app = command_app()


@app.command(
    "fill-mask",
    epilog="Examples:\n\n"
    "  llmkit fill-mask \"Paris is the [MASK] of France.\"\n\n"
    "  llmkit fill-mask --targets capital,city,heart \"Paris is the [MASK] of France.\"\n\n"
    "  llmkit fill-mask -m bert-base-uncased --joint \"The [MASK] sat on the [MASK].\"\n\n"
    "  cat sentences.txt | llmkit fill-mask --top-k 1 | jq -r '.masks[0][0].token'",
)
def fill_mask_command(
    texts: TextsArg = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Answers per mask.", min=1)] = _fm.DEFAULT_TOP_K,
    targets: Annotated[
        str | None,
        typer.Option("--targets", help="Comma-separated candidates to rank; words of several tokens are scored whole."),
    ] = None,
    joint: Annotated[
        bool, typer.Option("--joint", help="Also give the top-k fillings of all masks together (beam search).")
    ] = False,
    truncate: TruncateOpt = True,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    engine: EncoderEngineOpt = "auto",
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    input_file: InputOpt = None,
    input_format: InputFormatOpt = "auto",
    text_column: TextColumnOpt = "text",
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Fill the [MASK] in each sentence: per mask the top-k tokens, their probabilities and the filled sentence.

    [MASK] works for every model (mapped to the tokenizer's own mask, e.g. <mask>). A masked LM (BERT, RoBERTa,
    ...) scores with its MLM head, as transformers' pipeline("fill-mask") does; a causal LM (the default, the
    bundled SmolLM2) ranks candidates by the likelihood of the whole filled sentence. Each record says which
    "method" was used. --targets words that split into several tokens are scored whole (their mask is widened and
    filled left to right); --joint ranks fillings of several masks together.
    """
    from llmkit import distributed, output
    from llmkit.data import InputRecord, read_inputs

    fmt = output.resolve_format(fmt, json_out)
    target_words = _fm.parse_targets(targets) if targets is not None else None
    inputs = read_inputs(texts, input_file=input_file, input_format=input_format, text_field=text_column)
    peers = distributed.detect()
    distributed.check_shareable_input(peers, texts, input_file)

    def task(mine: Any) -> Any:
        return _fm.fill_mask(
            (record.text for record in mine),
            model=model or adapter or _fm.DEFAULT_MODEL,
            adapter=adapter if model else None,  # --adapter alone: the adapter names its base
            top_k=top_k,
            targets=target_words,
            joint=joint,
            batch_size=batch_size or _fm.DEFAULT_BATCH_SIZE,
            truncate=truncate,
            device=device,
            dtype=dtype,
            revision=revision,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            engine=engine,
        )

    # With several processes (accelerate launch, torchrun) each runs its share; the main one prints all, in order.
    pairs = distributed.map_records(inputs, task, record_type=InputRecord, result_type=_fm.MaskPrediction,
                                    peers=peers)
    if pairs is None:
        return
    emitter = output.Emitter(fmt, text=_fm.best_filling, rich=output.mask_view)
    results = []
    for record, result in pairs:
        emitter.emit(result, record.fields)
        results.append(result)
    output.report_skipped(results, "answers")
