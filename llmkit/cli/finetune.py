"""`llmkit finetune`: options and the thin command over `llmkit.finetune.finetune()`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from llmkit import finetune as _ft  # defaults for --help; torch is imported only when it runs
from llmkit import training as _tr
from llmkit.cli.options import (
    AllowPickleOpt,
    DeviceOpt,
    FormatOpt,
    JsonOpt,
    ModelOpt,
    ReportToOpt,
    RevisionOpt,
    RunNameOpt,
    TrustRemoteCodeOpt,
    command_app,
)

app = command_app()


@app.command(
    "finetune",
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
    report_to: ReportToOpt = None,
    run_name: RunNameOpt = None,
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
    log) on stdout; OUTPUT/report.json holds the validation report and the training log, OUTPUT/curves.png its
    curves (llmkit[plot]), OUTPUT/runs the trackers' logs (--report-to). The output folder appears only when
    training has finished; an interrupted run continues with the same command plus --resume.
    """
    from llmkit import output as out
    from llmkit.errors import UsageError

    given: dict[str, Any] = dict(
        data=data, output=output, model=model, task=task, validation_file=validation_file,
        validation_split=validation_split, mlm_probability=mlm_probability, device=device,
        epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size,
        gradient_accumulation=gradient_accumulation, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
        max_length=max_length, seed=seed, bf16=bf16, fp16=fp16, fp32=fp32, eval_steps=eval_steps,
        save_steps=save_steps, save_total_limit=save_total_limit, early_stopping_patience=early_stopping_patience,
        group_by_length=group_by_length, report_to=report_to, run_name=run_name,
        text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
        prompt_column=prompt_column, completion_column=completion_column, messages_column=messages_column,
        train_only=train_only, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=lora_targets, merge_lora=merge_lora, strategy=strategy_name,
        num_virtual_tokens=num_virtual_tokens,
    )  # fmt: skip
    kwargs = _ft.build_settings(config, given)
    output_dir = kwargs.pop("output")
    if output_dir is None and not dry_run:
        raise UsageError("no --output folder given (or `output = ...` in --config)")
    fmt = out.resolve_format(fmt, json_out)
    try:
        result = _ft.finetune(
            **kwargs,
            output=output_dir if output_dir is not None else Path("finetuned"),
            dry_run=dry_run,
            resume=resume,
            overwrite=overwrite,
            json_log=fmt == "json",
            revision=revision,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
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
    emitter = out.Emitter(fmt, text=_ft.describe, rich=_ft.renderable)
    emitter.emit(result, {"event": "plan" if dry_run else "result"})
    if not dry_run:
        from llmkit.plot import show_training_summary

        show_training_summary(output_dir, kwargs["settings"].report_to, fmt)
