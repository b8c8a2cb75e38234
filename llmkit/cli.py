"""The `llmkit` command line: shared options, one thin function per command, and the one error boundary.

No torch or transformers import happens at module level, so `llmkit --help` answers at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from llmkit import __version__
from llmkit.errors import EXIT_FAILURE, EXIT_INTERRUPTED, LlmkitError


class _Boundary(TyperGroup):
    """Turns every error into one `Error: ...` line on stderr and its documented exit code."""

    def invoke(self, ctx: Any) -> Any:
        from rich.markup import escape  # messages may hold brackets (`pip install 'llmkit[quant]'`)

        from llmkit.output import silence_stdout_after_broken_pipe, stderr_console

        debug = os.environ.get("LLMKIT_DEBUG", "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # typer's own usage errors and exits
            raise
        except LlmkitError as exc:
            if debug:
                traceback.print_exc()
            stderr_console().print(
                f"[bold red]Error:[/bold red] {escape(exc.message)}", highlight=False, markup=True
            )
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # The reader went away (`| head -1`): stop quietly, it got what it wanted.
            silence_stdout_after_broken_pipe()
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            stderr_console().print("Interrupted.", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # a bug or an unexpected library failure: still one line, unless debugging
            if debug:
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            stderr_console().print(
                f"[bold red]Error:[/bold red] {type(exc).__name__}: {first} "
                "(set LLMKIT_DEBUG=1 for the traceback)",
                highlight=False,
                markup=True,
            )
            raise typer.Exit(EXIT_FAILURE) from None


app = typer.Typer(
    cls=_Boundary,
    name="llmkit",
    help="Hugging Face pretrained models from the shell. Results go to stdout (JSON lines when piped), "
    "talk to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --- shared options: one definition, so every command agrees on names and help -------------------------------

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
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|mps (auto: cuda, then mps, then cpu).")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto|float32|bfloat16|float16 (auto: the fastest faithful choice per task).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed, for reproducible sampling/training.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout, even on a terminal.")]
FormatOpt = Annotated[
    str, typer.Option("--format", help="auto|json|text|rich (auto: rich on a terminal, JSON lines in a pipe).")
]
InputOpt = Annotated[
    Path | None, typer.Option("--input", "-i", help="Read inputs from FILE (text lines, .jsonl, .csv, .tsv).")
]
InputFormatOpt = Annotated[
    str, typer.Option("--input-format", help="auto|text|jsonl|csv|tsv (auto: by file suffix, else lines).")
]
FieldOpt = Annotated[
    str, typer.Option("--field", help="Field/column with the text (jsonl/csv/tsv); other fields are passed through.")
]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Inputs per forward pass.", min=1)]
AllowPickleOpt = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow .bin/.pt checkpoints (unpickling can run code).")
]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run.")
]
TextsArg = Annotated[
    list[str] | None, typer.Argument(help="Input texts; '-' or none (with piped stdin) reads one per line.")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Hugging Face pretrained models from the shell."""


# --- generate ---------------------------------------------------------------------------------------------------

from llmkit import generate as _gen  # noqa: E402  (pure-python module: defaults for --help, no torch)


@app.command(
    epilog="Presets: " + _gen.describe_presets() + ".\n\n"
    "Examples:\n\n"
    "  llmkit generate \"What is the capital of France?\"\n\n"
    "  llmkit generate --top-p 0.9 --temperature 0.8 --seed 1 \"Write a haiku about rain.\"\n\n"
    "  llmkit generate --num-beams 4 --num-return-sequences 3 --raw \"The meaning of life is\"\n\n"
    "  cat prompts.txt | llmkit generate --max-new-tokens 64 | jq -r .text\n\n"
    "  llmkit generate --engine llama-cpp --seed 1 --temperature 0.7 \"Tell me a joke.\""
)
def generate(
    texts: TextsArg = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", "-n", help=f"Most tokens per answer [default: {_gen.DEFAULT_MAX_NEW_TOKENS}].")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="greedy|beam|creative|precise (values below).")] = None,
    sample: Annotated[
        bool | None, typer.Option("--sample/--no-sample", help="Force sampling on/off (a sampling knob turns it on).")
    ] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", "-t", help="Sampling temperature (> 0).")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Sample from the k most likely tokens (0: off).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass, in (0, 1].")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p", help="Drop tokens below min-p x the top probability.")] = None,
    typical_p: Annotated[float | None, typer.Option("--typical-p", help="Locally typical sampling mass, in (0, 1].")] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option("--repetition-penalty", help="> 1 discourages repeats (1.0: off).")
    ] = None,
    num_beams: Annotated[int | None, typer.Option("--num-beams", help="Beam search width (1: no beam search).")] = None,
    num_return_sequences: Annotated[
        int | None, typer.Option("--num-return-sequences", help="Return the n best answers, with scores.")
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option("--length-penalty", help="Beam search: > 1 favours longer answers.")
    ] = None,
    no_repeat_ngram_size: Annotated[
        int | None, typer.Option("--no-repeat-ngram-size", help="Never repeat an n-gram of this size.")
    ] = None,
    early_stopping: Annotated[
        bool | None, typer.Option("--early-stopping/--no-early-stopping", help="Beam search: stop when n beams end.")
    ] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop at this string (repeatable).")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System message for chat models.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the bare prompt, without the chat template.")] = False,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="auto|transformers|llama-cpp (auto: llama.cpp for GGUF models when `llmkit[llama]` is installed "
            "and every setting is supported there; the record's engine_reason says why).",
        ),
    ] = "auto",
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    input_file: InputOpt = None,
    input_format: InputFormatOpt = "auto",
    field: FieldOpt = "text",
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Generate text with a causal LM or an encoder-decoder model (default: the bundled SmolLM2 instruct model).

    Greedy by default; beam search with --num-beams; sampling with --temperature/--top-k/--top-p/--min-p/--typical-p.
    Chat models get their chat template (and --system) unless --raw. Many prompts (stdin lines) run in
    length-grouped batches and print in input order; each JSON record has the text, finish reason
    (eos|length|stop), token counts and tokens/s.
    """
    from llmkit import output
    from llmkit.data import read_inputs

    settings = _gen.build_settings(
        preset,
        sample,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        typical_p=typical_p,
        repetition_penalty=repetition_penalty,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        length_penalty=length_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        early_stopping=early_stopping,
        stop=tuple(stop) if stop else None,
        seed=seed,
    )
    fmt = output.resolve_format(fmt, json_out)
    inputs = read_inputs(texts, input_file=input_file, input_format=input_format, text_field=field)
    # On a terminal, one prompt at a time so tokens can stream; in a pipe, batches.
    if batch_size is None:
        batch_size = 1 if fmt == "rich" else _gen.DEFAULT_BATCH_SIZE

    passthrough: dict[int, dict[str, Any]] = {}

    def prompts() -> Any:
        for record in inputs:
            passthrough[record.index] = record.fields
            yield record.text

    streamer = output.GenerationStream() if fmt == "rich" else None
    emitter = output.Emitter(fmt, text=lambda g: g.text, rich=streamer.finish if streamer else None)
    results = _gen.generate(
        prompts(),
        model=model or adapter or _gen.DEFAULT_MODEL,
        adapter=adapter if model else None,  # --adapter alone: the adapter names its base
        settings=settings,
        system=system,
        raw=raw,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        revision=revision,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        on_text=streamer.delta if streamer else None,
        engine=engine,
    )
    for index, result in enumerate(results):
        emitter.emit(result, passthrough.pop(index, None))


# --- fill-mask --------------------------------------------------------------------------------------------------

from llmkit import classify as _cls  # noqa: E402  (pure-python modules: defaults for --help, no torch)
from llmkit import fill_mask as _fm  # noqa: E402

TruncateOpt = Annotated[
    bool,
    typer.Option("--truncate/--no-truncate", help="Cut inputs longer than the model's maximum (with one warning), "
                 "or stop with an error."),
]


def _report_skipped(results: list[Any], what: str) -> None:
    """One warning each for inputs that were cut or had nothing to process (never dropped silently)."""
    from llmkit import output

    cut = sum(1 for r in results if r.truncated)
    if cut:
        output.warn(f"{cut} of {len(results)} inputs were longer than the model's maximum and were truncated "
                    f"(--no-truncate to stop instead)")
    empty = [str(i + 1) for i, r in enumerate(results) if r.error == "empty input"]
    if empty:
        shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
        output.warn(f"{len(empty)} empty input(s) got no {what} (input {shown}); they are in the output with "
                    "an \"error\" field")


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
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    input_file: InputOpt = None,
    input_format: InputFormatOpt = "auto",
    field: FieldOpt = "text",
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
    from llmkit import output
    from llmkit.data import read_inputs

    fmt = output.resolve_format(fmt, json_out)
    target_words = _fm.parse_targets(targets) if targets is not None else None
    inputs = read_inputs(texts, input_file=input_file, input_format=input_format, text_field=field)
    passthrough: dict[int, dict[str, Any]] = {}

    def sentences() -> Any:
        for record in inputs:
            passthrough[record.index] = record.fields
            yield record.text

    def best(result: Any) -> str:
        if result.error:
            return ""
        if result.joint:
            return result.joint[0].sequence
        return "\t".join(fills[0].sequence if fills else "" for fills in result.masks)

    emitter = output.Emitter(fmt, text=best, rich=output.mask_view)
    results = []
    for index, result in enumerate(
        _fm.fill_mask(
            sentences(),
            model=model or adapter or _fm.DEFAULT_MODEL,
            adapter=adapter if model else None,
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
        )
    ):
        emitter.emit(result, passthrough.pop(index, None))
        results.append(result)
    _report_skipped(results, "answers")


# --- classify ---------------------------------------------------------------------------------------------------


@app.command(
    epilog="Examples:\n\n"
    "  llmkit classify --labels positive,negative \"I loved it\"\n\n"
    "  llmkit classify -m ./my-finetuned-model --all-scores \"The plot was thin.\"\n\n"
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
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Labels (with scores) per input.", min=1)] = _cls.DEFAULT_TOP_K,
    all_scores: Annotated[bool, typer.Option("--all-scores", help="Scores for every label.")] = False,
    multi_label: Annotated[
        bool | None,
        typer.Option("--multi-label/--single-label",
                     help="Independent labels (sigmoid), or one label (softmax) [default: from the model config]."),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help=f"Answer {_cls.UNKNOWN} when the best score is below this.")
    ] = None,
    pair: Annotated[str | None, typer.Option("--pair", help="Second text of a text pair, for every input.")] = None,
    pair_column: Annotated[
        str | None, typer.Option("--pair-column", help="Column/field with the second text of each pair.")
    ] = None,
    text_column: Annotated[
        str, typer.Option("--text-column", "--field", help="Column/field with the text (tables, JSONL).")
    ] = "text",
    label_column: Annotated[
        str | None, typer.Option("--label-column", help="Column with the true label (for --evaluate).")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="Score against --label-column: accuracy, macro-F1, per class, confusion.")
    ] = False,
    output_file: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write a table (.csv/.tsv/.jsonl/.parquet): the input's columns plus "
                     "prediction columns."),
    ] = None,
    truncate: TruncateOpt = True,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    input_file: Annotated[
        Path | None, typer.Option("--input", "-i", help="Read inputs from FILE (lines, .jsonl, .csv, .tsv, .parquet).")
    ] = None,
    input_format: Annotated[
        str, typer.Option("--input-format", help="auto|text|jsonl|csv|tsv|parquet (auto: by file suffix).")
    ] = "auto",
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Label texts with a text-classification model, or zero-shot with --labels.

    A classifier (e.g. `llmkit finetune` output) gives its own labels: softmax for single-label, sigmoid for
    multi-label, like pipeline("text-classification"). With --labels, an NLI model scores each label as an
    entailed hypothesis and a causal LM (default: the bundled SmolLM2) scores each label as the answer. Tables
    in (CSV/TSV/JSONL/Parquet, --text-column), tables out (--output keeps every input column); --evaluate with
    --label-column prints accuracy, macro-F1, per-class precision/recall and the confusion matrix.
    """
    from dataclasses import replace
    from itertools import chain

    from llmkit import output
    from llmkit.data import read_inputs, read_table, table_format
    from llmkit.errors import UsageError

    fmt = output.resolve_format(fmt, json_out)
    label_list = _cls.parse_labels(labels, labels_file)
    if pair is not None and pair_column is not None:
        raise UsageError("give --pair (one second text for all inputs) or --pair-column, not both")
    if evaluate and label_column is None:
        raise UsageError("--evaluate needs --label-column COL (the column with the true labels)")
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
    fields: dict[int, dict[str, Any]] = {}
    texts_seen: dict[int, str] = {}

    def items() -> Any:
        for record in records:
            fields[record.index] = record.fields
            texts_seen[record.index] = record.text
            if pair_column is not None and pair_column not in record.fields:
                raise UsageError(f"input {record.index + 1}: no field {pair_column!r} for --pair-column")
            second = record.fields.get(pair_column) if pair_column else pair
            yield record.text, None if second is None else str(second)

    results = _cls.classify(
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
        batch_size=batch_size or _cls.DEFAULT_BATCH_SIZE,
        truncate=truncate,
        device=device,
        dtype=dtype,
        revision=revision,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    seen: list[Any] = []
    gold: list[str] = []
    predicted: list[str] = []
    label_names: list[str] = []

    def track(index: int, result: Any) -> Any:
        seen.append(result)
        if not label_names and result.scores:
            label_names.extend(s.label for s in result.scores)
        if label_column is not None and result.label is not None:
            value = _cls.gold_label(fields.get(index, {}).get(label_column), label_names or list(label_list or ()))
            if value is not None:
                gold.append(value)
                predicted.append(result.label)
        if evaluate and not all_scores:
            return replace(result, scores=result.scores[:top_k])
        return result

    if output_file is not None:
        base_columns = columns or [text_column, *sorted({k for f in fields.values() for k in f})]

        def rows() -> Any:
            for index, result in enumerate(results):
                result = track(index, result)
                row = dict(fields.pop(index, {}))
                row[text_column] = texts_seen.pop(index, result.text)
                row.update(_prediction_columns(result, all_scores))
                yield row

        stream = rows()
        first = next(stream, None)
        head = [] if first is None else [first]
        extra = [] if first is None else [k for k in first if k not in base_columns]
        written = output.write_table(output_file, base_columns + extra, chain(head, stream))
        output.info(f"Wrote {written} rows to {output_file}")
    else:
        emitter = output.Emitter(
            fmt,
            text=lambda r: "" if r.error else f"{r.label}\t{r.score:.4f}",
            rich=output.classification_view,
        )
        for index, result in enumerate(results):
            track(index, result)
            if not evaluate:
                emitter.emit(result, fields.pop(index, None))
            texts_seen.pop(index, None)
    _report_skipped(seen, "prediction")
    if evaluate:
        report = _cls.evaluate(gold, predicted, skipped=len(seen) - len(gold))
        if fmt == "rich":
            output.stdout_console().print(output.evaluation_view(report))
        elif fmt == "text":
            output.write_text(f"accuracy\t{report.accuracy:.4f}\nmacro_f1\t{report.macro_f1:.4f}")
        else:
            output.write_json(output.to_record(report))


def _prediction_columns(result: Any, with_scores: bool) -> dict[str, Any]:
    """The columns a classify --output table appends to each input row."""
    columns: dict[str, Any] = {"prediction": result.label, "prediction_score": result.score}
    if with_scores:
        for item in result.scores:
            columns[f"score_{item.label}"] = item.score
    if result.active is not None:
        columns["active_labels"] = ",".join(result.active)
    columns["error"] = result.error  # always present, so every row has the same columns
    return columns


# --- finetune ---------------------------------------------------------------------------------------------------

from llmkit import finetune as _ft  # noqa: E402  (defaults for --help; torch is imported only when it runs)
from llmkit import training as _tr  # noqa: E402


@app.command(
    epilog="Examples:\n\n"
    "  llmkit finetune reviews.csv --model minilm-l6 --text-column review --label-column stars "
    "--output ./sentiment\n\n"
    '  llmkit classify --model ./sentiment "What a great film"\n\n'
    "  llmkit finetune chats.jsonl --model smollm2-135m-instruct --lora-r 8 --merge-lora -o ./chat\n\n"
    "  llmkit finetune reviews.csv --strategy prompt-tuning --num-virtual-tokens 20 -o ./sentiment-prompt\n\n"
    '  llmkit classify --model ./sentiment-prompt "What a great film"   (the adapter loads on its base)\n\n'
    "  llmkit finetune reviews.csv --train-only ffn -o ./sentiment-ffn\n\n"
    "  llmkit finetune notes.csv --task masked-lm --mlm-probability 0.15 -o ./domain-bert\n\n"
    "  llmkit finetune reviews.csv -o ./sentiment --dry-run\n\n"
    "  accelerate launch -m llmkit finetune reviews.csv -o ./sentiment   (DDP, FSDP, DeepSpeed)"
)
def finetune(
    data: Annotated[
        str | None,
        typer.Argument(
            help="Table (.csv .tsv .jsonl .json .parquet), folder of train/validation files, "
            "or a cached hub dataset id."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder to create for the model.")
    ] = None,
    model: ModelOpt = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="classification|regression|causal-lm|masked-lm (default: inferred)."),
    ] = None,
    text_column: Annotated[
        str | None,
        typer.Option("--text-column", help=f"Column with the text [default: {_ft.DEFAULT_TEXT_COLUMN}]."),
    ] = None,
    text_pair_column: Annotated[
        str | None, typer.Option("--text-pair-column", help="Second text column (sentence pairs).")
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option("--label-column", help=f"Column with the label [default: {_ft.DEFAULT_LABEL_COLUMN}]."),
    ] = None,
    prompt_column: Annotated[
        str | None,
        typer.Option(
            "--prompt-column", help=f"causal-lm: prompt column [default: {_ft.DEFAULT_PROMPT_COLUMN}]."
        ),
    ] = None,
    completion_column: Annotated[
        str | None,
        typer.Option(
            "--completion-column",
            help=f"causal-lm: completion column, the only tokens with a loss "
            f"[default: {_ft.DEFAULT_COMPLETION_COLUMN}].",
        ),
    ] = None,
    messages_column: Annotated[
        str | None,
        typer.Option(
            "--messages-column",
            help=f"causal-lm: chat messages column [default: {_ft.DEFAULT_MESSAGES_COLUMN}].",
        ),
    ] = None,
    validation_file: Annotated[
        Path | None, typer.Option("--validation-file", help="Separate validation table.")
    ] = None,
    validation_split: Annotated[
        float | None,
        typer.Option(
            "--validation-split",
            help="Hold out this fraction of train, stratified and seeded (0: no "
            f"evaluation) [default: {_tr.DEFAULT_VALIDATION_SPLIT} for labelled data].",
        ),
    ] = None,
    train_only: Annotated[
        str | None,
        typer.Option(
            "--train-only",
            help="head|top-N|ffn: freeze all but the head (and the top N layers, or every layer's feed-forward "
            "block).",
        ),
    ] = None,
    strategy_name: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="full|lora|prompt-tuning|prefix-tuning: what to train; peft runs write an adapter folder that "
            "the other commands load on its base [default: full].",
        ),
    ] = None,
    num_virtual_tokens: Annotated[
        int | None,
        typer.Option(
            "--num-virtual-tokens",
            help=f"prompt/prefix tuning: learned tokens [default: {_ft.DEFAULT_NUM_VIRTUAL_TOKENS}].",
        ),
    ] = None,
    lora_r: Annotated[
        int | None, typer.Option("--lora-r", help="Train LoRA adapters of this rank (peft).")
    ] = None,
    lora_alpha: Annotated[
        int | None, typer.Option("--lora-alpha", help=f"LoRA scale [default: {_ft.DEFAULT_LORA_ALPHA}].")
    ] = None,
    lora_dropout: Annotated[
        float | None,
        typer.Option("--lora-dropout", help=f"LoRA dropout [default: {_ft.DEFAULT_LORA_DROPOUT}]."),
    ] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option("--lora-targets", help="Comma-separated module names for LoRA [default: all-linear]."),
    ] = None,
    merge_lora: Annotated[
        bool | None,
        typer.Option("--merge-lora/--no-merge-lora", help="Fold LoRA into a plain model at the end."),
    ] = None,
    mlm_probability: Annotated[
        float | None,
        typer.Option(
            "--mlm-probability", help=f"masked-lm: masking rate [default: {_ft.DEFAULT_MLM_PROBABILITY}]."
        ),
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", help=f"Passes over train [default: {_tr.DEFAULT_EPOCHS}].")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            "--learning-rate", "--lr", help=f"Peak learning rate [default: {_tr.DEFAULT_LEARNING_RATE}]."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", "-b", help=f"Rows per step per device [default: {_tr.DEFAULT_BATCH_SIZE}]."
        ),
    ] = None,
    gradient_accumulation: Annotated[
        int | None, typer.Option("--gradient-accumulation", help="Batches per optimizer step [default: 1].")
    ] = None,
    warmup_ratio: Annotated[
        float | None, typer.Option("--warmup-ratio", help="Fraction of steps to warm up over.")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="AdamW weight decay [default: 0].")
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length", help=f"Truncate to this many tokens [default: {_tr.DEFAULT_MAX_LENGTH}]."
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help=f"Seed for init, shuffling, split [default: {_tr.DEFAULT_SEED}]."),
    ] = None,
    bf16: Annotated[
        bool,
        typer.Option("--bf16", help="Mixed precision bfloat16 (GPUs, AMX/AVX512-BF16 CPUs; slow elsewhere)."),
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Mixed precision float16 (GPU only).")] = False,
    fp32: Annotated[bool, typer.Option("--fp32", help="Full float32, no mixed precision.")] = False,
    eval_steps: Annotated[
        int | None, typer.Option("--eval-steps", help="Evaluate every N steps [default: each epoch].")
    ] = None,
    early_stopping_patience: Annotated[
        int | None,
        typer.Option("--early-stopping-patience", help="Stop after N evaluations without improvement."),
    ] = None,
    save_steps: Annotated[
        int | None, typer.Option("--save-steps", help="Checkpoint every N steps [default: each epoch].")
    ] = None,
    save_total_limit: Annotated[
        int | None,
        typer.Option(
            "--save-total-limit", help=f"Checkpoints kept [default: {_tr.DEFAULT_SAVE_TOTAL_LIMIT}]."
        ),
    ] = None,
    group_by_length: Annotated[
        bool | None,
        typer.Option(
            "--group-by-length/--no-group-by-length",
            help="Batch rows of similar length (less padding) [default: on].",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint of an interrupted run.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of settings; flags override it.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and train nothing.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --output folder.")
    ] = False,
    device: DeviceOpt = "auto",
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Fine-tune a model on a table with the transformers Trainer; the output loads in the other commands.

    Classification/regression (labels saved in config.json for `llmkit classify`), causal-lm (text,
    prompt/completion with the loss on the completion, or chat messages) and masked-lm. Full fine-tuning,
    --train-only head|top-N|ffn, or a peft adapter (--strategy lora|prompt-tuning|prefix-tuning). Progress on stderr; the result (and with --json the training
    log) on stdout; OUTPUT/report.json holds the validation report. The output folder appears only when
    training has finished; an interrupted run continues with the same command plus --resume.
    """
    from llmkit import output as out
    from llmkit.errors import UsageError

    file_values = _tr.load_config(config)
    _tr.check_config_keys(file_values, _ft.known_config_keys(), config)
    if sum((bf16, fp16, fp32)) > 1:
        raise UsageError("give at most one of --bf16, --fp16, --fp32")
    precision = "bf16" if bf16 else "fp16" if fp16 else "fp32" if fp32 else None
    for flag in ("bf16", "fp16", "fp32"):  # the file may say `bf16 = true` as well as `precision = "bf16"`
        if file_values.pop(flag, False):
            file_values.setdefault("precision", flag)
    cli_values: dict[str, Any] = dict(
        epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size,
        gradient_accumulation=gradient_accumulation, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
        max_length=max_length, seed=seed, precision=precision, eval_steps=eval_steps, save_steps=save_steps,
        save_total_limit=save_total_limit, early_stopping_patience=early_stopping_patience,
        group_by_length=group_by_length,
        text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
        prompt_column=prompt_column, completion_column=completion_column, messages_column=messages_column,
        train_only=train_only, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()) if lora_targets else None,
        merge_lora=merge_lora, strategy=strategy_name, num_virtual_tokens=num_virtual_tokens,
    )  # fmt: skip
    if isinstance(file_values.get("lora_targets"), (list, str)):
        targets = file_values["lora_targets"]
        file_values["lora_targets"] = tuple(targets.split(",") if isinstance(targets, str) else targets)
    settings = _tr.settings_from(_tr.TrainSettings, file_values, cli_values)
    columns = _tr.settings_from(_ft.Columns, file_values, cli_values)
    strategy = _tr.settings_from(_ft.Strategy, file_values, cli_values)

    def pick(cli: Any, key: str, default: Any = None) -> Any:
        return cli if cli is not None else file_values.get(key, default)

    data = pick(data, "data")
    output_dir = pick(output, "output")
    if data is None:
        raise UsageError("no data: give a table file, a folder or a dataset id (or `data = ...` in --config)")
    if output_dir is None and not dry_run:
        raise UsageError("no --output folder given (or `output = ...` in --config)")
    fmt = out.resolve_format(fmt, json_out)
    try:
        result = _ft.finetune(
            data,
            output=Path(output_dir) if output_dir is not None else Path("finetuned"),
            model=pick(model, "model", _ft.DEFAULT_MODEL),
            task=pick(task, "task"),
            columns=columns,
            settings=settings,
            strategy=strategy,
            validation_file=pick(validation_file, "validation_file"),
            validation_split=pick(validation_split, "validation_split"),
            mlm_probability=pick(mlm_probability, "mlm_probability", _ft.DEFAULT_MLM_PROBABILITY),
            device=device if device != "auto" else file_values.get("device", "auto"),
            dry_run=dry_run,
            resume=resume,
            overwrite=overwrite,
            json_log=fmt == "json",
            revision=revision,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
        )
    except KeyboardInterrupt:
        if output_dir is not None and _tr.last_checkpoint(output_dir) is not None:
            out.stderr_console().print(
                "Run the same command with --resume to continue from the last checkpoint."
            )
        raise
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under `accelerate launch`, the main process alone reports
    for note in result.notes:
        out.warn(note)
    emitter = out.Emitter(fmt, text=_ft.describe, rich=_ft.renderable)
    emitter.emit(result, {"event": "plan" if dry_run else "result"})


# --- distill --------------------------------------------------------------------------------------------

from llmkit import distill as _distill  # noqa: E402  (pure-python module: defaults for --help, no torch)


@app.command(
    epilog="Examples:\n\n"
    "  llmkit distill reviews.csv --teacher ./sentiment --student-layers 3 --output ./small --baseline\n\n"
    "  llmkit distill reviews.csv --teacher ./sentiment --student-layers 3 --prune-ffn 0.5 --output ./smaller\n\n"
    "  llmkit distill unlabeled.txt --teacher ./sentiment --alpha 0 --cache-teacher --output ./small\n\n"
    "  llmkit distill corpus.txt --teacher ./my-lm --student-layers 2 --hidden-weight 1 --output ./lm\n\n"
    "  llmkit distill data.csv --config distill.toml --json | jq .summary"
)
def distill(
    data: Annotated[
        Path,
        typer.Argument(
            help="Training data: .csv/.tsv/.jsonl/.json/.parquet, a folder of train/validation files, "
            "or a .txt file with one text per line (language models)."
        ),
    ],
    teacher: Annotated[str | None, typer.Option( "--teacher", help="The model to learn from (classification: a fine-tuned classifier, e.g. from "
        "llmkit finetune).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for the student and report.json.")] = None,
    student: Annotated[str | None, typer.Option("--student", help="A ready student with the teacher's tokenizer and labels.")] = None,
    student_layers: Annotated[int | None, typer.Option( "--student-layers", help="Build the student from the teacher: keep N of its layers (every "
        "k-th) (default: half; all with --prune-ffn/--prune-heads alone).")] = None,
    prune_ffn: Annotated[float | None, typer.Option(
        "--prune-ffn", help="Remove this fraction of every layer's feed-forward neurons from the student (0.5: "
        "keep half), the least active on the training texts, before distilling (Minitron).")] = None,
    prune_heads: Annotated[float | None, typer.Option(
        "--prune-heads", help="Remove this fraction of every layer's attention heads (whole key/value groups; "
        "Llama-like models), the least active, before distilling.")] = None,
    task: Annotated[str | None, typer.Option( "--task", help="auto|classification|causal-lm|masked-lm (auto: from the teacher).")] = None,
    alpha: Annotated[float | None, typer.Option( "--alpha", help="Weight of the hard-label loss, 0..1; 0 distills from unlabeled text "
        f"(default: {_distill.DEFAULT_ALPHA}).")] = None,
    temperature: Annotated[float | None, typer.Option( "--temperature", help="Temperature T of the soft loss T^2 KL(teacher_T || student_T) "
        f"(default: {_distill.DEFAULT_TEMPERATURE}).")] = None,
    hidden_weight: Annotated[float | None, typer.Option( "--hidden-weight", help="Weight of the MSE between mapped hidden layers (a learned "
        "projection when widths differ) (default: 0).")] = None,
    attention_weight: Annotated[float | None, typer.Option( "--attention-weight", help="Weight of the MSE between mapped attention maps (default: 0).")] = None,
    cache_teacher: Annotated[bool | None, typer.Option( "--cache-teacher/--no-cache-teacher", help="Keep the teacher's outputs on disk "
        "($LLMKIT_HOME/teacher-cache): later epochs and reruns skip the teacher.")] = None,
    baseline: Annotated[bool | None, typer.Option( "--baseline/--no-baseline", help="Also train the same student without the teacher, to show "
        "what distillation adds.")] = None,
    epochs: Annotated[float | None, typer.Option( "--epochs", help=f"Passes over the data (default: {_tr.DEFAULT_EPOCHS:g}).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps (overrides --epochs).")] = None,
    learning_rate: Annotated[float | None, typer.Option( "--learning-rate", "--lr",
        help=f"Peak learning rate (default: {_tr.DEFAULT_LEARNING_RATE:g}).",)] = None,
    batch_size: Annotated[int | None, typer.Option( "--batch-size", "-b", help=f"Examples per step (default: {_tr.DEFAULT_BATCH_SIZE}).")] = None,
    max_length: Annotated[int | None, typer.Option( "--max-length", help=f"Tokens per example, longer cut (default: {_tr.DEFAULT_MAX_LENGTH}).")] = None,
    validation_file: Annotated[Path | None, typer.Option( "--validation-file", help="Held-out data for the report (default: a split of DATA).")] = None,
    validation_split: Annotated[float | None, typer.Option( "--validation-split", help="Share of DATA held out without a validation file "
        f"(default: {_tr.DEFAULT_VALIDATION_SPLIT:g}).")] = None,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Column with the text (default: text).")] = None,
    label_column: Annotated[str | None, typer.Option("--label-column", help="Column with the label (default: label).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with any of these settings (flags win).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run (OUTPUT.checkpoints).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing OUTPUT once the new one is complete.")
    ] = False,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Distill a teacher into a smaller, faster student, and report both side by side.

    The student is --student MODEL, or the teacher with --student-layers N of its layers (every k-th,
    initialised from the teacher, as DistilBERT did), optionally narrowed by --prune-ffn/--prune-heads
    (the least active neurons and heads on the training texts removed, as NVIDIA's Minitron does). It learns from alpha x cross-entropy on the labels
    plus (1 - alpha) x T^2 KL(teacher_T || student_T); --hidden-weight/--attention-weight add intermediate
    matching. Tasks: sequence classification, causal LM, masked LM. The report (parameters, size on disk,
    latency, throughput, accuracy/macro-F1 or perplexity, KL to the teacher; --baseline adds the student
    trained without the teacher) goes to stdout and OUTPUT/report.json.
    """
    from llmkit import output as out
    from llmkit.errors import UsageError

    given = dict(
        teacher=teacher, student=student, student_layers=student_layers, task=task, alpha=alpha,
        temperature=temperature, hidden_weight=hidden_weight, attention_weight=attention_weight,
        cache_teacher=cache_teacher, baseline=baseline, epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
        validation_split=validation_split, text_column=text_column, label_column=label_column, seed=seed,
        prune_ffn=prune_ffn, prune_heads=prune_heads,
    )
    teacher_spec, settings, train_settings = _distill.build_settings(config, given)
    if output is None:
        raise UsageError("no --output: give the folder to write the student into")
    fmt = out.resolve_format(fmt, json_out)
    result = _distill.distill(
        data, output, teacher_spec, settings, train_settings, validation=validation_file, device=device,
        overwrite=overwrite, resume=resume, progress=True, on_log=out.info,
    )
    if fmt == "rich":
        out.stdout_console().print(_distill.render(result))
        return
    out.Emitter(fmt, text=_distill.text_lines).emit(result)


# --- quantize -----------------------------------------------------------------------------------------------

from llmkit import quantize as _quant  # noqa: E402  (torch-free at import: defaults for --help)


@app.command(
    epilog="Examples:\n\n"
    "  llmkit quantize --method gguf --gguf-type q8_0 -o smollm2-q8_0.gguf\n\n"
    "  llmkit quantize --method int8-weight --max-drop 3 -o smollm2-int8\n\n"
    "  llmkit quantize -m ./my-classifier --method int8-weight --eval-data test.csv -o small\n\n"
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
            help="gguf|int8-weight|int4-weight|dynamic-int8|bnb-8bit|bnb-4bit (no default: each trades size, "
            "speed and quality differently; see the README).",
        ),
    ],
    model: ModelOpt = None,
    gguf_type: Annotated[
        str | None,
        typer.Option("--gguf-type", help="--method gguf: f16|q8_0|q5_1|q5_0|q4_1|q4_0 (default: q8_0)."),
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
    field: FieldOpt = "text",
    label_field: Annotated[
        str, typer.Option("--label-field", help="Column with the gold label in --eval-data (classifiers).")
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
    classifiers), top-1 agreement and KL divergence against the original. The output loads directly with
    `llmkit generate/classify/fill-mask --model OUT` (its settings are saved in it); the report is also saved
    as OUT/report.json (beside a .gguf: NAME.report.json).
    """
    from llmkit import output as out
    from llmkit.data import read_inputs

    fmt = out.resolve_format(fmt, json_out)
    texts: list[str] | None = None
    labels: list[str] | None = None
    if eval_data is not None:
        records = list(read_inputs(input_file=eval_data, text_field=field))
        texts = [r.text for r in records]
        found = [r.fields.get(label_field) for r in records]
        if found and all(v is not None and str(v) != "" for v in found):
            labels = [str(v) for v in found]
    skipped = None if skip is None else tuple(s for s in skip if s.lower() != "none")
    report = _quant.quantize(
        model or _gen.DEFAULT_MODEL,
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
    )
    emitter = out.Emitter(
        fmt,
        text=lambda r: f"{r.output}\t{r.quantized.size_bytes}\t{r.quantized.quality_metric}="
        f"{r.quantized.quality:.4g}\tdrop={r.quality_drop_percent:.2f}%",
        rich=out.quantize_table,
    )
    emitter.emit(report)


@app.command()
def models(
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """List the built-in model aliases (installed or not), converted GGUF caches and Hugging Face cached models.

    Examples:

      llmkit models

      llmkit models --json | jq -r 'select(.installed) | .name'
    """
    from llmkit import output
    from llmkit.loading import list_models

    rows = list_models()
    fmt = output.resolve_format(fmt, json_out)
    if fmt == "rich":
        output.stdout_console().print(output.models_table(rows))
        return
    emitter = output.Emitter(fmt, text=lambda r: f"{r['name']}\t{r['kind']}\t{r['path']}")
    for row in rows:
        emitter.emit(row)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="llmkit")


if __name__ == "__main__":
    main()
    sys.exit(0)
