"""`llmkit finetune`: fine-tune a pretrained model on a table with the transformers Trainer.

Tasks: classification and regression (a sequence-classification head, labels saved in config.json
so `llmkit classify --model OUTPUT` loads it), causal-lm (a text column, prompt/completion columns with the
loss on the completion only, or chat `messages` rendered through the chat template, loss on the last reply)
and masked-lm (domain-adaptive MLM). Strategies: full fine-tuning, `train_only="head"|"top-N"` (freeze the
rest), or LoRA.

The shared machinery (data, labels, TrainingArguments, progress, metrics, atomic output) is in `training.py`.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llmkit import training
from llmkit.data import column_error
from llmkit.errors import DataError, UsageError
from llmkit.metrics import perplexity, report_renderable, round_metric
from llmkit.strategies import (  # torch-free; the defaults live with the strategies (the CLI's help shows them)
    DEFAULT_LORA_ALPHA,  # noqa: F401
    DEFAULT_LORA_DROPOUT,  # noqa: F401
    DEFAULT_LORA_R,
    DEFAULT_NUM_VIRTUAL_TOKENS,
)
from llmkit.tasks import TRAINING_TASKS
from llmkit.training import TrainSettings

DEFAULT_MODEL = "minilm-l6"
TASKS = TRAINING_TASKS  # one set of task names: llmkit.tasks
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
DEFAULT_PROMPT_COLUMN = "prompt"
DEFAULT_COMPLETION_COLUMN = "completion"
DEFAULT_MESSAGES_COLUMN = "messages"
DEFAULT_MLM_PROBABILITY = 0.15  # BERT's masking rate
IGNORE_INDEX = -100  # label id the loss skips (padding, prompt tokens)


@dataclass(frozen=True)
class Columns:
    """Which columns hold what. `label_column` is ignored by the language-modelling tasks."""

    text_column: str = DEFAULT_TEXT_COLUMN
    text_pair_column: str | None = None
    label_column: str | None = None  # None: "label" when the data has it; a name given must exist
    prompt_column: str = DEFAULT_PROMPT_COLUMN
    completion_column: str = DEFAULT_COMPLETION_COLUMN
    messages_column: str = DEFAULT_MESSAGES_COLUMN

    @property
    def label(self) -> str:
        return self.label_column or DEFAULT_LABEL_COLUMN

    def validate(self) -> Columns:
        return self


@dataclass(frozen=True)
class Strategy:
    """What to train: everything (default), part of the model (`train_only`), or a peft adapter (`strategy`).

    `train_only`: "head", "top-N" (head + the last N layers) or "ffn" (every layer's feed-forward block + the
    head; see strategies.py). `strategy`: "full", "lora", "prompt-tuning" or "prefix-tuning"; `lora_r` alone
    also means LoRA (the older spelling). `merge_lora` folds LoRA into a plain model at the end; without it
    the output is an adapter folder that generate/classify/fill-mask load on its base.
    """

    train_only: str | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_targets: tuple[str, ...] = ()
    merge_lora: bool = False
    strategy: str | None = None
    num_virtual_tokens: int | None = None

    @property
    def peft(self) -> str | None:
        """"lora", "prompt-tuning" or "prefix-tuning" when a peft adapter is trained, else None."""
        if self.strategy in (None, "full"):
            return "lora" if self.lora_r is not None else None
        return self.strategy

    @property
    def lora(self) -> bool:
        return self.peft == "lora"

    @property
    def top_layers(self) -> int | None:
        """N for `top-N`, else None."""
        match = re.fullmatch(r"top-?(\d+)", self.train_only or "")
        return int(match.group(1)) if match else None

    @property
    def name(self) -> str:
        if self.lora:
            return f"lora(r={self.lora_r or DEFAULT_LORA_R})" + ("+merge" if self.merge_lora else "")
        if self.peft:
            return f"{self.peft}({self.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS} virtual tokens)"
        return self.train_only or "full"

    def validate(self) -> Strategy:
        from llmkit.strategies import STRATEGIES

        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise UsageError(f"--strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if (
            self.train_only is not None
            and self.train_only not in ("head", "ffn")
            and self.top_layers is None
        ):
            raise UsageError(f"--train-only {self.train_only!r}: use 'head', 'ffn' or 'top-N' (e.g. top-2)")
        if self.top_layers == 0:
            raise UsageError("--train-only top-N needs N >= 1 (for the head alone use --train-only head)")
        if self.lora_r is not None and self.strategy not in (None, "full", "lora"):
            raise UsageError(f"--lora-r belongs to --strategy lora, not {self.strategy}")
        if self.peft and self.train_only is not None:
            raise UsageError(f"--strategy {self.peft} and --train-only are two different strategies; pick one")
        if self.lora_r is not None and self.lora_r < 1:
            raise UsageError("--lora-r must be >= 1")
        if self.lora_dropout is not None and not 0 <= self.lora_dropout < 1:
            raise UsageError("--lora-dropout must be in [0, 1)")
        given = (
            self.lora_alpha is not None,
            self.lora_dropout is not None,
            bool(self.lora_targets),
            self.merge_lora,
        )
        if not self.lora and any(given):
            raise UsageError("--lora-alpha/--lora-dropout/--lora-targets/--merge-lora need --strategy lora")
        if self.num_virtual_tokens is not None:
            if self.peft not in ("prompt-tuning", "prefix-tuning"):
                raise UsageError("--num-virtual-tokens needs --strategy prompt-tuning or prefix-tuning")
            if self.num_virtual_tokens < 1:
                raise UsageError("--num-virtual-tokens must be >= 1")
        return self


@dataclass(frozen=True)
class FinetunePlan:
    """What a run would do (`--dry-run`): nothing is trained or written."""

    task: str
    model: str
    output: str
    strategy: str
    rows: dict[str, int]
    labels: list[str] | None
    steps: int
    epochs: float
    batch_size: int
    precision: str
    trainable_parameters: int
    total_parameters: int
    memory_estimate_bytes: dict[str, int]
    notes: list[str] = field(default_factory=list)
    dry_run: bool = True
    trainable_share: float = 0.0  # trainable / total, 0..1


@dataclass(frozen=True)
class FinetuneResult:
    """A finished run: where the model is and how training went."""

    output: str
    task: str
    model: str
    strategy: str
    rows: dict[str, int]
    labels: list[str] | None
    steps: int
    epochs: float
    train_seconds: float
    samples_per_second: float
    train_loss: float | None
    metrics: dict[str, Any]
    trainable_parameters: int
    total_parameters: int
    losses: list[float]
    resumed_from_step: int
    validation: dict[str, Any] | None = None  # classification: per-class P/R/F1 and the confusion matrix
    processes: int = 1  # training processes (accelerate launch / torchrun); batch size is per process
    notes: list[str] = field(default_factory=list)
    trainable_share: float = 0.0  # trainable / total, 0..1


# --- task inference and columns -----------------------------------------------------------------------------


def _model_family(spec: str, revision: str | None, trust_remote_code: bool) -> str:
    """What the model can be trained as, from its config (`tasks.family_of`)."""
    from llmkit.loading import read_config
    from llmkit.tasks import family_of

    return family_of(read_config(spec, revision=revision, trust_remote_code=trust_remote_code))


def _looks_continuous(values: list[Any]) -> bool:
    """Labels that are all numbers and not all whole numbers: regression is the only sensible reading."""
    numbers = []
    for value in values[:1000]:
        try:
            numbers.append(float(value))
        except (TypeError, ValueError):
            return False
    return bool(numbers) and any(not n.is_integer() for n in numbers)


def infer_task(columns: list[str], cols: Columns, labels: list[Any] | None, model_family: Any) -> str:
    """The task the columns make clear.

    Args:
        columns: column names present in train.
        cols: the configured column names.
        labels: a sample of label values (None when there is no label column).
        model_family: a callable returning the model's head for text-only data (called lazily):
            "masked-lm" or "causal-lm", or "sequence-classification", which is refused (no label column).

    Returns:
        One of TASKS.
    """
    if cols.label_column is not None and cols.label_column not in columns:
        raise column_error(cols.label_column, columns)
    if cols.label in columns and labels is not None:
        return "regression" if _looks_continuous(labels) else "classification"
    if cols.messages_column in columns:
        return "causal-lm"
    if cols.prompt_column in columns and cols.completion_column in columns:
        return "causal-lm"
    if cols.text_column in columns:
        family = model_family()
        if family == "sequence-classification":
            # Training a classifier's encoder as a masked LM on unlabelled rows is never what was meant.
            raise UsageError(
                f"the model is a classifier but the data has no label column {cols.label!r} "
                f"(columns: {', '.join(columns)}); name it with --label-column, "
                "or give --task masked-lm|causal-lm to train the language model"
            )
        return str(family)
    raise DataError(
        f"cannot tell the task from the columns ({', '.join(columns)}): name the text column with "
        "--text-column and the label column with --label-column, or give --task"
    )


def _lm_mode(columns: list[str], cols: Columns) -> str:
    if cols.messages_column in columns:
        return "chat"
    if cols.prompt_column in columns and cols.completion_column in columns:
        return "prompt-completion"
    return "text"


# --- tokenization -------------------------------------------------------------------------------------------


def _tokenize_classification(dataset: Any, tokenizer: Any, cols: Columns, max_length: int) -> Any:
    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        first = [str(t) for t in batch[cols.text_column]]
        second = [str(t) for t in batch[cols.text_pair_column]] if cols.text_pair_column else None
        return tokenizer(first, second, truncation=True, max_length=max_length)

    keep = {"labels"}
    return dataset.map(
        encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep]
    )


def _tokenize_masked_lm(dataset: Any, tokenizer: Any, cols: Columns, max_length: int) -> Any:
    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [str(t) for t in batch[cols.text_column]]
        return tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def _chat_parts(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(prompt, completion) of a conversation: the completion is the last assistant reply as the template
    renders it, so the loss falls on what the model should learn to say."""
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if len(messages) >= 2 and messages[-1]["role"] == "assistant":
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        if full.startswith(prompt):
            return prompt, full[len(prompt) :]
    return "", full


def _tokenize_causal_lm(dataset: Any, tokenizer: Any, cols: Columns, max_length: int, mode: str) -> Any:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if mode == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"column {cols.messages_column!r} holds chat messages but the model's tokenizer has no chat "
            "template; use a chat model or give prompt/completion columns"
        )

    def encode_pair(prompt: str, completion: str, special: bool) -> tuple[list[int], list[int]]:
        p = tokenizer(prompt, add_special_tokens=special)["input_ids"] if prompt else []
        c = tokenizer(completion, add_special_tokens=special and not prompt)["input_ids"]
        if mode != "chat":  # the chat template already closes the reply
            c = c + eos
        ids = (p + c)[:max_length]
        labels = ([IGNORE_INDEX] * len(p) + c)[:max_length]
        return ids, labels

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        ids_out, labels_out = [], []
        size = len(next(iter(batch.values())))
        for i in range(size):
            if mode == "chat":
                messages = batch[cols.messages_column][i]
                if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and "role" in m for m in messages
                ):
                    raise DataError(
                        f"column {cols.messages_column!r}: expected a list of {{role, content}} objects"
                    )
                prompt, completion = _chat_parts(tokenizer, messages)
                ids, labels = encode_pair(prompt, completion, special=False)
            elif mode == "prompt-completion":
                ids, labels = encode_pair(
                    str(batch[cols.prompt_column][i]), str(batch[cols.completion_column][i]), True
                )
            else:
                ids, labels = encode_pair("", str(batch[cols.text_column][i]), True)
            ids_out.append(ids)
            labels_out.append(labels)
        return {"input_ids": ids_out, "attention_mask": [[1] * len(x) for x in ids_out], "labels": labels_out}

    encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names)
    # A prompt that fills max_length leaves nothing to learn from: drop such rows, do not train on nothing.
    return encoded.filter(lambda row: any(t != IGNORE_INDEX for t in row["labels"]))


# --- strategies ---------------------------------------------------------------------------------------------


def apply_strategy(model: Any, strategy: Strategy, task: str) -> Any:
    """Freeze or wrap `model` for `strategy` (strategies.py does the work); returns the model to train."""
    from llmkit import strategies

    if strategy.peft:
        return strategies.build_peft_model(
            model,
            strategy.peft,
            task,
            num_virtual_tokens=strategy.num_virtual_tokens,
            lora_r=strategy.lora_r,
            lora_alpha=strategy.lora_alpha,
            lora_dropout=strategy.lora_dropout,
            lora_targets=strategy.lora_targets,
        )
    if strategy.train_only == "ffn":
        strategies.train_only_ffn(model)
    elif strategy.train_only:
        strategies.train_only_head(model, strategy.top_layers)
    return model


# --- the task function --------------------------------------------------------------------------------------


def _load_model(
    spec: str, task: str, labels: training.LabelMap | None, device: str, load_options: dict[str, Any]
) -> Any:
    from llmkit.loading import load
    from llmkit.tasks import load_task

    kwargs: dict[str, Any] = {}
    if task == "classification":
        assert labels is not None
        kwargs = dict(
            num_labels=len(labels.names),
            id2label=labels.id2label,
            label2id=labels.label2id,
            problem_type="single_label_classification",
            ignore_mismatched_sizes=True,  # a classifier with other labels gets a fresh head
        )
    elif task == "regression":
        kwargs = dict(num_labels=1, problem_type="regression", ignore_mismatched_sizes=True)
    loaded = load(spec, load_task(task), device=device, dtype="float32", model_kwargs=kwargs, **load_options)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:  # decoder tokenizers often lack one; padding with EOS is the usual fix
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(loaded.model.config, "pad_token_id", None) is None:
        loaded.model.config.pad_token_id = tokenizer.pad_token_id
    return loaded


def _collator(task: str, tokenizer: Any, mlm_probability: float) -> Any:
    from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, DataCollatorWithPadding

    if task == "masked-lm":
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)
    if task == "causal-lm":
        # pads input_ids with the pad token and labels with -100, so padding never counts in the loss
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding="longest")
    return DataCollatorWithPadding(tokenizer)  # pad per batch, not to max_length


def finetune(
    data: str | Path,
    *,
    output: str | Path,
    model: str = DEFAULT_MODEL,
    task: str | None = None,
    columns: Columns = Columns(),
    settings: TrainSettings = TrainSettings(),
    strategy: Strategy = Strategy(),
    validation_file: str | Path | None = None,
    validation_split: float | None = None,
    mlm_probability: float = DEFAULT_MLM_PROBABILITY,
    device: str = "auto",
    dry_run: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    json_log: bool = False,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> FinetunePlan | FinetuneResult:
    """Fine-tune `model` on the table(s) in `data` and write the result to `output`.

    Args:
        data: table file, folder of train/validation/test files, or a cached hub dataset id.
        output: the folder to create (written under a temporary name and renamed when complete).
        model: model spec (alias, folder, .gguf, hub id).
        task: one of TASKS, or None to infer from the columns.
        columns: column names.
        settings: Trainer settings.
        strategy: full, head, top-N or LoRA.
        validation_file: separate validation table.
        validation_split: fraction of train held out (stratified for classification); None uses the data's
            own validation split or, failing that, DEFAULT_VALIDATION_SPLIT for classification/regression.
            0 turns evaluation off.
        mlm_probability: masking rate for masked-lm.
        device: auto|cpu|cuda|mps.
        dry_run: plan only (rows, labels, steps, trainable parameters, memory estimate); nothing is trained.
        resume: continue from the newest checkpoint in `OUTPUT.checkpoints`.
        overwrite: replace an existing `output` (only once the new one is complete).
        json_log: training log records as JSON lines on stdout.
        revision, allow_pickle, trust_remote_code: passed to the loader.

    Returns:
        FinetunePlan for a dry run, else FinetuneResult.

    Raises:
        UsageError, DataError, NotFoundError, MissingDependencyError.
    """
    from llmkit.loading import pick_device, set_seed

    training.quiet_libraries()
    settings = settings.validate()
    strategy = strategy.validate()
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown --task {task!r}; use one of {', '.join(TASKS)}")
    if not 0 < mlm_probability < 1:
        raise UsageError("--mlm-probability must be between 0 and 1 (e.g. 0.15)")
    output = Path(output)
    if not dry_run:
        training.check_output(output, overwrite=overwrite, resume=resume)
    device = pick_device(device)
    precision = training.resolve_precision(settings.precision, device)
    load_options = dict(revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    data_ = prepare_data(
        data,
        model=model,
        task=task,
        columns=columns,
        validation_file=validation_file,
        validation_split=validation_split,
        seed=settings.seed,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    task, label_map, notes = data_.task, data_.label_map, data_.stats.notes()

    # --- model ---------------------------------------------------------------------------------------------
    set_seed(settings.seed)  # the new head's initialisation is part of the run
    loaded = _load_model(model, task, label_map, device, load_options)
    net, tokenizer = loaded.model, loaded.tokenizer
    net = apply_strategy(net, strategy, task)
    from llmkit.strategies import count_trainable

    counted = count_trainable(net)  # tied weights once: the share a reader can check against the model card
    trainable, total = counted.trainable, counted.total
    run_settings = replace(settings, precision=precision)

    if dry_run:
        return FinetunePlan(
            task=task,
            model=model,
            output=str(output),
            strategy=strategy.name,
            rows=dict(data_.stats.rows_used),
            labels=list(label_map.names) if label_map else None,
            steps=training.total_steps(settings, len(data_.train)),
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            precision=precision,
            trainable_parameters=trainable,
            total_parameters=total,
            memory_estimate_bytes=training.estimate_memory_bytes(net, run_settings),
            notes=notes,
            trainable_share=round(counted.share, 6),
        )

    train_tok, val_tok = tokenize_splits(data_, tokenizer, columns, settings.max_length)
    trainer, args, progress = _build_trainer(
        net, tokenizer, train_tok, val_tok, data_, run_settings, output=output, device=device,
        json_log=json_log, mlm_probability=mlm_probability,
    )

    # --- train ---------------------------------------------------------------------------------------------
    ckpt_dir = training.checkpoint_dir(output)
    checkpoint = training.last_checkpoint(output) if resume else None
    resumed_from = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    if resume and checkpoint is None:
        notes.append(f"--resume: no checkpoint in {ckpt_dir}, started from the beginning")
    started = time.perf_counter()
    train_output = training.run_trainer(trainer, checkpoint)  # a stop signal saves a checkpoint first
    seconds = time.perf_counter() - started

    metrics, report_detail = _evaluate(trainer, val_tok, task, label_map)
    from llmkit.plot import missing_note

    if missing_note():
        notes.append(str(missing_note()))
    samples = train_output.metrics.get("train_samples_per_second", 0.0)
    losses = [float(r["loss"]) for r in progress.history if "loss" in r and r["loss"] is not None]
    result = FinetuneResult(
        output=str(output),
        task=task,
        model=model,
        strategy=strategy.name,
        rows=dict(data_.stats.rows_used),
        labels=list(label_map.names) if label_map else None,
        steps=trainer.state.global_step,
        epochs=round(float(trainer.state.epoch or 0.0), 4),
        train_seconds=round(seconds, 3),
        samples_per_second=round(float(samples), 3),
        train_loss=float(train_output.training_loss) if train_output.training_loss is not None else None,
        metrics={k: round_metric(v) for k, v in metrics.items()},
        trainable_parameters=trainable,
        total_parameters=total,
        losses=losses,
        resumed_from_step=resumed_from,
        validation=report_detail or None,
        processes=int(trainer.args.world_size),
        notes=notes,
        trainable_share=round(counted.share, 6),
    )
    report = {
        "result": asdict(result),
        "data": data_.stats.as_dict(),
        "settings": asdict(run_settings),
        "columns": asdict(columns),
        "evaluations": progress.evaluations,
        "log": progress.history,
    }
    _write_output(
        trainer, tokenizer, args, report, output=output, overwrite=overwrite, strategy=strategy, base_spec=model,
        id2label=dict(label_map.id2label) if label_map and task == "classification" else None,
    )
    return result


# --- the steps of finetune() --------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """The data step's result: clean, labelled train/validation datasets and what was decided on the way."""

    task: str
    mode: str  # causal-lm: "text", "chat" or "prompt-completion"; other tasks: "text"
    train: Any
    validation: Any
    label_map: training.LabelMap | None
    stats: training.DataStats


def prepare_data(
    data: str | Path,
    *,
    model: str,
    task: str | None,
    columns: Columns,
    validation_file: str | Path | None,
    validation_split: float | None,
    seed: int,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PreparedData:
    """Step 1 of finetune: read the tables, settle the task, clean rows, map labels, split off validation.

    Args:
        data, model, task, columns, validation_file, validation_split: as `finetune`.
        seed: the seed of the validation split.
        revision, trust_remote_code: for reading the model's config when the task depends on it.

    Returns:
        PreparedData (its `stats.rows_used` filled in).

    Raises:
        UsageError, DataError, NotFoundError.
    """
    splits = training.load_dataset_splits(data, validation_file=validation_file)
    stats = splits.stats
    train_ds, val_ds = splits.train, splits.validation
    present = list(train_ds.column_names)
    if task is None:
        labels_sample = train_ds[columns.label][:1000] if columns.label in present else None
        if labels_sample is not None:
            labels_sample = [v for v in labels_sample if not training.is_missing(v)]
        task = infer_task(
            present, columns, labels_sample, lambda: _model_family(model, revision, trust_remote_code)
        )
    labelled = task in ("classification", "regression")
    mode = _lm_mode(present, columns) if task == "causal-lm" else "text"
    if labelled:
        text_cols = [columns.text_column] + ([columns.text_pair_column] if columns.text_pair_column else [])
        label_col: str | None = columns.label
    elif mode == "chat":
        text_cols, label_col = [columns.messages_column], None
    elif mode == "prompt-completion":
        text_cols, label_col = [columns.prompt_column, columns.completion_column], None
    else:
        text_cols, label_col = [columns.text_column], None
    if mode == "chat":
        training.require_columns(train_ds, text_cols)
        if val_ds is not None:
            training.require_columns(val_ds, text_cols, "the validation data")
    else:
        train_ds = training.clean_rows(train_ds, text_cols, label_col, stats)
        if val_ds is not None:
            training.require_columns(
                val_ds, text_cols + ([label_col] if label_col else []), "the validation data"
            )
            val_ds = training.clean_rows(val_ds, text_cols, label_col, stats)
    if len(train_ds) == 0:
        raise DataError(f"{data}: no usable training rows ({'; '.join(stats.notes()) or 'empty'})")

    label_map = None
    if labelled:
        assert label_col is not None
        train_ds, val_ds, label_map = training.prepare_labels(
            train_ds,
            val_ds,
            label_col,
            task="regression" if task == "regression" else "classification",
            stats=stats,
        )
    if val_ds is None:
        fraction = validation_split
        if fraction is None:
            fraction = training.DEFAULT_VALIDATION_SPLIT if labelled and len(train_ds) >= 20 else 0.0
        if fraction > 0:
            train_ds, val_ds = training.split_validation(
                train_ds,
                fraction,
                seed=seed,
                label_column="labels" if task == "classification" else None,
            )
    elif validation_split:
        raise UsageError(
            "give --validation-file or --validation-split, not both (the data has a validation set)"
        )
    stats.rows_used = {"train": len(train_ds)} | ({"validation": len(val_ds)} if val_ds is not None else {})
    return PreparedData(task, mode, train_ds, val_ds, label_map, stats)


def tokenize_splits(data: PreparedData, tokenizer: Any, columns: Columns, max_length: int) -> tuple[Any, Any]:
    """Step 2: tokenize train and validation for the task (validation None when absent or empty)."""

    def tokenize(ds: Any) -> Any:
        if data.task in ("classification", "regression"):
            return _tokenize_classification(ds, tokenizer, columns, max_length)
        if data.task == "masked-lm":
            return _tokenize_masked_lm(ds, tokenizer, columns, max_length)
        return _tokenize_causal_lm(ds, tokenizer, columns, max_length, data.mode)

    val = data.validation
    return tokenize(data.train), (tokenize(val) if val is not None and len(val) else None)


def _build_trainer(
    net: Any,
    tokenizer: Any,
    train_tok: Any,
    val_tok: Any,
    data: PreparedData,
    settings: TrainSettings,
    *,
    output: Path,
    device: str,
    json_log: bool,
    mlm_probability: float,
) -> tuple[Any, Any, Any]:
    """Step 3: the Trainer with llmkit's progress, timed checkpoints and early stopping.

    Returns:
        (trainer, TrainingArguments, progress callback).
    """
    from transformers import EarlyStoppingCallback

    task, label_map = data.task, data.label_map
    metric = {"classification": ("accuracy", True), "regression": ("mse", False)}.get(task, ("loss", False))
    args = training.build_training_args(
        settings,
        training.checkpoint_dir(output),
        has_eval=val_tok is not None,
        device=device,
        metric_for_best_model=metric[0],
        greater_is_better=metric[1],
        train_rows=len(train_tok),
    )
    progress = training.ProgressCallback.create(
        json_log=json_log, description="finetune", perplexity_metric=task in ("causal-lm", "masked-lm")
    )
    callbacks = [progress, training.TimedCheckpoint.create(settings)]
    if settings.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    trainer = training.trainer_class()(
        model=net,
        args=args,
        data_collator=_collator(task, tokenizer, mlm_probability),
        train_dataset=train_tok,
        eval_dataset=val_tok,
        processing_class=tokenizer,
        compute_metrics=training.make_compute_metrics(task, len(label_map.names) if label_map else None),
        callbacks=callbacks,
    )
    training.drop_default_printers(trainer)
    if task != "causal-lm":
        # These heads take **kwargs but compute a plain mean loss and ignore num_items_in_batch, so the
        # Trainer's token-count scaling (x processes, and no /gradient-accumulation) would double the loss
        # and gradients of a 2-process run (transformers#47688; docs/distributed-loss.md).
        trainer.model_accepts_loss_kwargs = False
    return trainer, args, progress


def _evaluate(
    trainer: Any, val_tok: Any, task: str, label_map: training.LabelMap | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 4: final metrics on validation, and for classification the per-class report (metrics.py)."""
    if val_tok is None:
        return {}, {}
    if task == "classification":
        assert label_map is not None
        prediction = trainer.predict(val_tok, metric_key_prefix="eval")
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        detail = training.classification_report(prediction.label_ids, logits.argmax(-1), label_map.names)
        return {k: v for k, v in prediction.metrics.items() if not k.endswith(("_runtime", "per_second"))}, detail
    metrics = {k: v for k, v in trainer.evaluate().items() if not k.endswith(("_runtime", "per_second"))}
    if task in ("causal-lm", "masked-lm"):
        metrics["eval_perplexity"] = perplexity(metrics.get("eval_loss"))
    return metrics, {}


def _write_output(
    trainer: Any, tokenizer: Any, args: Any, report: dict[str, Any], *, output: Path, overwrite: bool,
    strategy: Strategy, base_spec: str, id2label: dict[int, str] | None = None,
) -> None:
    """Step 5: model, tokenizer, training_args.json, report.json and the pictures (curves.png, for classification
    confusion_matrix.png) into `output`, all or nothing."""
    ckpt_dir = training.checkpoint_dir(output)
    staging = ckpt_dir / "final"
    if trainer.is_world_process_zero():
        # The main process alone clears and fills the staging folder: another rank removing it could pull it
        # from under the main one's save (seen in a 2-process run: "No such file or directory").
        if staging.exists():
            shutil.rmtree(staging)
        with training.atomic_output(output, overwrite=overwrite, staging=staging) as folder:
            _save(trainer, tokenizer, folder, strategy, base_spec=base_spec, id2label=id2label)
            (folder / "training_args.json").write_text(args.to_json_string() + "\n", encoding="utf-8")
            training.write_report(folder, report)
            from llmkit.plot import training_pictures

            training_pictures(folder, report, output.name)  # curves.png (+ confusion_matrix.png)
    elif not (strategy.lora and strategy.merge_lora):
        # Other processes of a distributed run take part in gathering sharded weights (FSDP, DeepSpeed);
        # only the main one writes files.
        trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        # After the barrier, so no rank is still inside the checkpoint folder.
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the checkpoints are no longer needed


def _save(
    trainer: Any, tokenizer: Any, folder: Path, strategy: Strategy, *, base_spec: str,
    id2label: dict[int, str] | None = None,
) -> None:
    """Model (safetensors) + tokenizer into `folder`; LoRA adapters merged first with `merge_lora`.

    An unmerged peft run writes an adapter folder that names its base as the user gave it (an alias stays an
    alias) and its labels, so `--model FOLDER` loads it in the other commands (adapters.py).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if strategy.lora and strategy.merge_lora:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(folder))
    elif strategy.peft:
        from llmkit.adapters import save_adapter

        save_adapter(trainer.accelerator.unwrap_model(trainer.model), folder, base_spec=base_spec,
                     id2label=id2label)
    else:
        trainer.save_model(str(folder))
    tokenizer.save_pretrained(str(folder))
    pickled = folder / "training_args.bin"
    if pickled.exists():  # the JSON copy says the same without needing unpickling to read
        pickled.unlink()


def build_settings(config_file: Path | None, cli: dict[str, Any]) -> dict[str, Any]:
    """finetune()'s keyword arguments from defaults < TOML `config_file` < `cli`.

    Args:
        config_file: a `--config` TOML file, or None.
        cli: the command's values, None for those not given (so the file can fill them); `bf16`/`fp16`/`fp32`
            are booleans, `lora_targets` a comma-separated string.

    Returns:
        data, output, model, task, columns, settings, strategy, validation_file, validation_split,
        mlm_probability and device, ready for `finetune(**kwargs)` (output may be None for a dry run).

    Raises:
        UsageError: an unknown key, two precisions, no data. NotFoundError: no such config file.
    """
    from llmkit.config import check_config_keys, load_config, settings_from

    file_values = load_config(config_file)
    check_config_keys(file_values, known_config_keys(), config_file)
    cli = dict(cli)
    flags = [name for name in ("bf16", "fp16", "fp32") if cli.pop(name, False)]
    if len(flags) > 1:
        raise UsageError("give at most one of --bf16, --fp16, --fp32")
    cli["precision"] = flags[0] if flags else None
    for flag in ("bf16", "fp16", "fp32"):  # the file may say `bf16 = true` as well as `precision = "bf16"`
        if file_values.pop(flag, False):
            file_values.setdefault("precision", flag)
    if cli.get("lora_targets"):
        cli["lora_targets"] = tuple(t.strip() for t in cli["lora_targets"].split(",") if t.strip())
    if isinstance(file_values.get("lora_targets"), (list, str)):
        targets = file_values["lora_targets"]
        file_values["lora_targets"] = tuple(targets.split(",") if isinstance(targets, str) else targets)

    def pick(key: str, default: Any = None) -> Any:
        value = cli.get(key)
        return value if value is not None else file_values.get(key, default)

    data = pick("data")
    if data is None:
        raise UsageError("no data: give a table file, a folder or a dataset id (or `data = ...` in --config)")
    output = pick("output")
    device = cli.get("device") or "auto"
    return {
        "data": data,
        "output": Path(output) if output is not None else None,
        "model": pick("model", DEFAULT_MODEL),
        "task": pick("task"),
        "columns": settings_from(Columns, file_values, cli),
        "settings": settings_from(TrainSettings, file_values, cli),
        "strategy": settings_from(Strategy, file_values, cli),
        "validation_file": pick("validation_file"),
        "validation_split": pick("validation_split"),
        "mlm_probability": pick("mlm_probability", DEFAULT_MLM_PROBABILITY),
        "device": device if device != "auto" else file_values.get("device", "auto"),
    }


def known_config_keys() -> set[str]:
    """Every key a `--config` TOML file may set for finetune."""
    names = (
        {f.name for f in fields(TrainSettings)}
        | {f.name for f in fields(Columns)}
        | {f.name for f in fields(Strategy)}
    )
    return names | {
        "model", "task", "output", "data", "validation_file", "validation_split", "mlm_probability", "device",
        "bf16", "fp16", "fp32",
    }  # fmt: skip


def describe(plan_or_result: FinetunePlan | FinetuneResult) -> str:
    """One line for `--format text`."""
    if isinstance(plan_or_result, FinetunePlan):
        p = plan_or_result
        return (
            f"plan: {p.task} on {p.model}, {p.strategy}, {p.rows}, {p.steps} steps, "
            f"{p.trainable_parameters:,}/{p.total_parameters:,} trainable parameters ({p.trainable_share:.2%})"
        )
    r = plan_or_result
    return (
        f"{r.output}: {r.task}, {r.strategy}, {r.trainable_parameters:,}/{r.total_parameters:,} trainable "
        f"({r.trainable_share:.2%}), {r.steps} steps, {json.dumps(r.metrics)}"
    )


def renderable(plan_or_result: FinetunePlan | FinetuneResult) -> Any:
    """Terminal view: a summary table, then (classification) the per-class report and confusion matrix."""
    from rich.console import Group
    from rich.table import Table

    table = Table(
        show_header=False,
        title="Fine-tuning plan" if isinstance(plan_or_result, FinetunePlan) else "Fine-tuned",
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column()
    skip = {"losses", "validation", "notes", "dry_run"}
    for f in fields(plan_or_result):
        if f.name in skip:
            continue
        value = getattr(plan_or_result, f.name)
        if f.name == "memory_estimate_bytes":
            mib = {k: v / 2**20 for k, v in value.items()}
            value = (
                f"~{mib['total']:.0f} MiB (weights {mib['weights']:.0f}, gradients+optimizer "
                f"{mib['gradients'] + mib['optimizer']:.0f}, activations {mib['activations']:.0f})"
            )
        elif isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
            )
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        table.add_row(f.name.replace("_", " "), str(value))
    parts: list[Any] = [table]
    validation = getattr(plan_or_result, "validation", None)
    if validation:
        parts.append(report_renderable(validation))
    return Group(*parts)
