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
        from llmkit.output import silence_stdout_after_broken_pipe, stderr_console

        debug = os.environ.get("LLMKIT_DEBUG", "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # typer's own usage errors and exits
            raise
        except LlmkitError as exc:
            if debug:
                traceback.print_exc()
            stderr_console().print(f"[bold red]Error:[/bold red] {exc.message}", highlight=False, markup=True)
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
    "  cat prompts.txt | llmkit generate --max-new-tokens 64 | jq -r .text"
)
def generate(
    texts: TextsArg = None,
    model: ModelOpt = None,
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
        model=model or _gen.DEFAULT_MODEL,
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
            model=model or _fm.DEFAULT_MODEL,
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
                row.update(_prediction_columns(result, all_scores or top_k > 1))
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
    if result.error:
        columns["error"] = result.error
    return columns


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
