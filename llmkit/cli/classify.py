"""`llmkit classify`: options and the thin command over `llmkit.classify.classify()`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmkit import classify as _cls  # torch-free at import: defaults for --help
from llmkit import zeroshot as _zs
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
    LabelColumnOpt,
    ModelOpt,
    RevisionOpt,
    SeedOpt,
    TextColumnOpt,
    TextsArg,
    TruncateOpt,
    TrustRemoteCodeOpt,
    command_app,
)

app = command_app()


@app.command(
    "classify",
    epilog="Examples:\n\n"
    "  llmkit classify --labels positive,negative \"I loved it\"\n\n"
    "  llmkit classify -m ./my-finetuned-model --all-scores \"The plot was thin.\"\n\n"
    "  llmkit classify --labels positive,negative -i tweets.txt  (calibrated over the inputs)\n\n"
    "  llmkit classify --labels spam,ham --examples labelled.csv --shots 4 \"WIN a free phone now\"\n\n"
    "  llmkit classify --labels person,location,number --zero-shot-prompt \"Is this question about a {labels}?\\n\\n{text}\" "
    "\"Where is Rome?\"\n\n"
    "  llmkit classify -m ./nli-model --labels sports,politics --hypothesis-template \"This text is about {}.\" "
    "\"The match went to penalties.\"\n\n"
    "  llmkit classify -m ./my-model -i reviews.csv --text-column review -o predicted.csv\n\n"
    "  llmkit classify -m ./my-model -i test.parquet --label-column y --evaluate --json",
)
def classify(
    texts: TextsArg = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Zero-shot: comma-separated candidate labels.")
    ] = None,
    labels_file: Annotated[
        Path | None, typer.Option("--labels-file", help="Zero-shot: a file with one candidate label per line.")
    ] = None,
    hypothesis_template: Annotated[
        str, typer.Option("--hypothesis-template", help="NLI zero-shot: the hypothesis, {} is the label.")
    ] = _cls.DEFAULT_HYPOTHESIS_TEMPLATE,
    zero_shot_prompt: Annotated[
        str | None,
        typer.Option("--zero-shot-prompt", help="Causal-LM zero-shot: the question, with {text} and {labels} "
                     f"(default: {_zs.DEFAULT_ZERO_SHOT_PROMPT!r})."),
    ] = None,
    calibrate: Annotated[
        str,
        typer.Option("--calibrate", help="Causal LM: remove each label's prior: auto (over the inputs when there are "
                     f"{_zs.MIN_CALIBRATION_INPUTS} to {_cls.DEFAULT_BATCH_SIZE * _cls.LENGTH_GROUP_WINDOW} of them at "
                     "the default batch size, else content-free), inputs, content-free (\"N/A\" etc.), none."),
    ] = _zs.DEFAULT_CALIBRATION,
    zero_shot_method: Annotated[
        str,
        typer.Option("--zero-shot-method", help="Causal LM: question (the label as the answer) or channel "
                     "(log P(text | label), the old default)."),
    ] = _zs.DEFAULT_ZERO_SHOT_METHOD,
    examples: Annotated[
        Path | None,
        typer.Option("--examples", help="Causal-LM few-shot: a table (.csv/.tsv/.jsonl/.parquet) with text and "
                     "label columns; --shots of each label go into each prompt."),
    ] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", help=f"Examples per label with --examples [default: {_zs.DEFAULT_SHOTS}].",
                                 min=0)
    ] = None,
    example_selection: Annotated[
        str,
        typer.Option("--example-selection", help="random (per input, seeded), fixed (one draw for all inputs, "
                     "much faster) or similar (most similar by TF-IDF)."),
    ] = _zs.DEFAULT_EXAMPLE_SELECTION,
    seed: SeedOpt = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", help="Labels (with scores) per input.", min=1)
    ] = _cls.DEFAULT_TOP_K,
    all_scores: Annotated[bool, typer.Option("--all-scores", help="Scores for every label.")] = False,
    multi_label: Annotated[
        bool | None,
        typer.Option(
            "--multi-label/--single-label",
            help="Independent labels (sigmoid), or one label (softmax) [default: from the model config].",
        ),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help=f"Answer {_cls.UNKNOWN} when the best score is below this.")
    ] = None,
    pair: Annotated[str | None, typer.Option("--pair", help="Second text of a text pair, for every input.")] = None,
    pair_column: Annotated[
        str | None, typer.Option("--pair-column", help="Column/field with the second text of each pair.")
    ] = None,
    text_column: TextColumnOpt = "text",
    label_column: LabelColumnOpt = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="Score against --label-column: accuracy, macro-F1, per class, confusion.")
    ] = False,
    confusion_matrix: Annotated[
        Path | None,
        typer.Option("--confusion-matrix", help="With --evaluate: also draw the confusion matrix into this PNG "
                     "(pip install 'llmkit[plot]')."),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write a table (.csv/.tsv/.jsonl/.parquet): the input's columns plus "
            "prediction columns."
        ),
    ] = None,
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
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Label texts with a text-classification model, or zero-shot with --labels.

    A classifier (e.g. `llmkit finetune` output) gives its own labels: softmax for single-label, sigmoid for
    multi-label, like pipeline("text-classification"). With --labels, an NLI model scores each label as an
    entailed hypothesis and a causal LM (default: the bundled SmolLM2) scores each label as the answer to a
    question in its chat template, calibrated against the label's prior (--calibrate), optionally with labelled
    examples in the prompt (--examples, --shots). Tables
    in (CSV/TSV/JSONL/Parquet, --text-column), tables out (--output keeps every input column); --evaluate with
    --label-column prints accuracy, macro-F1, per-class precision/recall and the confusion matrix
    (--confusion-matrix FILE.png also draws it).
    """
    from dataclasses import replace
    from itertools import chain

    from llmkit import distributed, output
    from llmkit.data import InputRecord, read_inputs, read_table, table_format
    from llmkit.errors import UsageError

    fmt = output.resolve_format(fmt, json_out)
    label_list = _cls.parse_labels(labels, labels_file)
    example_rows = None
    if examples is not None:
        if label_list is None:
            raise UsageError("--examples needs --labels (the examples' labels must be among them)")
        example_rows = _zs.read_examples(examples, label_list)
    elif shots is not None:
        raise UsageError("--shots needs --examples FILE (a table with text and label columns)")
    if pair is not None and pair_column is not None:
        raise UsageError("give --pair (one second text for all inputs) or --pair-column, not both")
    if evaluate and label_column is None:
        raise UsageError("--evaluate needs --label-column COL (the column with the true labels)")
    if confusion_matrix is not None:
        from llmkit.plot import require_matplotlib

        if not evaluate:
            raise UsageError("--confusion-matrix draws the evaluation's matrix: add --evaluate --label-column COL")
        if confusion_matrix.suffix.lower() != ".png":
            raise UsageError(f"--confusion-matrix {confusion_matrix}: the picture is a PNG; name it .png")
        require_matplotlib()  # before any model loads
    required = [c for c in (pair_column, label_column) if c]
    columns: list[str] = []
    fmt_name = table_format(input_file, input_format if input_format != "text" else "auto") if input_file else None
    if input_file is not None and input_format != "text" and fmt_name is not None:
        table = read_table(input_file, text_column, table_format_name=fmt_name, required=required)
        columns, records = table.columns, table.records
    else:
        if input_format == "parquet":
            raise UsageError("--input-format parquet needs --input FILE")
        records = read_inputs(texts, input_file=input_file, input_format=input_format, text_field=text_column)
        if required and input_file is None and texts and texts != ["-"]:
            raise UsageError("--pair-column/--label-column need table input (--input FILE); got text arguments")
    peers = distributed.detect()
    distributed.check_shareable_input(peers, texts, input_file)
    resolved_model = model if model is not None or label_list is None else _cls.DEFAULT_ZERO_SHOT_MODEL
    label_names, multi = _cls.output_labels(
        resolved_model, label_list, multi_label, revision=revision, trust_remote_code=trust_remote_code
    )

    def task(mine: Any) -> Any:
        def items() -> Any:
            for record in mine:
                if pair_column is not None and pair_column not in record.fields:
                    raise UsageError(f"input {record.index + 1}: no field {pair_column!r} for --pair-column")
                second = record.fields.get(pair_column) if pair_column else pair
                yield record.text, None if second is None else str(second)

        return _cls.classify(
            items(),
            model=model,
            adapter=adapter,
            labels=label_list,
            top_k=top_k,
            # Evaluation maps label ids in the gold column to names, so it needs every label's name.
            all_scores=all_scores or evaluate,
            multi_label=multi_label,
            min_score=min_score,
            hypothesis_template=hypothesis_template,
            batch_size=batch_size,  # None: the engine's own default
            truncate=truncate,
            device=device,
            dtype=dtype,
            revision=revision,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            zero_shot_method=zero_shot_method,
            zero_shot_prompt=zero_shot_prompt,
            calibrate=calibrate,
            examples=example_rows,
            shots=shots,
            example_selection=example_selection,
            seed=seed,
            engine=engine,
        )

    # With several processes (accelerate launch, torchrun) each runs its share; the main one gets all, in order.
    pairs = distributed.map_records(records, task, record_type=InputRecord, result_type=_cls.Classification,
                                    peers=peers, output=output_file)
    if pairs is None:
        return
    tracker = _cls.GoldTracker(label_column, label_names)
    seen: list[Any] = []

    def track(record: Any, result: Any) -> Any:
        seen.append(result)
        tracker.add(result, record.fields)
        if evaluate and not all_scores:
            return replace(result, scores=result.scores[:top_k])
        return result

    if output_file is not None:
        def rows() -> Any:
            for record, result in pairs:
                result = track(record, result)
                row = dict(record.fields)
                row[text_column] = record.text
                row.update(_cls.prediction_columns(result, label_names, with_scores=all_scores, multi=multi))
                yield row

        stream = rows()
        first = next(stream, None)
        head = [] if first is None else [first]
        base_columns = columns or [text_column]
        extra = [] if first is None else [k for k in first if k not in base_columns]
        written = output.write_table(output_file, base_columns + extra, chain(head, stream))
        output.info(f"Wrote {written} rows to {output_file}")
    else:
        emitter = output.Emitter(
            fmt,
            text=lambda r: "" if r.error else f"{r.label}\t{r.score:.4f}",
            rich=output.classification_view,
        )
        for record, result in pairs:
            track(record, result)
            if not evaluate:
                emitter.emit(result, record.fields)
    output.report_skipped(seen, "prediction")
    if evaluate:
        evaluation = tracker.report()
        output.emit_report(evaluation, fmt)
        if confusion_matrix is not None:
            from llmkit.plot import write_confusion_matrix

            write_confusion_matrix(evaluation.labels, evaluation.confusion, confusion_matrix,
                                   title=Path(input_file).name if input_file else None)
            output.info(f"Confusion matrix: {confusion_matrix}")
