"""`llmkit distill`: options and the thin command over `llmkit.distill.distill()`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit import distill as _distill  # torch-free at import: defaults for --help
from llmkit import training as _tr
from llmkit.cli.options import (
    AllowPickleOpt,
    DeviceOpt,
    FormatOpt,
    JsonOpt,
    ReportToOpt,
    RevisionOpt,
    RunNameOpt,
    SeedOpt,
    TrustRemoteCodeOpt,
    command_app,
)

app = command_app()


@app.command(
    "distill",
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
    report_to: ReportToOpt = None,
    run_name: RunNameOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run (OUTPUT.checkpoints).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing OUTPUT once the new one is complete.")
    ] = False,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
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
    trained without the teacher) goes to stdout and OUTPUT/report.json, the curves (loss, its KD and
    hard-label parts, learning rate) to OUTPUT/curves.png, the trackers' logs (--report-to) to OUTPUT/runs.
    """
    from llmkit import output as out
    from llmkit.errors import UsageError

    given = dict(
        teacher=teacher, student=student, student_layers=student_layers, task=task, alpha=alpha,
        temperature=temperature, hidden_weight=hidden_weight, attention_weight=attention_weight,
        cache_teacher=cache_teacher, baseline=baseline, epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
        validation_split=validation_split, text_column=text_column, label_column=label_column, seed=seed,
        prune_ffn=prune_ffn, prune_heads=prune_heads, report_to=report_to, run_name=run_name,
    )
    teacher_spec, settings, train_settings = _distill.build_settings(config, given)
    if output is None:
        raise UsageError("no --output: give the folder to write the student into")
    fmt = out.resolve_format(fmt, json_out)
    try:
        result = _distill.distill(
            data, output, teacher_spec, settings, train_settings, validation=validation_file, device=device,
            overwrite=overwrite, resume=resume, progress=True, on_log=out.info, revision=revision,
            allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: a single-process run saved a checkpoint first
        from llmkit import training

        hint = training.resume_hint(output)
        if hint:
            out.info(hint)
        raise
    if result is None:
        return  # under `accelerate launch`, the main process alone reports
    if fmt == "rich":
        out.stdout_console().print(_distill.render(result))
    else:
        out.Emitter(fmt, text=_distill.text_lines).emit(result)
    from llmkit.plot import show_training_summary

    show_training_summary(output, train_settings.report_to, fmt)
