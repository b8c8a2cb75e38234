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


# --- finetune ---------------------------------------------------------------------------------------------------

from llmkit import finetune as _ft  # noqa: E402  (defaults for --help; torch is imported only when it runs)
from llmkit import training as _tr  # noqa: E402


@app.command(
    epilog="Examples:\n\n"
    "  llmkit finetune reviews.csv --model minilm-l6 --text-column review --label-column stars "
    "--output ./sentiment\n\n"
    '  llmkit classify --model ./sentiment "What a great film"\n\n'
    "  llmkit finetune chats.jsonl --model smollm2-135m-instruct --lora-r 8 --merge-lora -o ./chat\n\n"
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
        typer.Option("--train-only", help="head|top-N: freeze all but the head (and the top N layers)."),
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
    --train-only head|top-N, or LoRA (--lora-r). Progress on stderr; the result (and with --json the training
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
        merge_lora=merge_lora,
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
