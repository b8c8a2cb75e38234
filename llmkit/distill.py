"""`llmkit distill`: knowledge distillation from a teacher into a smaller, faster student.

Flow: read the data (the shared training.py machinery) -> tokenize with the teacher's tokenizer -> build
or load the student -> train it with the shared Trainer on alpha * CE(labels) + (1 - alpha) * T^2
KL(teacher_T || student_T) (+ optional hidden-state and attention matching; the losses live in losses.py),
the teacher's outputs computed without gradients or read from the on-disk cache -> optionally train the same
student without the teacher (`--baseline`) -> measure teacher, student and baseline side by side on the
validation data -> write the student and `report.json` atomically into the output folder.
"""

from __future__ import annotations

import copy
import random
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llmkit import tempnames, tracking
from llmkit.errors import DataError, UsageError
from llmkit.metrics import classification_report, perplexity, round_metric

TASKS = ("auto", "classification", "causal-lm", "masked-lm")  # "auto": the teacher's head (tasks.head_of)

DEFAULT_ALPHA = 0.5  # half hard labels, half teacher: DistilBERT-style balance; 0 for unlabeled text
DEFAULT_TEMPERATURE = 2.0  # softens the teacher; 1-4 is the usual range
DEFAULT_MLM_PROBABILITY = 0.15  # masked-LM: share of tokens masked (BERT's rate)
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
TEXT_SUFFIXES = ("", ".txt", ".text")  # plain text, one example per line (language modelling)
EVAL_BATCH_SIZE = 32  # examples per forward pass when measuring quality and throughput
LATENCY_EXAMPLES = 32  # validation examples timed one by one (batch 1) for latency per example
THROUGHPUT_EXAMPLES = 256  # validation examples timed in batches for throughput
CACHE_WARN_BYTES = 2 * 1024**3  # warn before filling a teacher cache larger than this


@dataclass(frozen=True)
class DistillSettings:
    """What distillation adds to the shared training settings (training.TrainSettings: epochs, rates, ...).

    `student` and `student_layers` both None means: keep half of the teacher's layers (all of them when
    width is pruned, so `prune_ffn` alone prunes width only). `prune_ffn` / `prune_heads`: the fraction of
    every layer's feed-forward neurons / attention heads to remove from the student before training, ranked by
    their activations on the training texts (pruning.py, NVIDIA Minitron's recipe).
    """

    student: str | None = None
    student_layers: int | None = None
    task: str = "auto"
    alpha: float = DEFAULT_ALPHA
    temperature: float = DEFAULT_TEMPERATURE
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    validation_split: float | None = None  # None: training.DEFAULT_VALIDATION_SPLIT
    mlm_probability: float = DEFAULT_MLM_PROBABILITY
    text_column: str = DEFAULT_TEXT_COLUMN
    label_column: str = DEFAULT_LABEL_COLUMN
    cache_teacher: bool = False
    baseline: bool = False
    prune_ffn: float | None = None
    prune_heads: float | None = None

    def validate(self) -> DistillSettings:
        """Raise UsageError naming the flag to change; return self."""
        if self.task not in TASKS:
            raise UsageError(f"unknown --task {self.task!r}; use one of {', '.join(TASKS)}")
        if self.student is not None and self.student_layers is not None:
            raise UsageError("give either --student MODEL or --student-layers N, not both")
        if self.student_layers is not None and self.student_layers < 1:
            raise UsageError("--student-layers must be at least 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError("--alpha must be in [0, 1] (1: labels only, 0: teacher only)")
        if self.temperature <= 0:
            raise UsageError("--temperature must be > 0")
        if self.hidden_weight < 0 or self.attention_weight < 0:
            raise UsageError("--hidden-weight and --attention-weight must be >= 0")
        if self.validation_split is not None and not 0.0 < self.validation_split < 1.0:
            raise UsageError("--validation-split must be in (0, 1)")
        if not 0.0 < self.mlm_probability < 1.0:
            raise UsageError("--mlm-probability must be in (0, 1)")
        for value, flag in ((self.prune_ffn, "--prune-ffn"), (self.prune_heads, "--prune-heads")):
            if value is not None and not 0.0 < value < 1.0:
                raise UsageError(f"{flag} is the fraction to remove, in (0, 1) (0.5 keeps half)")
        if self.prune_heads is not None and self.attention_weight > 0:
            raise UsageError("--attention-weight compares attention maps head by head; drop it with --prune-heads")
        return self


def build_settings(config_file: Path | None, cli: dict[str, Any]) -> tuple[str, DistillSettings, Any]:
    """(teacher, DistillSettings, training.TrainSettings) from defaults < TOML `config_file` < `cli`.

    `cli` holds the command's values, None for those not given, so the file can fill them.

    Raises:
        UsageError: no teacher, an unknown key in the file or an impossible value.
        NotFoundError: no such file.
    """
    from llmkit import training
    from llmkit.config import check_config_keys, load_config, settings_from

    config = load_config(config_file)
    known = {f.name for f in fields(DistillSettings)} | {f.name for f in fields(training.TrainSettings)}
    check_config_keys(config, known | {"teacher"}, config_file)
    teacher = cli.get("teacher") or config.get("teacher")
    if not teacher:
        raise UsageError("no teacher: pass --teacher MODEL (e.g. a folder written by llmkit finetune)")
    distill_settings = settings_from(DistillSettings, config, cli)
    train_settings = settings_from(training.TrainSettings, config, cli)
    return str(teacher), distill_settings, train_settings


def render(result: DistillResult) -> Any:
    """Teacher, student and baseline side by side, as a rich table for the terminal."""
    from rich.table import Table

    classification = result.task == "classification"
    table = Table(
        title=f"Distillation report ({result.task}, {result.validation_examples} validation examples)",
        title_justify="left",
    )
    columns = ["model", "layers", "parameters", "size", "latency/ex", "examples/s"]
    columns += ["accuracy", "macro-F1"] if classification else ["perplexity"]
    columns.append("KL to teacher")
    for name in columns:
        table.add_column(name, justify="left" if name == "model" else "right")

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for m in result.models:
        row = [
            m.role,
            str(m.layers),
            f"{m.parameters / 1e6:.2f} M",
            f"{m.size_bytes / 1e6:.1f} MB",
            f"{m.latency_ms:.1f} ms",
            f"{m.throughput:.1f}",
        ]
        row += [num(m.accuracy, ".3f"), num(m.macro_f1, ".3f")] if classification else [num(m.perplexity, ".2f")]
        row.append(num(m.kl_to_teacher, ".4f"))
        table.add_row(*row)
    s = result.summary
    parts = [
        f"student: {result.student}",
        f"speed-up x{num(s.get('speedup'), '.2f')}",
        f"size x{num(s.get('size_ratio'), '.2f')}",
    ]
    if classification:
        parts.append(f"accuracy share {num(s.get('accuracy_share'), '.3f')}")
        if "accuracy_gain_over_baseline" in s:
            parts.append(f"gain over baseline {num(s.get('accuracy_gain_over_baseline'), '+.3f')}")
    else:
        parts.append(f"perplexity x{num(s.get('perplexity_ratio'), '.3f')}")
        if "perplexity_gain_over_baseline" in s:
            parts.append(f"perplexity gain over baseline {num(s.get('perplexity_gain_over_baseline'), '+.3f')}")
    parts.append(f"KL to teacher {result.kl_before:.4f} -> {result.kl_after:.4f}")
    table.caption = " · ".join(parts) + f"\nsaved: {result.output_dir} (report: {result.report_path})"
    return table


# --- results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelReport:
    """One model measured on the validation data.

    Attributes:
        role: "teacher", "student" or "baseline" (the student trained on the same data without the teacher).
        parameters: distinct parameters (tied embeddings once).
        size_bytes: weight files on disk.
        latency_ms: median wall time for one example (batch 1).
        throughput: examples per second in batches of EVAL_BATCH_SIZE.
        accuracy, macro_f1: classification quality (None for LMs).
        perplexity: exp(mean token cross-entropy) for LMs (masked LM: over the masked tokens).
        kl_to_teacher: mean KL(teacher || model) at T=1 on the validation data (0 for the teacher).
    """

    role: str
    model: str
    layers: int | None
    parameters: int
    size_bytes: int
    latency_ms: float
    throughput: float
    accuracy: float | None = None
    macro_f1: float | None = None
    perplexity: float | None = None
    kl_to_teacher: float | None = None


@dataclass(frozen=True)
class DistillResult:
    """What `distill` produced: the saved student and the side-by-side report (also in `report.json`)."""

    output_dir: str
    report_path: str
    task: str
    teacher: str
    student: str
    kept_layers: list[int] | None
    train_examples: int
    validation_examples: int
    steps: int
    first_loss: float
    last_loss: float
    kl_before: float
    kl_after: float
    train_seconds: float
    teacher_cache: str  # "off", "filled" or "hit"
    resumed_from_step: int  # 0, or the checkpoint step an interrupted run continued from (--resume)
    models: list[ModelReport]
    summary: dict[str, float | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)
    processes: int = 1  # training processes (accelerate launch / torchrun); batch size is per process
    pruning: dict[str, Any] | None = None  # what --prune-ffn/--prune-heads kept (sizes; indices in config.json)
    # The training log by logging step (loss, its parts loss_kd/loss_hard/..., learning_rate), for curves.png
    # and `llmkit plot`; baseline_log: the same for the --baseline student.
    log: list[dict[str, Any]] = field(default_factory=list)
    baseline_log: list[dict[str, Any]] | None = None


# --- data ---------------------------------------------------------------------------------------------------


@dataclass
class Examples:
    """Texts and (classification) label ids of the train and validation parts, and notes on the reading."""

    train_texts: list[str]
    train_labels: list[int] | None
    val_texts: list[str]
    val_labels: list[int] | None
    notes: list[str] = field(default_factory=list)


def _text_lines_dataset(path: Path, column: str) -> Any:
    """A plain text file (one example per line, blank lines skipped) as a one-column `datasets.Dataset`."""
    import datasets

    from llmkit.data import read_inputs

    texts = [r.text for r in read_inputs(input_file=path, input_format="text") if r.text.strip()]
    if not texts:
        raise DataError(f"{path}: no text lines")
    return datasets.Dataset.from_dict({column: texts})


def _is_text_file(path: Path | None) -> bool:
    return path is not None and path.is_file() and path.suffix.lower() in TEXT_SUFFIXES


def load_examples(
    data: Path,
    validation: Path | None,
    settings: DistillSettings,
    *,
    task: str,
    label_names: list[str] | None,
    need_labels: bool,
    seed: int,
) -> Examples:
    """Read, clean, label and split the data with the shared training machinery (training.py).

    Args:
        data: a table file (.csv/.tsv/.jsonl/.json/.parquet), a folder of train/validation files, a hub
            dataset id, or (language modelling) a plain text file with one example per line.
        validation: a separate validation table or text file; default: split off from `data`.
        settings: columns and the validation share.
        task: classification | causal-lm | masked-lm.
        label_names: the teacher's labels in id order (classification); the data's labels map onto them.
        need_labels: whether the training rows must carry labels (hard loss or --baseline).
        seed: for the validation split.

    Raises:
        NotFoundError: a missing file or column. DataError: labels the teacher does not know, too few rows.
    """
    from llmkit import training

    text_col, label_col = settings.text_column, settings.label_column
    stats = training.DataStats(source=str(data))
    if _is_text_file(Path(data)):
        train_ds, val_ds = _text_lines_dataset(Path(data), text_col), None
    else:
        splits = training.load_dataset_splits(data)
        train_ds, val_ds, stats = splits.train, splits.validation, splits.stats
    if validation is not None:  # a separate file wins over a validation split inside `data`
        if _is_text_file(validation):
            val_ds = _text_lines_dataset(validation, text_col)
        else:
            val_ds = training.read_table(validation, stats)

    classification = task == "classification"
    has_labels = classification and label_col in train_ds.column_names
    if classification and need_labels and not has_labels:
        training.require_columns(train_ds, [text_col, label_col])
    train_ds = training.clean_rows(train_ds, [text_col], label_col if has_labels else None, stats)
    if has_labels:
        train_ds = _teacher_label_ids(train_ds, label_col, label_names, stats, drop_unknown=False)
    if val_ds is None:
        share = settings.validation_split or training.DEFAULT_VALIDATION_SPLIT
        train_ds, val_ds = training.split_validation(
            train_ds, share, seed=seed, label_column="labels" if has_labels else None
        )
        val_has_labels = has_labels
    else:
        # Validation labels are scored even when training uses none (--alpha 0 on unlabeled text).
        val_has_labels = classification and label_col in val_ds.column_names
        val_ds = training.clean_rows(val_ds, [text_col], label_col if val_has_labels else None, stats)
        if val_has_labels:
            val_ds = _teacher_label_ids(val_ds, label_col, label_names, stats, drop_unknown=True)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise DataError(f"{data}: no usable rows left for training or validation; check the columns and labels")
    return Examples(
        train_texts=list(train_ds[text_col]),
        train_labels=list(train_ds["labels"]) if has_labels else None,
        val_texts=list(val_ds[text_col]),
        val_labels=list(val_ds["labels"]) if val_has_labels else None,
        notes=stats.notes(),
    )


def _teacher_label_ids(ds: Any, column: str, names: list[str] | None, stats: Any, *, drop_unknown: bool) -> Any:
    """A `labels` column of the teacher's class ids. Unknown training labels are an error (the student must
    keep the teacher's label set); unknown validation labels are left out and counted."""
    from llmkit import training

    ds, _, _ = training.prepare_labels(ds, None, column, stats=stats, label_names=names)
    unknown = sorted({str(v) for v, i in zip(ds[column], ds["labels"], strict=True) if i < 0})
    if unknown and not drop_unknown:
        raise DataError(
            f"label(s) {', '.join(unknown)} are not among the teacher's labels "
            f"({', '.join(names or [])}); distillation keeps the teacher's label set"
        )
    if unknown:
        before = len(ds)
        ds = ds.filter(lambda row: row["labels"] >= 0)
        stats.unseen_validation_labels = unknown
        stats.skipped_unseen_label = before - len(ds)
    return ds


def tokenize(
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | None,
    task: str,
    *,
    max_length: int,
    mlm_probability: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Token ids per example (`example_id` = position), plus what each task trains on.

    Classification: `label` (a class id) when there are labels. Masked LM: `mlm_input_ids`/`mlm_labels`,
    masked once per example from `seed`, so the teacher sees the same masked text every epoch and its cached
    outputs stay valid.
    """
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    examples: list[dict[str, Any]] = []
    for i, input_ids in enumerate(enc["input_ids"]):
        example: dict[str, Any] = {"input_ids": list(input_ids), "example_id": i}
        if labels is not None:
            example["label"] = int(labels[i])
        if task == "masked-lm":
            masked, targets = _mask_tokens(list(input_ids), tokenizer, special, mlm_probability, rng)
            example["mlm_input_ids"], example["mlm_labels"] = masked, targets
        examples.append(example)
    return examples


def _mask_tokens(
    ids: list[int], tokenizer: Any, special: set[int], prob: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """BERT's recipe: of the chosen tokens 80% -> [MASK], 10% -> a random token, 10% kept; >= 1 chosen."""
    from llmkit.losses import IGNORE_INDEX

    candidates = [i for i, t in enumerate(ids) if t not in special]
    chosen = {i for i in candidates if rng.random() < prob}
    if not chosen and candidates:
        chosen = {rng.choice(candidates)}
    masked, labels = list(ids), [IGNORE_INDEX] * len(ids)
    for i in sorted(chosen):
        labels[i] = ids[i]
        roll = rng.random()
        if roll < 0.8:
            masked[i] = tokenizer.mask_token_id
        elif roll < 0.9:
            masked[i] = rng.randrange(len(tokenizer))
    return masked, labels


def collate(examples: Sequence[dict[str, Any]], task: str, pad_id: int) -> dict[str, Any]:
    """Right-padded tensors for a batch: input_ids, attention_mask, labels (task-specific), example_id."""
    import torch

    from llmkit.losses import IGNORE_INDEX

    key = "mlm_input_ids" if task == "masked-lm" else "input_ids"
    length = max(len(e[key]) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        seq = example[key]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    batch: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": mask,
        "example_id": torch.tensor([e["example_id"] for e in examples]),
    }
    if task == "classification":
        if all("label" in e for e in examples):
            batch["labels"] = torch.tensor([e["label"] for e in examples])
    elif task == "masked-lm":
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            labels[row, : len(example["mlm_labels"])] = torch.tensor(example["mlm_labels"])
        batch["labels"] = labels
    else:  # causal LM: the next token is the label; padding is not a target
        labels = ids.clone()
        labels[mask == 0] = IGNORE_INDEX
        batch["labels"] = labels
    return batch


# --- teacher outputs and the loss ---------------------------------------------------------------------------


@dataclass
class Matching:
    """Which teacher hidden states / attention maps each student one is compared with."""

    hidden_map: list[int] | None = None  # per student hidden state (embeddings + each layer): teacher index
    attention_map: list[int] | None = None  # per student layer: teacher layer
    projections: Any = None  # nn.ModuleList of Linear(Hs, Ht) when widths differ, else None


def task_view(task: str, logits: Any, labels: Any | None, attention_mask: Any) -> tuple[Any, Any | None, Any]:
    """The positions that count for each task: (logits, labels, mask) ready for the losses.

    Classification: one position per example. Causal LM: position i predicts token i+1 (shifted), padding
    masked. Masked LM: only the masked tokens.
    """
    from llmkit.losses import IGNORE_INDEX

    if task == "classification":
        return logits, labels, None
    if task == "causal-lm":
        shifted_labels = labels[:, 1:] if labels is not None else None
        return logits[:, :-1], shifted_labels, attention_mask[:, 1:]
    mask = (labels != IGNORE_INDEX).long() if labels is not None else attention_mask
    return logits, labels, mask


class TeacherOutputs:
    """Teacher outputs for a batch: computed live without gradients, or read from the on-disk cache."""

    def __init__(self, teacher: Any, task: str, matching: Matching, cached: dict[str, Any] | None = None):
        self.teacher = teacher
        self.task = task
        self.matching = matching
        self.cached = cached

    def per_example(self, input_ids: Any, attention_mask: Any) -> list[dict[str, Any]]:
        """Run the teacher on a batch; split its outputs into unpadded per-example tensors (for the cache)."""
        out = self._forward(input_ids, attention_mask)
        lengths = attention_mask.sum(dim=1).tolist()
        results = []
        for row, n in enumerate(lengths):
            item = {"logits": out["logits"][row] if self.task == "classification" else out["logits"][row, :n]}
            if "hidden" in out:
                item["hidden"] = out["hidden"][:, row, :n]
            if "attention" in out:
                item["attention"] = out["attention"][:, row, :, :n, :n]
            results.append(item)
        return results

    def batch(self, input_ids: Any, attention_mask: Any, example_ids: Any) -> dict[str, Any]:
        """{"logits": [B,(S,)C], "hidden": [n,B,S,H]?, "attention": [n,B,heads,S,S]?} for this batch."""
        if self.cached is None:
            return self._forward(input_ids, attention_mask)
        import torch

        device = input_ids.device
        length = input_ids.shape[1]
        out: dict[str, Any] = {}
        for name in ("logits", "hidden", "attention"):
            found = [self.cached.get(f"{name}.{int(i)}") for i in example_ids]
            if found[0] is None:
                continue
            items: list[Any] = found  # the cache holds every example's tensors or none of them
            if name == "logits" and self.task == "classification":
                out[name] = torch.stack(items).to(device)
                continue
            padded = []
            for t in items:
                if name == "logits":  # [s, C] -> [S, C]
                    t = torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[0]))
                elif name == "hidden":  # [n, s, H]
                    t = torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1]))
                else:  # [n, heads, s, s]
                    pad = length - t.shape[-1]
                    t = torch.nn.functional.pad(t, (0, pad, 0, pad))
                padded.append(t)
            out[name] = torch.stack(padded, dim=1 if name != "logits" else 0).to(device)
        return out

    def _forward(self, input_ids: Any, attention_mask: Any) -> dict[str, Any]:
        import torch

        m = self.matching
        with torch.no_grad():
            result = self.teacher(
                input_ids=input_ids.to(self.teacher.device),
                attention_mask=attention_mask.to(self.teacher.device),
                output_hidden_states=m.hidden_map is not None,
                output_attentions=m.attention_map is not None,
            )
        out: dict[str, Any] = {"logits": result.logits.float()}
        if m.hidden_map is not None:
            out["hidden"] = torch.stack([result.hidden_states[i].float() for i in m.hidden_map])
        if m.attention_map is not None:
            out["attention"] = torch.stack([result.attentions[i].float() for i in m.attention_map])
        return out


def _make_trainer_class() -> Any:
    """The Trainer subclass, built on first use so that importing this module does not import transformers."""
    from llmkit import training

    class DistillTrainer(training.trainer_class()):  # type: ignore[misc]  # the shared, RNG-neutral Trainer
        """The shared Trainer with the distillation loss (or the plain hard loss for the baseline)."""

        # compute_loss returns a per-batch mean: let the Trainer divide it for gradient accumulation.
        loss_is_scaled_for_ga = False

        def __init__(self, *args: Any, kd: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.kd = kd
            self.history: list[float] = []
            self.resumed_from_step = 0
            self.part_sums: dict[str, float] = {}  # loss parts since the last log, for their means
            self.part_count = 0

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            # Each logged training loss comes with the means of its parts over the same batches (loss_kd:
            # T^2 KL to the teacher, loss_hard: cross-entropy on the labels, ...), for the trackers and curves.
            if "loss" in logs and self.part_count:
                for name, total in self.part_sums.items():
                    logs[name] = total / self.part_count
                self.part_sums, self.part_count = {}, 0
            super().log(logs, start_time)

        def create_optimizer(self, model: Any = None) -> Any:
            optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
            projections = self.kd["matching"].projections
            if projections is not None:  # learned width adapters train with the student, not saved with it
                optimizer.add_param_group({"params": list(projections.parameters()), "weight_decay": 0.0})
            return optimizer

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            from llmkit.losses import attention_loss, distillation_loss, hard_loss, hidden_loss

            kd = self.kd
            task, settings, matching = kd["task"], kd["settings"], kd["matching"]
            example_ids = inputs.pop("example_id")
            labels = inputs.pop("labels", None)
            teacher: TeacherOutputs | None = kd["teacher"]
            out = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                output_hidden_states=teacher is not None and matching.hidden_map is not None,
                output_attentions=teacher is not None and matching.attention_map is not None,
            )
            logits, target, mask = task_view(task, out.logits, labels, inputs["attention_mask"])
            parts: dict[str, Any] = {}
            if teacher is None:  # the baseline: the same student on the same data, labels only
                loss = hard_loss(logits, target)
                parts["loss_hard"] = loss
            else:
                t = teacher.batch(inputs["input_ids"], inputs["attention_mask"], example_ids)
                t_logits, _, _ = task_view(task, t["logits"], None, inputs["attention_mask"])
                hidden = attention = None
                if "hidden" in t:
                    s_hidden = list(out.hidden_states)
                    projections = list(matching.projections) if matching.projections is not None else None
                    hidden = hidden_loss(s_hidden, list(t["hidden"]), inputs["attention_mask"], projections)
                if "attention" in t:
                    attention = attention_loss(list(out.attentions), list(t["attention"]), inputs["attention_mask"])
                split = distillation_loss(
                    logits,
                    t_logits,
                    target if settings.alpha > 0 else None,
                    alpha=settings.alpha,
                    temperature=settings.temperature,
                    mask=mask,
                    hidden=hidden,
                    hidden_weight=settings.hidden_weight,
                    attention=attention,
                    attention_weight=settings.attention_weight,
                )
                loss = split.total
                named = {"loss_kd": split.soft, "loss_hard": split.hard, "loss_hidden": split.hidden,
                         "loss_attention": split.attention}  # fmt: skip
                parts = {name: value for name, value in named.items() if value is not None}
            values = {"loss": loss.detach(), **{name: value.detach() for name, value in parts.items()}}
            if self.args.world_size > 1:
                # The history is the global batch's loss, as one process with the whole batch would log it
                # (equal per-process batches: the mean of the processes' means).
                values = {name: self.accelerator.reduce(v, reduction="mean") for name, v in values.items()}
            self.history.append(float(values.pop("loss")))
            for name, value in values.items():
                self.part_sums[name] = self.part_sums.get(name, 0.0) + float(value)
            self.part_count += 1
            return (loss, out) if return_outputs else loss

    return DistillTrainer


def _train(
    model: Any,
    examples: list[dict[str, Any]],
    task: str,
    settings: DistillSettings,
    train_settings: Any,
    pad_id: int,
    teacher: TeacherOutputs | None,
    matching: Matching,
    checkpoints: Path,
    device: str,
    *,
    resume: bool,
    progress: bool,
    label: str,
    log_folder: Path | None = None,
) -> Any:
    """Train `model` in place with the shared TrainingArguments (training.py) (checkpoints: `checkpoints`).

    Returns the Trainer; `trainer.progress.history` holds the logged training records (loss, its parts, learning
    rate, by step). `log_folder`: where --report-to trackers write (default: `runs` beside the checkpoints).
    """
    from llmkit import training

    args = training.build_training_args(
        train_settings,
        checkpoints,
        has_eval=False,
        device=device,
        train_rows=len(examples),
        remove_unused_columns=False,  # the collator needs example_id (the teacher cache key)
    )
    # Checkpoints every --save-steps, else every few minutes of training (the shared schedule), for --resume.
    history = training.ProgressCallback.create(description=label, show=progress)  # the bar, and the log for curves
    callbacks = [training.TimedCheckpoint.create(train_settings), history]
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=lambda batch: collate(batch, task, pad_id),
        callbacks=callbacks,
        kd={"task": task, "settings": settings, "matching": matching, "teacher": teacher},
        log_folder=log_folder,
    )
    trainer.progress = history
    training.drop_default_printers(trainer)
    last = training.last_checkpoint(checkpoints.parent / checkpoints.name.removesuffix(training.CHECKPOINTS_SUFFIX))
    checkpoint = last if resume else None
    trainer.resumed_from_step = int(checkpoint.name.split("-")[-1]) if checkpoint is not None else 0
    training.run_trainer(trainer, checkpoint)  # a stop signal saves a checkpoint first
    model.eval()
    return trainer


# --- measuring ----------------------------------------------------------------------------------------------


def evaluate(
    model: Any,
    examples: list[dict[str, Any]],
    task: str,
    pad_id: int,
    *,
    teacher: Any = None,
    label_names: Sequence[str] = (),
) -> dict[str, Any]:
    """Quality and KL to the teacher of `model` on the validation examples.

    Args:
        teacher: the teacher model, run on the same batches for the KL (its logits are not kept: for a
            language model they are sequence x vocabulary per example).
        label_names: class names in id order (classification).

    Returns:
        {"accuracy", "macro_f1", "perplexity", "kl_to_teacher"}.
    """
    import torch

    from llmkit.losses import IGNORE_INDEX, kl_to_teacher

    model.eval()
    predictions: list[int] = []
    gold: list[int] = []
    nll_sum, nll_count = 0.0, 0
    kl_sum, kl_count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), EVAL_BATCH_SIZE):
            chunk = examples[start : start + EVAL_BATCH_SIZE]
            batch = collate(chunk, task, pad_id)
            out = model(
                input_ids=batch["input_ids"].to(model.device),
                attention_mask=batch["attention_mask"].to(model.device),
            )
            logits, target, mask = task_view(
                task, out.logits.float().cpu(), batch.get("labels"), batch["attention_mask"]
            )
            if teacher is not None:
                t_out = teacher(
                    input_ids=batch["input_ids"].to(teacher.device),
                    attention_mask=batch["attention_mask"].to(teacher.device),
                )
                t_logits, _, _ = task_view(task, t_out.logits.float().cpu(), None, batch["attention_mask"])
                for row in range(len(chunk)):  # per example, so a long one weighs as much as a short one
                    row_mask = None if mask is None else mask[row]
                    kl_sum += float(kl_to_teacher(logits[row], t_logits[row], row_mask))
                    kl_count += 1
            if task == "classification":
                if target is not None:
                    predictions.extend(logits.argmax(-1).tolist())
                    gold.extend(target.tolist())
            elif target is not None:
                nll_sum += float(
                    torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]),
                        target.reshape(-1),
                        ignore_index=IGNORE_INDEX,
                        reduction="sum",
                    )
                )
                nll_count += int((target != IGNORE_INDEX).sum())
    result: dict[str, Any] = {
        "kl_to_teacher": kl_sum / kl_count if kl_count else None,
        "accuracy": None,
        "macro_f1": None,
        "perplexity": None,
    }
    if task == "classification" and gold:
        report = classification_report(gold, predictions, list(label_names))
        result["accuracy"], result["macro_f1"] = report["accuracy"], report["macro_f1"]
    elif task != "classification" and nll_count:
        result["perplexity"] = perplexity(nll_sum / nll_count)
    return result


def measure_speed(
    models: list[Any], examples: list[dict[str, Any]], task: str, pad_id: int
) -> list[tuple[float, float]]:
    """(median ms per example at batch 1, examples/s in batches of EVAL_BATCH_SIZE) for each model.

    The models take turns on every example and batch (interleaved, after a warm-up of each), so a busy
    machine slows them alike and the ratios between them stay fair.
    """
    import torch

    def run(model: Any, batch: dict[str, Any]) -> float:
        started = time.perf_counter()
        model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
        )
        return time.perf_counter() - started

    singles = [collate([e], task, pad_id) for e in examples[:LATENCY_EXAMPLES]]
    batches = [
        collate(examples[i : i + EVAL_BATCH_SIZE], task, pad_id)
        for i in range(0, min(len(examples), THROUGHPUT_EXAMPLES), EVAL_BATCH_SIZE)
    ]
    single_times: list[list[float]] = [[] for _ in models]
    batch_times = [0.0 for _ in models]
    with torch.inference_mode():
        for model in models:
            model.eval()
            run(model, singles[0])
            run(model, batches[0])
        for batch in singles:
            for i, model in enumerate(models):
                single_times[i].append(run(model, batch) * 1000)
        for batch in batches:
            for i, model in enumerate(models):
                batch_times[i] += run(model, batch)
    counted = sum(int(b["input_ids"].shape[0]) for b in batches)
    return [
        (statistics.median(single_times[i]), counted / batch_times[i] if batch_times[i] > 0 else 0.0)
        for i in range(len(models))
    ]


def weights_size(directory: Path) -> int:
    """Bytes of the weight files in a saved model folder."""
    suffixes = (".safetensors", ".bin", ".pt", ".pth")
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name.endswith(suffixes))


# --- the task -----------------------------------------------------------------------------------------------


def detect_task(config: Any) -> str:
    """classification | causal-lm | masked-lm: the training task of the teacher's head (`tasks.head_of`).

    Raises:
        UsageError: a teacher without a head distill can learn from (base encoders, seq2seq models).
    """
    from llmkit.tasks import head_of, training_task

    head = head_of(config)
    task = training_task(head)
    if task is None:
        names = ", ".join(getattr(config, "architectures", None) or []) or "no architecture in config.json"
        raise UsageError(
            f"cannot tell the task of the teacher ({names}: {head}); pass --task classification|causal-lm|masked-lm"
        )
    return task


def _check_teacher_head(spec: str, config: Any, task: str) -> None:
    """A teacher must have been trained for the task: a head that from_pretrained invents is random noise."""
    from llmkit.tasks import head_of, load_task

    head = head_of(config)
    if head == load_task(task):
        return
    what = ", ".join(config.architectures or []) or "no head recorded in config.json"
    fix = "fine-tune it first with llmkit finetune" if task == "classification" else "pick a teacher made for it"
    raise UsageError(f"{spec} ({what}) has no trained {task} head to learn from; {fix}")


def distill(
    data: Path,
    output_dir: Path,
    teacher: str,
    settings: DistillSettings | None = None,
    train_settings: Any = None,
    *,
    validation: Path | None = None,
    device: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    on_log: Callable[[str], None] | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> DistillResult | None:
    """Distill `teacher` into a smaller student trained on `data`; save it and report.json in `output_dir`.

    Args:
        data: training data (see `load_examples`); a label column for classification unless alpha is 0.
        output_dir: where the student (a save_pretrained folder) and report.json go, written atomically.
        teacher: model spec (alias, folder, .gguf, hub id); for classification a fine-tuned classifier.
        settings: distillation settings (default: DistillSettings()).
        train_settings: training.TrainSettings (epochs, learning rate, batch size, max length, seed, ...).
        validation: held-out examples; default: a seeded split of `data`.
        device: auto|cpu|cuda|mps.
        overwrite: replace an existing output_dir once the new one is complete.
        resume: continue an interrupted run from its checkpoints (OUTPUT.checkpoints).
        progress: show the shared rich progress bar on stderr.
        on_log: receives one-line progress messages (the CLI prints them on stderr).

    Returns:
        DistillResult with teacher, student (and baseline) side by side; None on the other processes of a
        multi-process run (`accelerate launch`, torchrun), where the main process alone measures and writes.

    Raises:
        UsageError, DataError, NotFoundError, ModelNotFoundError.
    """

    from llmkit import training
    from llmkit.loading import read_config, set_seed

    settings = (settings or DistillSettings()).validate()
    train_settings = (train_settings or training.TrainSettings()).validate()
    from llmkit import distributed

    # Under `accelerate launch` / torchrun every process trains; the main one alone measures, writes and talks.
    main = distributed.detect().is_main
    log = (on_log if main else None) or (lambda _message: None)
    output_dir = Path(output_dir)
    training.check_output(output_dir, overwrite=overwrite, resume=resume)
    task = (
        settings.task
        if settings.task != "auto"
        else detect_task(read_config(teacher, revision=revision, trust_remote_code=trust_remote_code))
    )
    model_kwargs = {"attn_implementation": "eager"} if settings.attention_weight > 0 else None  # sdpa: no maps
    # The loading flags apply to the teacher and to a given --student alike.
    load_options = {"revision": revision, "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}

    set_seed(train_settings.seed)
    teacher_lm, label_names = _load_teacher(teacher, task, device, model_kwargs, load_options)
    teacher_model, tokenizer = teacher_lm.model, teacher_lm.tokenizer
    pad_id = tokenizer.pad_token_id

    # Labels are needed for the hard loss and for the baseline (which learns from labels alone).
    need_labels = task == "classification" and (settings.alpha > 0 or settings.baseline)
    ex = load_examples(
        Path(data) if Path(data).exists() else data,
        validation,
        settings,
        task=task,
        label_names=label_names or None,
        need_labels=need_labels,
        seed=train_settings.seed,
    )
    for note in ex.notes:
        log(f"Data: {note}.")
    common = {"max_length": train_settings.max_length, "mlm_probability": settings.mlm_probability}
    train = tokenize(tokenizer, ex.train_texts, ex.train_labels, task, seed=train_settings.seed, **common)
    val = tokenize(tokenizer, ex.val_texts, ex.val_labels, task, seed=train_settings.seed + 1, **common)
    log(f"Task {task}: {len(train)} training and {len(val)} validation examples.")

    student, student_name, kept = _make_student(
        settings, teacher_model, tokenizer, task, device, model_kwargs, log, load_options,
        calibration=ex.train_texts,
    )
    student.train()
    initial_student = copy.deepcopy(student) if settings.baseline else None

    matching = _matching(settings, teacher_model, student)
    teacher_out, cache_state = _teacher_outputs(settings, teacher_lm, task, matching, train, pad_id, log)

    # The teacher on the validation data (its quality), and how far the untrained student is from it.
    if main:
        teacher_eval = evaluate(teacher_model, val, task, pad_id, label_names=label_names)
        before = evaluate(student, val, task, pad_id, teacher=teacher_model, label_names=label_names)
        student.train()

    checkpoints = training.checkpoint_dir(output_dir)
    started = time.perf_counter()
    trainer = _train(
        student,
        train,
        task,
        settings,
        train_settings,
        pad_id,
        teacher_out,
        matching,
        checkpoints,
        teacher_lm.device,
        resume=resume,
        progress=progress,
        label="distill",
    )
    train_seconds = time.perf_counter() - started
    history = list(trainer.history)

    baseline_model, baseline_eval, baseline_log = None, None, None
    if initial_student is not None:
        baseline_model, baseline_log = _train_baseline(
            initial_student, train, task, settings, train_settings, pad_id, checkpoints, teacher_lm.device,
            resume=resume, progress=progress,
        )
    if not main:
        return None  # this process's part (training) is done
    student_eval = evaluate(student, val, task, pad_id, teacher=teacher_model, label_names=label_names)
    if baseline_model is not None:
        baseline_eval = evaluate(baseline_model, val, task, pad_id, teacher=teacher_model, label_names=label_names)

    timed = [teacher_model, student] + ([baseline_model] if baseline_model is not None else [])
    speeds = measure_speed(timed, val, task, pad_id)
    evals = {"teacher": teacher_eval, "student": student_eval, "baseline": baseline_eval}
    # Copies saved only to weigh them, beside the output (same disk); a killed run's go with the next run's sweep.
    work_name = output_dir.parent / f"{output_dir.name}.work"
    tempnames.sweep(work_name, journal=tempnames.journal_dir())
    with (
        training.atomic_output(output_dir, overwrite=overwrite) as staging,
        tempnames.scratch(work_name, journal=tempnames.journal_dir()) as work,
    ):
        student.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        models = _model_reports(
            teacher, teacher_lm, student_name, student, baseline_model, evals, speeds, staging, Path(work)
        )
        result = DistillResult(
            output_dir=str(output_dir),
            report_path=str(output_dir / "report.json"),
            task=task,
            teacher=teacher,
            student=student_name,
            kept_layers=kept,
            train_examples=len(train),
            validation_examples=len(val),
            steps=trainer.state.global_step,
            resumed_from_step=trainer.resumed_from_step,
            first_loss=round(history[0], 6) if history else float("nan"),
            last_loss=round(history[-1], 6) if history else float("nan"),
            kl_before=round_metric(before["kl_to_teacher"]) or 0.0,
            kl_after=round_metric(student_eval["kl_to_teacher"]) or 0.0,
            train_seconds=round(train_seconds, 2),
            teacher_cache=cache_state,
            models=models,
            summary=summarize(models, task),
            settings={**asdict(settings), **asdict(train_settings)},
            loss_history=[round(x, 6) for x in history],
            processes=int(trainer.args.world_size),
            pruning=_pruning_summary(student),
            log=trainer.progress.history,
            baseline_log=baseline_log,
        )
        from llmkit.output import to_record

        report = to_record(result)
        training.write_report(staging, report)
        from llmkit.plot import missing_note, training_pictures

        training_pictures(staging, report, output_dir.name)  # curves.png: loss, its KD/hard parts, learning rate
        if missing_note():
            log(f"Note: {missing_note()}.")
    shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: nothing left to resume
    return result


# --- the steps of distill() ---------------------------------------------------------------------------------


def _load_teacher(
    teacher: str,
    task: str,
    device: str,
    model_kwargs: dict[str, Any] | None,
    load_options: dict[str, Any] | None = None,
) -> tuple[Any, list[str]]:
    """Step 1: the teacher, checked to carry a trained head for `task`, with a pad token, and its label names
    (classification; else [])."""
    from llmkit.loading import load
    from llmkit.tasks import load_task

    teacher_lm = load(
        teacher, load_task(task), device=device, dtype="float32", model_kwargs=model_kwargs, **(load_options or {})
    )
    teacher_model, tokenizer = teacher_lm.model, teacher_lm.tokenizer
    _check_teacher_head(teacher, teacher_model.config, task)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # causal LMs often ship without a pad token
    label_names = (
        [str(teacher_model.config.id2label[i]) for i in range(teacher_model.config.num_labels)]
        if task == "classification"
        else []
    )
    return teacher_lm, label_names


def _make_student(
    settings: DistillSettings,
    teacher_model: Any,
    tokenizer: Any,
    task: str,
    device: str,
    model_kwargs: dict[str, Any] | None,
    log: Callable[[str], None],
    load_options: dict[str, Any] | None = None,
    calibration: Sequence[str] = (),
) -> tuple[Any, str, list[int] | None]:
    """Step 2: the student (a given model checked for compatibility, or the teacher with layers dropped),
    then width-pruned with --prune-ffn/--prune-heads (importance measured on `calibration` texts).

    Returns:
        (student, its name for the report, the teacher layers kept or None).
    """
    student, name, kept = _student_before_pruning(
        settings, teacher_model, tokenizer, task, device, model_kwargs, log, load_options
    )
    if settings.prune_ffn is None and settings.prune_heads is None:
        return student, name, kept
    from llmkit.pruning import DEFAULT_CALIBRATION_TEXTS, prune

    texts = [t for t in calibration if t.strip()][:DEFAULT_CALIBRATION_TEXTS]
    result = prune(
        student,
        tokenizer,
        texts,
        ffn_keep=None if settings.prune_ffn is None else 1.0 - settings.prune_ffn,
        heads_keep=None if settings.prune_heads is None else 1.0 - settings.prune_heads,
    )
    config = student.config
    parts = []
    if result.ffn_kept is not None:
        parts.append(f"FFN {config.intermediate_size} of {teacher_model.config.intermediate_size} neurons")
    if result.heads_kept is not None:
        parts.append(f"{config.num_attention_heads} of {teacher_model.config.num_attention_heads} heads")
    log(
        f"Student pruned by activation importance on {result.calibration_texts} training texts: "
        f"{', '.join(parts)} per layer; {result.parameters_before:,} -> {result.parameters_after:,} parameters."
    )
    return student, f"{name}, {', '.join(parts)}", kept


def _pruning_summary(student: Any) -> dict[str, Any] | None:
    """The report's view of config.llmkit_pruning: what was kept, without the per-layer index lists."""
    record = getattr(student.config, "llmkit_pruning", None)
    if not record:
        return None
    return {k: ({kk: vv for kk, vv in v.items() if kk != "kept"} if isinstance(v, dict) else v)
            for k, v in record.items()}


def _student_before_pruning(
    settings: DistillSettings,
    teacher_model: Any,
    tokenizer: Any,
    task: str,
    device: str,
    model_kwargs: dict[str, Any] | None,
    log: Callable[[str], None],
    load_options: dict[str, Any] | None = None,
) -> tuple[Any, str, list[int] | None]:
    from llmkit.loading import load
    from llmkit.student import check_compatible, drop_layers
    from llmkit.tasks import load_task

    if settings.student is not None:
        student_lm = load(
            settings.student, load_task(task), device=device, dtype="float32", model_kwargs=model_kwargs,
            **(load_options or {}),
        )
        check_compatible(teacher_model, tokenizer, student_lm.model, student_lm.tokenizer, task)
        return student_lm.model, settings.student, None
    total = teacher_model.config.num_hidden_layers
    width_only = settings.prune_ffn is not None or settings.prune_heads is not None
    default = total if width_only else max(1, total // 2)
    n = settings.student_layers if settings.student_layers is not None else default
    student, kept = drop_layers(teacher_model, n)
    log(f"Student: keeps teacher layers {kept} of 0..{total - 1}, initialised from the teacher's weights.")
    return student, f"teacher layers {kept} of {total}", kept


def _matching(settings: DistillSettings, teacher_model: Any, student: Any) -> Matching:
    """Step 3: what to match besides the logits (hidden states through learned projections, attention maps)."""
    import torch

    from llmkit.losses import hidden_layer_map

    t_layers, s_layers = teacher_model.config.num_hidden_layers, student.config.num_hidden_layers
    matching = Matching()
    if settings.hidden_weight > 0 or settings.attention_weight > 0:
        if s_layers > t_layers:
            raise UsageError("--hidden-weight/--attention-weight need a student with no more layers than the teacher")
        layer_map = hidden_layer_map(t_layers, s_layers)
        if settings.hidden_weight > 0:
            matching.hidden_map = layer_map
            t_width, s_width = teacher_model.config.hidden_size, student.config.hidden_size
            if t_width != s_width:  # a learned projection maps the student's width onto the teacher's
                matching.projections = torch.nn.ModuleList([torch.nn.Linear(s_width, t_width) for _ in layer_map]).to(
                    student.device
                )
        if settings.attention_weight > 0:
            matching.attention_map = [m - 1 for m in layer_map[1:]]
    return matching


def _teacher_outputs(
    settings: DistillSettings,
    teacher_lm: Any,
    task: str,
    matching: Matching,
    train: Any,
    pad_id: int,
    log: Callable[[str], None],
) -> tuple[TeacherOutputs, str]:
    """Step 4: the teacher's outputs on the training data, computed live or through the on-disk cache.

    Returns:
        (TeacherOutputs, cache state "off" | "hit" | "filled").
    """
    from llmkit import teacher_cache

    teacher_model = teacher_lm.model
    if not settings.cache_teacher:
        return TeacherOutputs(teacher_model, task, matching), "off"
    live = TeacherOutputs(teacher_model, task, matching)
    extras = {"hidden": matching.hidden_map, "attention": matching.attention_map}
    fingerprint = teacher_cache.teacher_fingerprint(teacher_lm.source.location)
    key = teacher_cache.cache_key(fingerprint, task, train, extras)
    path = teacher_cache.cache_path(key)
    width = (
        teacher_model.config.num_labels
        if task == "classification"
        else teacher_model.get_output_embeddings().weight.shape[0]
    )
    mean_len = sum(len(e["input_ids"]) for e in train) / len(train)
    estimate = teacher_cache.estimate_bytes(len(train), mean_len, width, task)
    if estimate > CACHE_WARN_BYTES and not path.exists():
        from llmkit.console import warn

        warn(f"the teacher cache will take about {estimate / 1024**3:.1f} GiB in {path.parent}")

    def run_teacher(ids: list[int]) -> list[dict[str, Any]]:
        batch = collate([train[i] for i in ids], task, pad_id)
        return live.per_example(batch["input_ids"], batch["attention_mask"])

    cached, hit = teacher_cache.load_or_fill(key, len(train), run_teacher)
    log(f"Teacher outputs {'read from' if hit else 'stored in'} {path}.")
    return TeacherOutputs(teacher_model, task, matching, cached), "hit" if hit else "filled"


def _train_baseline(
    initial_student: Any,
    train: Any,
    task: str,
    settings: DistillSettings,
    train_settings: Any,
    pad_id: int,
    checkpoints: Path,
    device: Any,
    *,
    resume: bool,
    progress: bool,
) -> Any:
    """Step 5 (--baseline): the same student, data and schedule, trained on labels alone (alpha 1, no teacher).

    Returns (the trained model, its logged training records). Its tracker run is the student's run name plus
    `-baseline`, in the same log folder.
    """
    from llmkit import training

    initial_student.train()
    name = train_settings.run_name or training.run_name_for(checkpoints)
    trainer = _train(
        initial_student,
        train,
        task,
        replace(settings, alpha=1.0),
        replace(train_settings, run_name=f"{name}-baseline"),
        pad_id,
        None,
        Matching(),
        training.checkpoint_dir(checkpoints / "baseline"),
        device,
        resume=resume,
        progress=progress,
        label="baseline",
        log_folder=tracking.log_folder(checkpoints),
    )
    return initial_student, trainer.progress.history


def _model_reports(
    teacher: str,
    teacher_lm: Any,
    student_name: str,
    student: Any,
    baseline_model: Any,
    evals: dict[str, Any],
    speeds: list[tuple[float, float]],
    staging: Path,
    work: Path,
) -> list[ModelReport]:
    """Step 6: teacher, student (and baseline) side by side; sizes measured on their saved weights."""
    from llmkit.student import parameter_count

    def report(role: str, name: str, model: Any, folder: Path, speed: tuple[float, float]) -> ModelReport:
        ev = evals[role]
        return ModelReport(
            role=role,
            model=name,
            layers=getattr(model.config, "num_hidden_layers", None),
            parameters=parameter_count(model),
            size_bytes=weights_size(folder),
            latency_ms=round(speed[0], 3),
            throughput=round(speed[1], 2),
            accuracy=round_metric(ev["accuracy"]),
            macro_f1=round_metric(ev["macro_f1"]),
            perplexity=round_metric(ev["perplexity"]),
            kl_to_teacher=0.0 if role == "teacher" else round_metric(ev["kl_to_teacher"]),
        )

    teacher_folder = Path(teacher_lm.source.location)
    if teacher_lm.source.kind != "dir":  # a GGUF/hub teacher: measure what it weighs as safetensors
        teacher_folder = work / "teacher"
        teacher_lm.model.save_pretrained(str(teacher_folder))
    models = [
        report("teacher", teacher, teacher_lm.model, teacher_folder, speeds[0]),
        report("student", student_name, student, staging, speeds[1]),
    ]
    if baseline_model is not None and evals.get("baseline") is not None:
        baseline_model.save_pretrained(str(work / "baseline"))
        models.append(
            report("baseline", f"{student_name}, trained without the teacher", baseline_model, work / "baseline",
                   speeds[2])
        )
    return models


def summarize(models: list[ModelReport], task: str) -> dict[str, float | None]:
    """The headline numbers: the student's quality as a share of the teacher's, its speed-up and size, and
    the gain over the baseline (student trained without the teacher) when there is one."""
    by_role = {m.role: m for m in models}
    teacher, student, baseline = by_role["teacher"], by_role["student"], by_role.get("baseline")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 4) if a is not None and b else None

    out: dict[str, float | None] = {
        "speedup": ratio(teacher.latency_ms, student.latency_ms),
        "throughput_ratio": ratio(student.throughput, teacher.throughput),
        "size_ratio": ratio(student.size_bytes, teacher.size_bytes),
        "parameter_ratio": ratio(student.parameters, teacher.parameters),
    }
    if task == "classification":
        out["accuracy_share"] = ratio(student.accuracy, teacher.accuracy)
        out["macro_f1_share"] = ratio(student.macro_f1, teacher.macro_f1)
        if baseline is not None and student.accuracy is not None and baseline.accuracy is not None:
            out["accuracy_gain_over_baseline"] = round(student.accuracy - baseline.accuracy, 4)
    else:
        out["perplexity_ratio"] = ratio(student.perplexity, teacher.perplexity)
        if baseline is not None and student.perplexity is not None and baseline.perplexity is not None:
            out["perplexity_gain_over_baseline"] = round(baseline.perplexity - student.perplexity, 4)
    return out


def text_lines(result: DistillResult) -> str:
    """`--format text`: one tab-separated line per model (role, layers, parameters, latency ms, quality)."""
    lines = []
    for m in result.models:
        quality = m.accuracy if result.task == "classification" else m.perplexity
        lines.append(f"{m.role}\t{m.layers}\t{m.parameters}\t{m.latency_ms}\t{quality}")
    return "\n".join(lines)
