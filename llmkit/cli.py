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
    "  cat prompts.txt | llmkit generate --max-new-tokens 64 | jq -r .text\n\n"
    "  llmkit generate --engine llama-cpp --seed 1 --temperature 0.7 \"Tell me a joke.\""
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
        engine=engine,
    )
    for index, result in enumerate(results):
        emitter.emit(result, passthrough.pop(index, None))


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
