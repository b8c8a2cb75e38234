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
