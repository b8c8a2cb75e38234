"""Training machinery shared by `finetune` and `distill`: tables -> splits -> labels -> Trainer -> output.

Public pieces, each small and usable alone:
- `TrainSettings` (+ `load_config`, `settings_from`): Trainer knobs; precedence CLI > TOML file > defaults.
- `load_dataset_splits`, `clean_rows`, `prepare_labels`, `split_validation`: tables (CSV/TSV/JSON/JSONL/
  Parquet, a folder of split files, or a hub dataset id) to clean train/validation `datasets.Dataset`s, with
  the counts of what was skipped or repaired in a `DataStats`. Files are read by data.py's one row reader.
- `build_training_args`, `ProgressCallback`, `make_compute_metrics`; the scores themselves
  (`classification_report`, `perplexity`, ...) live in metrics.py and are re-exported here.
- `check_output`, `checkpoint_dir`, `atomic_output`, `write_report`: a run that dies never leaves an output
  folder that looks finished; checkpoints live beside it (`OUTPUT.checkpoints`) until the final rename.
- `TrainSettings.report_to`/`run_name` (`--report-to`, `--run-name`): the Trainer's own tracker integrations;
  `trainer_class()` points them at the run's log folder (tracking.py) and `atomic_output` moves it into
  `OUTPUT/runs`.

torch, transformers and datasets are imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llmkit import tracking
from llmkit.config import check_config_keys, load_config, settings_from  # noqa: F401  (re-exported)
from llmkit.data import TABLE_SUFFIXES, column_error, decoding_note, open_rows  # noqa: F401  (column_error: re-exported)
from llmkit.data import require_columns as data_require_columns
from llmkit.errors import DataError, MissingDependencyError, NotFoundError, UsageError
from llmkit.fsutil import make_public
from llmkit.metrics import (  # noqa: F401  (re-exported: finetune/distill call them as training.X)
    classification_report,
    perplexity,
    regression_metrics,
    report_renderable,
    round_metric,
)

# --- defaults (shown in --help) -----------------------------------------------------------------------------

DEFAULT_EPOCHS = 3.0
DEFAULT_LEARNING_RATE = 5e-5  # the BERT paper's fine-tuning range is 2e-5..5e-5
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 256  # tokens; longer texts are truncated
DEFAULT_WARMUP_RATIO = 0.0
DEFAULT_WEIGHT_DECAY = 0.0
DEFAULT_SEED = 42
DEFAULT_SAVE_TOTAL_LIMIT = 2  # checkpoints kept for --resume
# Without --save-steps, a checkpoint is written every this many minutes of training: a crash loses at most
# that much work, and short runs do not pay for writing weights + optimizer state (3x the model) each epoch.
DEFAULT_CHECKPOINT_MINUTES = 10.0
DEFAULT_VALIDATION_SPLIT = 0.1  # used when there is no validation file or split and evaluation is wanted
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINTS_SUFFIX = ".checkpoints"

# Names of split files inside a data folder (train.csv, validation.jsonl, dev.tsv, test.parquet, ...).
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "eval"),
    "test": ("test",),
}


# --- settings -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Trainer knobs. `max_steps` > 0 overrides `epochs`; `eval_steps` None means once per epoch.

    Checkpoints (for --resume): every `save_steps` steps when given, else every `checkpoint_minutes` of
    training (see `TimedCheckpoint`), and once per epoch in a distributed run.

    precision: auto (float32 unless the device has fast bfloat16 and the caller opts in), fp32, bf16, fp16.
    """

    epochs: float = DEFAULT_EPOCHS
    max_steps: int = -1
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    gradient_accumulation: int = 1
    warmup_ratio: float = DEFAULT_WARMUP_RATIO
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int = DEFAULT_SEED
    precision: str = "auto"
    eval_steps: int | None = None
    save_steps: int | None = None
    checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES
    save_total_limit: int = DEFAULT_SAVE_TOTAL_LIMIT
    early_stopping_patience: int | None = None
    group_by_length: bool = True  # sort-ish batches by length: less padding, same data each epoch
    logging_steps: int | None = None  # None: about 20 log points per run
    # Trackers the Trainer's integrations report to (tracking.py); () = none. A "a,b" string or a list is
    # accepted (--report-to, a TOML file) and kept as a tuple.
    report_to: tuple[str, ...] = ()
    run_name: str | None = None  # None: the output folder's name

    def __post_init__(self) -> None:
        object.__setattr__(self, "report_to", tracking.parse_report_to(self.report_to))

    def validate(self) -> TrainSettings:
        """Raise UsageError for impossible values (MissingDependencyError for a tracker not installed);
        return self."""
        checks = [
            (self.epochs > 0 or self.max_steps > 0, "--epochs must be > 0 (or give --max-steps)"),
            (self.learning_rate > 0, "--learning-rate must be > 0"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.gradient_accumulation >= 1, "--gradient-accumulation must be >= 1"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.max_length >= 8, "--max-length must be >= 8 tokens"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.eval_steps is None or self.eval_steps >= 1, "--eval-steps must be >= 1"),
            (self.save_steps is None or self.save_steps >= 1, "--save-steps must be >= 1"),
            (self.save_total_limit >= 1, "--save-total-limit must be >= 1"),
            (self.checkpoint_minutes > 0, "checkpoint_minutes must be > 0"),
            (
                self.early_stopping_patience is None or self.early_stopping_patience >= 1,
                "--early-stopping-patience must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        tracking.check_installed(self.report_to)
        if self.run_name is not None and not self.run_name.strip():
            raise UsageError("--run-name must not be empty")
        return self


# --- data ---------------------------------------------------------------------------------------------------


@dataclass
class DataStats:
    """What happened to the rows on the way in (filled as the data is read, cleaned and labelled)."""

    source: str = ""
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_used: dict[str, int] = field(default_factory=dict)
    skipped_empty_text: int = 0
    skipped_no_label: int = 0
    replaced_bytes: int = 0  # undecodable byte sequences turned into U+FFFD
    rows_with_replacements: int = 0
    unseen_validation_labels: list[str] = field(default_factory=list)
    skipped_unseen_label: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def notes(self) -> list[str]:
        """One human line per thing the user should know about."""
        out = []
        if self.skipped_empty_text:
            out.append(f"skipped {self.skipped_empty_text} row(s) with empty text")
        if self.skipped_no_label:
            out.append(f"skipped {self.skipped_no_label} row(s) with no label")
        decoding = decoding_note(self.replaced_bytes, self.rows_with_replacements)
        if decoding:
            out.append(decoding)
        if self.unseen_validation_labels:
            out.append(
                f"label(s) {', '.join(self.unseen_validation_labels)} appear only in validation "
                f"({self.skipped_unseen_label} row(s) left out of evaluation)"
            )
        return out


@dataclass
class Splits:
    """Datasets read for one run (validation/test are None when absent)."""

    train: Any
    validation: Any = None
    test: Any = None
    stats: DataStats = field(default_factory=DataStats)


def quiet_libraries() -> None:
    """Keep library chatter off the terminal: datasets' bars, transformers' info logs, and the warnings
    optional kernels (torchao, torch's pytree registry) print at import time on machines without them."""
    import logging

    for name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    _quiet_datasets()


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def read_table(path: Path | str, stats: DataStats | None = None) -> Any:
    """One table file -> `datasets.Dataset`, read by the one row reader (`data.open_rows`): UTF-8 with the
    BOM dropped and undecodable bytes replaced and counted in `stats`.

    Raises:
        NotFoundError: no such file. DataError: unknown type, malformed content, no rows, mixed value types.
    """
    import datasets

    _quiet_datasets()
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"data file not found: {path}")
    fmt = TABLE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown table type {path.suffix or '(no suffix)'!r}; "
            "use .csv, .tsv, .jsonl, .json or .parquet"
        )
    stats = stats if stats is not None else DataStats()
    read = open_rows(path, fmt)
    rows = [row for _, row in read.rows]
    stats.replaced_bytes += read.decoding.replaced
    stats.rows_with_replacements += read.decoding.rows
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = list(read.columns)
    for r in rows:  # union of keys, in first-seen order (JSON rows may differ)
        columns.extend(k for k in r if k not in columns)
    data = {c: [r.get(c) for r in rows] for c in columns}
    try:
        return datasets.Dataset.from_dict(data)
    except Exception as exc:  # mixed types in one column (pyarrow)
        raise DataError(f"{path}: columns with mixed value types ({str(exc).splitlines()[0]})") from None


def _find_split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in TABLE_SUFFIXES:
            continue
        for split, names in SPLIT_NAMES.items():
            if path.stem.lower() in names and split not in found:
                found[split] = path
    return found


def _load_hub_dataset(name: str) -> dict[str, Any]:
    import datasets

    _quiet_datasets()
    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # offline, missing, gated: all end the same way for the user
        raise NotFoundError(
            f"{name!r} is neither a data file nor a dataset in the Hugging Face cache "
            f"({str(exc).splitlines()[0]}); "
            "give a .csv/.tsv/.jsonl/.json/.parquet file or a folder of train/validation files"
        ) from None
    out = {}
    for split, names in SPLIT_NAMES.items():
        for candidate in names:
            if candidate in loaded:
                out[split] = loaded[candidate]
                break
    if "train" not in out:
        raise DataError(f"dataset {name!r} has no train split (splits: {', '.join(loaded)})")
    return out


def load_dataset_splits(source: Path | str, *, validation_file: Path | str | None = None) -> Splits:
    """Read the data of a run.

    Args:
        source: a table file, a folder holding train.* and optionally validation.*/dev.* and test.* files,
            or a Hugging Face dataset id (from the local cache when offline).
        validation_file: a separate validation table (wins over a validation split in `source`).

    Returns:
        Splits with raw (uncleaned) datasets and `stats.rows_read` / `replaced_bytes` filled in.

    Raises:
        NotFoundError, DataError.
    """
    stats = DataStats(source=str(source))
    path = Path(source)
    tables: dict[str, Any] = {}
    if path.is_dir():
        files = _find_split_files(path)
        if "train" not in files:
            present = ", ".join(p.name for p in sorted(path.iterdir())) or "nothing"
            raise DataError(
                f"{path}: no train.csv/.tsv/.jsonl/.json/.parquet file in the folder (found: {present})"
            )
        tables = {split: read_table(p, stats) for split, p in files.items()}
    elif path.exists() or path.suffix.lower() in TABLE_SUFFIXES or str(source).startswith((".", "/", "~")):
        tables["train"] = read_table(path, stats)
    else:
        tables = _load_hub_dataset(str(source))
    if validation_file is not None:
        tables["validation"] = read_table(Path(validation_file), stats)
    stats.rows_read = {split: len(ds) for split, ds in tables.items()}
    return Splits(tables["train"], tables.get("validation"), tables.get("test"), stats)


def require_columns(dataset: Any, columns: list[str], where: str = "the data") -> None:
    """Raise `data.column_error` (naming the columns present) when one of `columns` is not in `dataset`."""
    data_require_columns(dataset.column_names, columns, where)


def is_missing(value: Any) -> bool:
    """True for None, NaN and blank strings: a cell with nothing in it."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def clean_rows(dataset: Any, text_columns: list[str], label_column: str | None, stats: DataStats) -> Any:
    """Drop rows whose text is empty or whose label is missing; count both in `stats`.

    Args:
        dataset: a `datasets.Dataset`.
        text_columns: columns that must hold non-empty text (checked to exist first).
        label_column: column that must hold a label, or None (language modelling).
        stats: counters to update.

    Returns:
        The filtered dataset.
    """
    require_columns(dataset, text_columns + ([label_column] if label_column else []))
    keep: list[int] = []
    texts = [dataset[c] for c in text_columns]
    labels = dataset[label_column] if label_column else None
    for i in range(len(dataset)):
        if any(is_missing(column[i]) for column in texts):
            stats.skipped_empty_text += 1
        elif labels is not None and is_missing(labels[i]):
            stats.skipped_no_label += 1
        else:
            keep.append(i)
    if len(keep) == len(dataset):
        return dataset
    return dataset.select(keep)


def _label_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _sort_key(name: str) -> tuple[int, float, str]:
    try:
        return (0, float(name), name)  # numeric labels in numeric order: "2" before "10"
    except ValueError:
        return (1, 0.0, name)


@dataclass(frozen=True)
class LabelMap:
    """Label names <-> ids as saved in config.json (`id2label`, `label2id`)."""

    names: tuple[str, ...]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def prepare_labels(
    train: Any,
    validation: Any,
    label_column: str,
    *,
    task: str = "classification",
    stats: DataStats | None = None,
    label_names: list[str] | None = None,
) -> tuple[Any, Any, LabelMap | None]:
    """Turn the label column into a `labels` column: class ids (classification) or floats (regression).

    Classification maps the label values seen in train (strings or numbers, sorted numerically when they are
    numbers) to ids 0..n-1. Validation rows whose label never appears in train are dropped and reported.

    Args:
        train, validation: cleaned datasets (validation may be None).
        label_column: the column holding labels.
        task: "classification" or "regression".
        stats: counters to update (unseen validation labels).
        label_names: a fixed label order to use instead of the sorted train labels (e.g. a teacher's).

    Returns:
        (train, validation, LabelMap or None for regression).

    Raises:
        DataError: non-numeric labels for regression, or fewer than two classes.
    """
    stats = stats if stats is not None else DataStats()
    if task == "regression":

        def to_float(batch: dict[str, list[Any]]) -> dict[str, list[float]]:
            out = []
            for value in batch[label_column]:
                try:
                    out.append(float(value))
                except (TypeError, ValueError):
                    raise DataError(
                        f"label {value!r} in column {label_column!r} is not a number; "
                        "regression needs numeric labels (use --task classification for categories)"
                    ) from None
            return {"labels": out}

        train = train.map(to_float, batched=True)
        validation = validation.map(to_float, batched=True) if validation is not None else None
        return train, validation, None

    names = (
        list(label_names)
        if label_names
        else sorted({_label_name(v) for v in train[label_column]}, key=_sort_key)
    )
    if len(names) < 2:
        raise DataError(
            f"column {label_column!r} has only one label ({', '.join(names)}) in the training rows; "
            "classification needs at least two (for numbers to predict use --task regression)"
        )
    label2id = {name: i for i, name in enumerate(names)}

    def to_ids(batch: dict[str, list[Any]]) -> dict[str, list[int]]:
        return {"labels": [label2id.get(_label_name(v), -1) for v in batch[label_column]]}

    train = train.map(to_ids, batched=True)
    if validation is not None:
        validation = validation.map(to_ids, batched=True)
        unseen = sorted({_label_name(v) for v in validation[label_column]} - set(names), key=_sort_key)
        if unseen:
            before = len(validation)
            validation = validation.filter(lambda row: row["labels"] >= 0)
            stats.unseen_validation_labels = unseen
            stats.skipped_unseen_label = before - len(validation)
    return train, validation, LabelMap(tuple(names))


def split_validation(
    dataset: Any, fraction: float, *, seed: int, label_column: str | None = "labels"
) -> tuple[Any, Any]:
    """Split off a seeded validation part, stratified by `label_column` when it holds class ids.

    Each class gives round(fraction x its size) rows (at least one when it has two or more), so small classes
    are still evaluated. Without labels (language modelling) the split is a plain seeded shuffle.

    Returns:
        (train, validation).
    """
    import numpy as np

    if not 0 < fraction < 1:
        raise UsageError("--validation-split must be between 0 and 1 (e.g. 0.1)")
    if len(dataset) < 2:
        raise DataError(f"only {len(dataset)} usable row(s): too few to split off validation; add rows")
    rng = np.random.default_rng(seed)
    n = len(dataset)
    labels = dataset[label_column] if label_column and label_column in dataset.column_names else None
    if labels is not None and all(isinstance(v, int) for v in labels[:100]):
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        val_idx: list[int] = []
        for label in sorted(groups):
            members = np.array(groups[label])
            rng.shuffle(members)
            take = int(round(fraction * len(members)))
            if take == 0 and len(members) >= 2:
                take = 1
            val_idx.extend(members[:take].tolist())
    else:
        order = rng.permutation(n)
        val_idx = order[: max(1, int(round(fraction * n)))].tolist()
    chosen = set(val_idx)
    train_idx = [i for i in range(n) if i not in chosen]
    if not train_idx or not val_idx:
        raise DataError(
            f"--validation-split {fraction} leaves an empty split of {n} rows; change the fraction"
        )
    return dataset.select(train_idx), dataset.select(sorted(val_idx))


# --- Trainer pieces -----------------------------------------------------------------------------------------


def resolve_precision(precision: str, device: str) -> str:
    """`auto` -> bf16 on CUDA with bfloat16, fp32 elsewhere; explicit choices are checked against the device.

    Raises:
        UsageError: fp16 on CPU. MissingDependencyError: bf16/fp16 on a device without it.
    """
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device == "cpu":
        raise UsageError("--fp16 needs a GPU; on CPU use --bf16 (mixed bfloat16) or leave it out")
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise MissingDependencyError("--bf16: this GPU has no bfloat16; use --fp16")
    return precision


def total_steps(settings: TrainSettings, train_rows: int, world_size: int = 1) -> int:
    """Optimizer steps the run will take (what the progress bar counts)."""
    if settings.max_steps > 0:
        return settings.max_steps
    per_epoch = math.ceil(train_rows / (settings.batch_size * world_size))
    updates = max(1, math.ceil(per_epoch / settings.gradient_accumulation))
    return max(1, math.ceil(updates * settings.epochs))


def build_training_args(
    settings: TrainSettings,
    output_dir: Path | str,
    *,
    has_eval: bool,
    device: str = "cpu",
    metric_for_best_model: str | None = None,
    greater_is_better: bool | None = None,
    train_rows: int | None = None,
    remove_unused_columns: bool = True,
    **extra: Any,
) -> Any:
    """`transformers.TrainingArguments` for `settings`, quiet (no tqdm, no reporters) and resumable.

    Args:
        settings: validated TrainSettings.
        output_dir: where checkpoints go (use `checkpoint_dir(output)`, not the final folder).
        has_eval: whether there is a validation set to evaluate at each eval step/epoch.
        device: the device from `loading.pick_device` ("cpu" forces CPU even where CUDA exists).
        metric_for_best_model / greater_is_better: what early stopping watches (default: eval loss).
        train_rows: rows in train, used to pick a logging interval.
        remove_unused_columns: False when a collator needs extra columns.
        extra: any other TrainingArguments field, passed through (distill uses this).

    Raises:
        UsageError: settings the Trainer rejects (its message, in one line).
    """
    from transformers import TrainingArguments

    precision = resolve_precision(settings.precision, device)
    steps = total_steps(settings, train_rows or settings.batch_size)
    logging_steps = settings.logging_steps or max(1, min(50, steps // 20))
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if settings.eval_steps else "epoch"
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Timed checkpoints are decided per process, which could split a distributed run: use epochs there.
    save_strategy = "steps" if settings.save_steps else ("epoch" if distributed else "no")
    save_steps = settings.save_steps
    early = settings.early_stopping_patience is not None
    if early:
        if not has_eval:
            raise UsageError(
                "--early-stopping-patience needs validation data (--validation-file or --validation-split)"
            )
        # The Trainer can only keep the best model when it saves at every evaluation.
        save_strategy, save_steps = eval_strategy, settings.eval_steps
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps > 0 else -1,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size * 2,  # no gradients: twice the batch fits
        gradient_accumulation_steps=settings.gradient_accumulation,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy=eval_strategy,
        eval_steps=settings.eval_steps,
        save_strategy=save_strategy,
        save_steps=save_steps or 500,
        save_total_limit=settings.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model=(metric_for_best_model or "loss") if early else None,
        greater_is_better=greater_is_better if early else None,
        logging_strategy="steps",
        logging_steps=logging_steps,
        report_to=list(settings.report_to),  # the Trainer's own integrations; tracking.py says where they write
        run_name=settings.run_name or run_name_for(output_dir),
        project=tracking.PROJECT,
        disable_tqdm=True,  # llmkit's own progress bar goes to stderr
        log_level="error",
        use_cpu=device == "cpu",
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        remove_unused_columns=remove_unused_columns,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every trainable parameter is used; the search costs a graph walk
        save_safetensors=True,
    )
    kwargs.update(extra)
    if "save_safetensors" not in {f.name for f in fields(TrainingArguments)}:
        kwargs.pop("save_safetensors")  # transformers 5 always saves safetensors
    try:
        return TrainingArguments(**kwargs)
    except ValueError as exc:
        raise UsageError(f"training settings rejected: {str(exc).strip().splitlines()[0]}") from None


def run_name_for(checkpoints: Path | str) -> str:
    """The default run name: the output folder's name (`checkpoints` is `checkpoint_dir(output)`)."""
    return Path(checkpoints).name.removesuffix(CHECKPOINTS_SUFFIX) or "run"


def make_compute_metrics(
    task: str, num_labels: int | None = None
) -> Callable[[Any], dict[str, float]] | None:
    """The Trainer's `compute_metrics` for `task`: accuracy + macro-F1 (classification), mse/mae (regression).

    Language-modelling tasks return None: their metric is perplexity = exp(eval loss), added by
    `ProgressCallback` without keeping vocabulary-sized logits in memory.
    """
    if task not in ("classification", "regression"):
        return None

    def compute(prediction: Any) -> dict[str, float]:
        logits = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        if task == "regression":
            return regression_metrics(prediction.label_ids, logits)
        names = [str(i) for i in range(num_labels or logits.shape[-1])]
        report = classification_report(prediction.label_ids, logits.argmax(-1), names)
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}

    return compute


_TRAINER_CLASS: Any = None


def drop_default_printers(trainer: Any) -> None:
    """Remove the Trainer's own printer (dicts on stdout) and tqdm bar: stdout is data; llmkit's progress is on stderr."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgress)


def trainer_class() -> Any:
    """`transformers.Trainer` whose evaluations leave the random number generators as they found them.

    Evaluation draws from the global RNGs (each DataLoader iterator takes a seed). When evaluation and
    checkpointing fall on different steps (evaluate each epoch, save every N steps), the RNG state saved in
    a checkpoint then differs from the one training continued with, and `--resume` ends on different
    weights. Forking the RNGs around evaluation makes a resumed run equal an uninterrupted one.
    """
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        import random

        import numpy as np
        import torch
        from transformers import Trainer

        class LlmkitTrainer(Trainer):
            def __init__(self, *args: Any, log_folder: Path | None = None, **kwargs: Any) -> None:
                """`log_folder`: where the trackers write (default: `runs` in the checkpoint folder)."""
                # The trackers' callbacks read where to write from the environment, some when the Trainer
                # builds them (TensorBoard, trackio), some when training begins (MLflow, wandb): set it
                # from here to the end of train() (tracking.py).
                self._tracking_env: dict[str, str | None] = {}
                training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
                self.log_folder: Path | None = None
                if training_args is not None:
                    folder = log_folder or tracking.log_folder(training_args.output_dir)
                    self.log_folder = folder
                    if training_args.report_to:
                        env = tracking.environment(training_args.report_to, folder, training_args.run_name)
                        note = tracking.trackio_store_note(env) if "trackio" in training_args.report_to else None
                        if note:
                            from llmkit.console import warn

                            warn(note)
                        self._tracking_env = tracking.apply_environment(env)
                try:
                    super().__init__(*args, **kwargs)
                except BaseException:
                    tracking.restore_environment(self._tracking_env)
                    raise
                tracking.quiet_stdout(self)  # trackers' banners go to stderr: stdout is llmkit's data

            def train(self, *args: Any, **kwargs: Any) -> Any:
                try:
                    return super().train(*args, **kwargs)
                except BaseException:
                    if self.is_world_process_zero() and self.log_folder is not None:
                        discard_logs_without_checkpoint(self.log_folder.parent)
                    raise
                finally:
                    tracking.detach(self)  # the final evaluation is not part of the tracked run
                    tracking.restore_environment(self._tracking_env)
                    self._tracking_env = {}

            def evaluate(self, *args: Any, **kwargs: Any) -> Any:
                py_state, np_state = random.getstate(), np.random.get_state()
                devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
                try:
                    with torch.random.fork_rng(devices=devices):
                        return super().evaluate(*args, **kwargs)
                finally:
                    random.setstate(py_state)
                    np.random.set_state(np_state)

        _TRAINER_CLASS = LlmkitTrainer
    return _TRAINER_CLASS


class TimedCheckpoint:
    """A Trainer callback that asks for a checkpoint every `minutes` of training (single process runs).

    `build_training_args` leaves the step/epoch save schedule off unless --save-steps is given; add
    `TimedCheckpoint.create(settings)` to the Trainer's callbacks so long runs still stay resumable.
    """

    @staticmethod
    def create(settings: TrainSettings) -> Any:
        base = _trainer_callback_base()

        class _Timed(base):  # type: ignore[misc, valid-type]
            def __init__(self, seconds: float) -> None:
                self.seconds = seconds
                self.last = time.monotonic()

            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.last = time.monotonic()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if args.save_strategy == "no" and time.monotonic() - self.last >= self.seconds:
                    control.should_save = True

            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.last = time.monotonic()

        return _Timed(settings.checkpoint_minutes * 60)


class StopOnSignal:
    """A Trainer callback that ends training at the next step with a checkpoint once a stop signal came.

    Used by `run_trainer` under `signals.deferred()`: SIGTERM, SIGHUP or Ctrl-C during a step is held until the
    step is complete (weights, optimizer and scheduler agree), then this asks the Trainer to save a checkpoint
    (`OUTPUT.checkpoints/checkpoint-N`, what `--resume` continues from) and to stop, skipping the epoch-end
    evaluation. A signal during an evaluation takes effect when it ends.
    """

    @staticmethod
    def create() -> Any:
        from llmkit import signals

        base = _trainer_callback_base()

        class _Stop(base):  # type: ignore[misc, valid-type]
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if signals.pending() is not None:
                    control.should_save = control.should_training_stop = True
                    control.should_evaluate = False  # the checkpoint first: an evaluation could take minutes

            def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if signals.pending() is not None:  # came during the evaluation: save once it is done
                    control.should_save = control.should_training_stop = True

            def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if signals.pending() is not None and control.should_training_stop:
                    control.should_evaluate = False

        return _Stop()


def run_trainer(trainer: Any, checkpoint: Path | None = None) -> Any:
    """`trainer.train()` that a stop signal ends with a checkpoint `--resume` continues from.

    In one process, SIGTERM/SIGHUP/Ctrl-C (inside `signals.handled()`, as every llmkit command runs) is held
    until the current step ends; then `StopOnSignal` saves a checkpoint and `signals.Interrupted` is raised. In a
    multi-process run the ranks could stop at different steps and hang in a collective, so the signal
    interrupts at once there; the schedule's own checkpoints are what `--resume` finds.

    Args:
        trainer: a `transformers.Trainer` whose `args.output_dir` is the run's checkpoint folder.
        checkpoint: the checkpoint to resume from (None: start from the beginning).

    Returns:
        What `trainer.train()` returns.

    Raises:
        signals.Interrupted: a stop signal arrived (after the checkpoint was written).
    """
    from llmkit import signals

    resume_from = str(checkpoint) if checkpoint is not None else None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return trainer.train(resume_from_checkpoint=resume_from)
    trainer.add_callback(StopOnSignal.create())
    with signals.deferred():
        return trainer.train(resume_from_checkpoint=resume_from)


def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class ProgressCallback:
    """Rich progress on stderr (step bar with loss, steps/s, ETA), evaluation lines, and optionally the log
    as JSON lines on stdout. Only the main process of a distributed run shows anything.

    Build it with `ProgressCallback.create(...)`, which returns an instance of a `TrainerCallback` subclass
    (transformers is imported then, not when this module is).
    """

    @staticmethod
    def create(
        *,
        json_log: bool = False,
        emit: Callable[[dict[str, Any]], None] | None = None,
        description: str = "training",
        perplexity_metric: bool = False,
        show: bool = True,
    ) -> Any:
        """Args:
        json_log: write each log/eval record as a JSON line (via `emit`, default stdout).
        emit: where JSON records go (default: `output.write_json`).
        description: the bar's label.
        perplexity_metric: add `eval_perplexity` = exp(eval_loss) to evaluation metrics (language models).
        show: draw the bar and evaluation lines; False keeps only the history (`history`, `evaluations`).
        """
        base = _trainer_callback_base()
        cls = type("LlmkitProgressCallback", (_ProgressMixin, base), {})
        return cls(
            json_log=json_log, emit=emit, description=description, perplexity_metric=perplexity_metric, show=show
        )


class _ProgressMixin:
    def __init__(
        self,
        *,
        json_log: bool,
        emit: Callable[[dict[str, Any]], None] | None,
        description: str,
        perplexity_metric: bool,
        show: bool = True,
    ) -> None:
        self.show = show
        self.json_log = json_log
        self._emit = emit
        self.description = description
        self.perplexity_metric = perplexity_metric
        self.progress: Any = None
        self.task_id: Any = None
        self.started = 0.0
        self.first_step = 0
        self.last_loss: float | None = None
        self.history: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []

    def _write(self, record: dict[str, Any]) -> None:
        if not self.json_log:
            return
        if self._emit is not None:
            self._emit(record)
        else:
            from llmkit.output import write_json

            write_json(record)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.show:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from llmkit.console import stderr_console

        self.started = time.perf_counter()
        self.first_step = state.global_step
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} steps/s"),
            TimeRemainingColumn(),
            console=stderr_console(),
            transient=False,
        )
        self.task_id = self.progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, loss="-", speed="-"
        )
        self.progress.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.started
        done = state.global_step - self.first_step
        speed = f"{done / elapsed:.2f}" if elapsed > 0 and done else "-"
        self.progress.update(self.task_id, completed=state.global_step, speed=speed)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"event": "log", "step": state.global_step, "epoch": round_metric(state.epoch)}
        record.update({k: round_metric(v) for k, v in logs.items()})
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
            if self.progress is not None:
                self.progress.update(self.task_id, loss=f"{self.last_loss:.4f}")
        if "eval_loss" in logs:
            return  # reported by on_evaluate, with perplexity
        self.history.append(record)
        self._write(record)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if metrics is None:
            return
        if self.perplexity_metric and "eval_loss" in metrics:
            metrics["eval_perplexity"] = perplexity(metrics["eval_loss"])
        if not state.is_world_process_zero:
            return
        record = {"event": "eval", "step": state.global_step, "epoch": round_metric(state.epoch)}
        record.update(
            {k: round_metric(v) for k, v in metrics.items() if not k.endswith(("_runtime", "per_second"))}
        )
        self.evaluations.append(record)
        self._write(record)
        shown = "  ".join(
            f"{k.removeprefix('eval_')} {v:.4f}"
            for k, v in record.items()
            if k.startswith("eval_") and isinstance(v, float)
        )
        line = f"step {state.global_step}: {shown}"
        if self.progress is not None:
            self.progress.console.print(line, highlight=False, markup=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=state.global_step)
            self.progress.stop()
            self.progress = None


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def estimate_memory_bytes(model: Any, settings: TrainSettings, seq_len: int | None = None) -> dict[str, int]:
    """A rough training-memory budget: weights + gradients + AdamW states + activations.

    Activations use the per-layer estimate of Korthikanti et al. (2022), ~34*s*b*h bytes at 16-bit plus
    5*heads*s^2*b for attention, doubled for float32. An estimate to catch an out-of-memory plan, not a
    promise.
    """
    trainable, total = count_parameters(model)
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0) or 0
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "num_heads", 1) or 1
    s, b = seq_len or settings.max_length, settings.batch_size
    scale = 1 if settings.precision in ("bf16", "fp16") else 2
    activations = int(layers * (34 * s * b * hidden + 5 * heads * s * s * b) * scale)
    weights, grads, optimizer = total * 4, trainable * 4, trainable * 8
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "activations": activations,
        "total": weights + grads + optimizer + activations,
    }


# --- output folder ------------------------------------------------------------------------------------------


def checkpoint_dir(output: Path | str) -> Path:
    """Where the checkpoints of a run towards `output` live until it ends (beside it, for --resume)."""
    output = Path(output)
    return output.parent / (output.name + CHECKPOINTS_SUFFIX)


def last_checkpoint(output: Path | str) -> Path | None:
    """The newest `checkpoint-N` folder of an interrupted run towards `output`, or None."""
    folder = checkpoint_dir(output)
    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    found = [p for p in found if (p / "trainer_state.json").exists()]  # a checkpoint cut short lacks it
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def resume_hint(output: Path | str) -> str | None:
    """What to tell the user after an interrupted run towards `output`: how to continue it, if it can be."""
    if last_checkpoint(output) is None:
        return None
    return "Run the same command with --resume to continue from the last checkpoint."


def check_output(output: Path | str, *, overwrite: bool = False, resume: bool = False) -> None:
    """Fail early, before any training, when the output folder or stale checkpoints are in the way.

    A fresh run (not `resume`) also removes the tracker logs a killed run left with no checkpoint to resume.

    Raises:
        UsageError: `output` exists (without overwrite), or an earlier run's checkpoints exist without resume.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise UsageError(f"{output} already exists; choose another --output or pass --overwrite")
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output} exists and is not a folder; choose another --output")
    if not resume and last_checkpoint(output) is not None:
        raise UsageError(
            f"{checkpoint_dir(output)} holds checkpoints of an interrupted run; add --resume to continue it, "
            "or delete that folder to start again"
        )
    if not resume:
        from llmkit.distributed import detect

        if detect().is_main:  # one process clears them, before any has started to log (the others never log)
            discard_logs_without_checkpoint(checkpoint_dir(output))


def discard_logs_without_checkpoint(checkpoints: Path) -> None:
    """Remove `checkpoints/runs` (tracker logs) when no checkpoint there could continue them, and the
    checkpoints folder itself when that leaves it empty: a failed run leaves nothing stray behind."""
    output = checkpoints.parent / checkpoints.name.removesuffix(CHECKPOINTS_SUFFIX)
    if last_checkpoint(output) is not None:
        return  # --resume continues these logs
    shutil.rmtree(tracking.log_folder(checkpoints), ignore_errors=True)
    try:
        checkpoints.rmdir()  # only when empty
    except OSError:
        pass


@contextmanager
def atomic_output(
    output: Path | str, *, overwrite: bool = False, staging: Path | None = None
) -> Iterator[Path]:
    """Yield a staging folder; on success rename it to `output`, on any failure delete it.

    So `output` either does not exist or is complete: a crash, kill or Ctrl-C never leaves it half-written.
    The run's tracker logs (`OUTPUT.checkpoints/runs`, see tracking.py) move in as `OUTPUT/runs`. With
    `overwrite`, an existing `output` is replaced only once the new one is complete. `staging` (same
    file system as `output`) is for distributed runs where every process must write to one known folder;
    by default it is a fresh hidden folder beside `output`.
    """
    from llmkit import signals, tempnames

    output = Path(output)
    check_output(output, overwrite=overwrite, resume=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    journal: Path | None = None
    given = staging
    staging = None
    try:
        with signals.deferred():  # a stop signal between creating it and naming it here would leak it
            if given is None:
                # tempnames' rule: a killed earlier run's staging folder for this output goes now, a live run's
                # stays; this one carries the process id and is journalled for `llmkit models --clean`.
                journal = tempnames.journal_dir()
                tempnames.sweep(output, journal=journal)
                staging = tempnames.temp_dir(output, journal=journal)
                make_public(staging)  # mkdtemp makes it 0700; the finished folder gets the user's usual permissions
            else:
                staging = given
                staging.mkdir(parents=True, exist_ok=True)
        yield staging
        logs = tracking.log_folder(checkpoint_dir(output))
        if logs.is_dir():  # the trackers' logs of the run (--report-to) become OUTPUT/runs
            tracking.relocate(logs, staging / tracking.LOG_FOLDER, output / tracking.LOG_FOLDER)
        # Two renames when replacing: a SIGTERM between them would leave no output at all, so it waits.
        with signals.deferred():
            if output.exists():
                # Not a tempnames name on purpose: between the renames this holds the user's only copy, which no
                # sweep may take for a killed run's leftover.
                old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
                os.rename(output, old / output.name)
                os.rename(staging, output)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, output)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if staging is not None and journal is not None:
            tempnames.forget(staging, journal)


def write_report(folder: Path | str, report: dict[str, Any], name: str = "report.json") -> Path:
    """Write `report` as indented JSON into `folder` (temp name, then rename) and return its path."""
    from llmkit import tempnames

    folder = Path(folder)
    target = folder / name
    # Inside an output being staged: that folder is the journalled temporary, so this one needs no entry.
    with tempnames.replacing(target, journal=None) as tmp:
        tmp.write_text(json.dumps(_json_safe(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value
