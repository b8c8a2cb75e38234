"""`llmkit pretrain`: options and the thin command over `llmkit.pretrain.pretrain()`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from llmkit import pretrain as _pt  # defaults for --help; torch is imported only when it runs
from llmkit import training as _tr
from llmkit.cli.options import DeviceOpt, FormatOpt, JsonOpt, ReportToOpt, RunNameOpt, command_app

app = command_app()

_T = _pt.TRAIN_DEFAULTS


def _by_size(key: str) -> str:
    parts = []
    for size, values in _pt.SIZE_TRAIN_DEFAULTS.items():
        other = [f"{objective} {tuned[key]:g}" for (objective, at), tuned in _pt.OBJECTIVE_TRAIN_DEFAULTS.items()
                 if at == size and key in tuned]  # fmt: skip
        parts.append(f"{size} {values[key]:g}" + (f" ({', '.join(other)})" if other else ""))
    return ", ".join(parts)


@app.command(
    "pretrain",
    epilog="Examples:\n\n"
    "  llmkit pretrain notes/ --objective clm --output ./my-gpt\n\n"
    '  llmkit generate --model ./my-gpt "The market"\n\n'
    "  llmkit pretrain articles.csv --text-column body --objective mlm --size small -o ./my-bert\n\n"
    '  llmkit fill-mask --model ./my-bert "The [MASK] rose today."\n\n'
    "  llmkit pretrain corpus.txt --objective clm --tokenizer smollm2-135m-instruct --model-config cfg.json -o lm\n\n"
    "  llmkit pretrain corpus.txt --objective mlm -o ./bert --dry-run\n\n"
    "  accelerate launch -m llmkit pretrain corpus.txt --objective clm -o ./gpt   (DDP, FSDP, DeepSpeed)",
)
def pretrain(
    corpus: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="CORPUS...",
            help="Text files (one text per line), folders of them (read recursively), or tables "
            "(.csv .tsv .jsonl .json .parquet, with --text-column)."
        ),
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option("--objective", help="mlm (a BERT-style masked LM: ModernBERT) or clm (a Llama-style causal LM); required."),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder to create for the model.")] = None,
    size: Annotated[
        str | None,
        typer.Option(
            "--size",
            help=f"{'|'.join(_pt.SIZE_NAMES)}: the model's shape, printed before training "
            f"[default: {_pt.DEFAULT_SIZE}].",
        ),
    ] = None,
    model_config: Annotated[
        str | None,
        typer.Option(
            "--model-config",
            help="A transformers config.json (or a model folder) to build instead of a --size preset; its vocabulary "
            "and special ids come from the tokenizer.",
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Reuse a tokenizer instead of training one: a model's (alias, folder, hub id) or a folder of "
            "tokenizer files.",
        ),
    ] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(
            "--vocab-size",
            help=f"Largest vocabulary of the trained tokenizer (WordPiece for mlm, byte-level BPE for clm) "
            f"[default: {_pt.DEFAULT_VOCAB_SIZE}].",
        ),
    ] = None,
    block_size: Annotated[
        int | None,
        typer.Option(
            "--block-size", help=f"Tokens per training example; the model's context [default: {_pt.DEFAULT_BLOCK_SIZE}]."
        ),
    ] = None,
    validation_split: Annotated[
        float | None,
        typer.Option(
            "--validation-split",
            help=f"Share of the blocks held out for validation perplexity (0: none) "
            f"[default: {_pt.DEFAULT_VALIDATION_SPLIT}].",
        ),
    ] = None,
    mlm_probability: Annotated[
        float | None,
        typer.Option("--mlm-probability", help=f"mlm: masking rate [default: {_pt.DEFAULT_MLM_PROBABILITY}]."),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="The text column of table files [default: text].")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", help=f"Passes over the blocks [default: {_T['epochs']:g}].")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps (overrides --epochs).")
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option("--learning-rate", "--lr", help=f"Peak learning rate [default: by --size: {_by_size('learning_rate')}]."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", "-b", help=f"Blocks per step per device [default: by --size: {_by_size('batch_size')}]."),
    ] = None,
    gradient_accumulation: Annotated[
        int | None, typer.Option("--gradient-accumulation", help="Batches per optimizer step [default: 1].")
    ] = None,
    warmup_ratio: Annotated[
        float | None,
        typer.Option("--warmup-ratio", help=f"Share of steps to warm up over [default: {_T['warmup_ratio']:g}]."),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option("--weight-decay", help=f"AdamW weight decay [default: {_T['weight_decay']:g}]."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help=f"Seed for initialisation, masking, the split [default: {_tr.DEFAULT_SEED}]."),
    ] = None,
    bf16: Annotated[
        bool,
        typer.Option("--bf16", help="Mixed precision bfloat16 (GPUs, AMX/AVX512-BF16 CPUs; slow elsewhere)."),
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Mixed precision float16 (GPU only).")] = False,
    fp32: Annotated[bool, typer.Option("--fp32", help="Full float32, no mixed precision.")] = False,
    eval_steps: Annotated[
        int | None,
        typer.Option(
            "--eval-steps",
            help=f"Evaluate every N steps [default: {_pt.DEFAULT_EVALUATIONS} times a run, and once before].",
        ),
    ] = None,
    save_steps: Annotated[
        int | None,
        typer.Option(
            "--save-steps",
            help=f"Checkpoint every N steps [default: every {_tr.DEFAULT_CHECKPOINT_MINUTES:g} minutes].",
        ),
    ] = None,
    save_total_limit: Annotated[
        int | None,
        typer.Option("--save-total-limit", help=f"Checkpoints kept [default: {_tr.DEFAULT_SAVE_TOTAL_LIMIT}]."),
    ] = None,
    report_to: ReportToOpt = None,
    run_name: RunNameOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint of an interrupted run.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of settings; flags override it.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Train the tokenizer, print the plan, train no model, write nothing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output folder.")] = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
) -> None:
    """Pre-train a small BERT-style encoder (ModernBERT, masked LM) or Llama-style GPT (causal LM) from nothing.

    Trains a tokenizer on the corpus (or reuses one), builds the model from a size preset or a config,
    packs the text into blocks of --block-size tokens, holds some out, and trains with the transformers
    Trainer (the machinery of finetune: checkpoints, --resume, accelerate). Progress with tokens/s and
    validation perplexity on stderr; the result on stdout; OUTPUT/report.json holds every evaluation (the
    first before training) and a sample cloze or generation, OUTPUT/curves.png the curves (llmkit[plot]),
    OUTPUT/runs the trackers' logs (--report-to). The output folder appears only when training has finished
    and loads at once in fill-mask/generate, finetune, distill, quantize and embed.
    """
    from llmkit import output as out
    from llmkit.errors import UsageError

    given: dict[str, Any] = dict(
        corpus=corpus or None, output=output, objective=objective, size=size, model_config=model_config,
        tokenizer=tokenizer, vocab_size=vocab_size, block_size=block_size, validation_split=validation_split,
        mlm_probability=mlm_probability, text_column=text_column, epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, gradient_accumulation=gradient_accumulation,
        warmup_ratio=warmup_ratio, weight_decay=weight_decay, seed=seed, bf16=bf16, fp16=fp16, fp32=fp32,
        eval_steps=eval_steps, save_steps=save_steps, save_total_limit=save_total_limit, report_to=report_to,
        run_name=run_name, device=device,
    )  # fmt: skip
    kwargs = _pt.build_settings(config, given)
    output_dir = kwargs.pop("output")
    if output_dir is None and not dry_run:
        raise UsageError("no --output folder given (or `output = ...` in --config)")
    fmt = out.resolve_format(fmt, json_out)
    try:
        result = _pt.pretrain(
            **kwargs,
            output=output_dir if output_dir is not None else Path("pretrained"),
            dry_run=dry_run,
            resume=resume,
            overwrite=overwrite,
            json_log=fmt == "json",
        )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: a single-process run saved a checkpoint first
        hint = _tr.resume_hint(output_dir) if output_dir is not None else None
        if hint:
            out.info(hint)
        raise
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under `accelerate launch`, the main process alone reports
    for note in result.notes:
        out.warn(note)
    emitter = out.Emitter(fmt, text=_pt.describe, rich=_pt.renderable)
    emitter.emit(result, {"event": "plan" if dry_run else "result"})
    if not dry_run:
        from llmkit.plot import show_training_summary

        show_training_summary(output_dir, kwargs["settings"].report_to, fmt)
