"""One metrics module: classification scores, regression scores, perplexity, and one report renderer.

Used by `classify --evaluate`, finetune/distill (Trainer metrics and the validation report) and quantize.

The macro-F1 rule (the one rule, scikit-learn's default): the labels scored are the UNION of the gold and the
predicted labels. A label that is neither gold nor predicted anywhere is left out (it would add an F1 of 0 for
a class nobody asked about); a label only predicted counts with recall 0 / precision 0 -> F1 0; a label only
gold counts with precision 0 (zero_division=0). So `macro_f1` equals
`sklearn.metrics.f1_score(gold, predicted, average="macro", zero_division=0)`.

Pure Python and numpy-free at import: importing it never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from llmkit.errors import DataError


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall and F1 of one label, and its support (gold examples of it)."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    """Scores of predictions against gold labels.

    Attributes:
        count: examples scored (inputs with no prediction are left out and counted in `skipped`).
        accuracy: share of exact matches.
        macro_f1: unweighted mean F1 over `labels` (the union of gold and predicted labels; module docstring).
        per_class: precision/recall/F1/support per label, in `labels` order.
        labels: the label order of `confusion`.
        confusion: confusion[i][j] = examples with gold labels[i] predicted as labels[j].
        skipped: inputs without a prediction (empty) or without a gold label.
    """

    count: int
    accuracy: float
    macro_f1: float
    per_class: list[ClassMetrics]
    labels: list[str]
    confusion: list[list[int]]
    skipped: int = 0

    def as_report(self) -> dict[str, Any]:
        """The report dict finetune/distill write into report.json (per_class keyed by label)."""
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": {
                c.label: {"precision": c.precision, "recall": c.recall, "f1": c.f1, "support": c.support}
                for c in self.per_class
            },
            "confusion_matrix": self.confusion,
            "labels": list(self.labels),
        }


def evaluate(
    gold: Sequence[Hashable], predicted: Sequence[Hashable], *, skipped: int = 0, order: Sequence[Hashable] = ()
) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    Args:
        gold: true labels (strings or class ids).
        predicted: predicted labels, aligned with `gold`.
        skipped: how many inputs were left out (reported, not scored).
        order: the preferred label order (e.g. the model's id order); labels of the union not in it follow,
            sorted. Without it the union is sorted.

    Returns:
        An `Evaluation`; labels are reported as strings.

    Raises:
        ValueError: gold and predicted differ in length. DataError: nothing to evaluate.
    """
    if len(gold) != len(predicted):
        raise ValueError("gold and predicted differ in length")
    if not gold:
        raise DataError("nothing to evaluate: no input had both a prediction and a gold label")
    union = set(gold) | set(predicted)
    labels = [label for label in order if label in union]
    labels += sorted(union - set(labels), key=_sort_key)
    where = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        confusion[where[g]][where[p]] += 1
    per_class = []
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted_n = sum(row[i] for row in confusion)
        support = sum(confusion[i])
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(ClassMetrics(str(label), precision, recall, f1, support))
    correct = sum(confusion[i][i] for i in range(len(labels)))
    return Evaluation(
        count=len(gold),
        accuracy=correct / len(gold),
        macro_f1=sum(c.f1 for c in per_class) / len(per_class),
        per_class=per_class,
        labels=[str(label) for label in labels],
        confusion=confusion,
        skipped=skipped,
    )


def _sort_key(label: Hashable) -> tuple[int, float, str]:
    # numbers in numeric order ("2" before "10"), then text; mixed types never compare directly
    try:
        return (0, float(label), str(label))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, 0.0, str(label))


def accuracy(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Share of exact matches (0.0 for no examples)."""
    if len(gold) != len(predicted):
        raise ValueError("gold and predicted differ in length")
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold) if gold else 0.0


def macro_f1(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Macro-F1 over the union of gold and predicted labels (the module's one rule)."""
    return evaluate(gold, predicted).macro_f1


def classification_report(labels: Any, predictions: Any, names: Sequence[str]) -> dict[str, Any]:
    """`evaluate` on class ids, reported with the model's label names (the finetune/distill report dict).

    Args:
        labels, predictions: sequences of class ids (same length); ids outside `names` are left out.
        names: class names, index = id; also the label order.

    Returns:
        {"accuracy", "macro_f1", "per_class": {name: {precision, recall, f1, support}},
         "confusion_matrix": rows = true class, columns = predicted class, "labels": names scored}
    """
    k = len(names)
    pairs = [(int(y), int(p)) for y, p in zip(_flat(labels), _flat(predictions), strict=True)
             if 0 <= int(y) < k and 0 <= int(p) < k]
    if not pairs:
        return {"accuracy": 0.0, "macro_f1": 0.0, "per_class": {}, "confusion_matrix": [], "labels": []}
    gold = [str(names[y]) for y, _ in pairs]
    predicted = [str(names[p]) for _, p in pairs]
    return evaluate(gold, predicted, order=[str(n) for n in names]).as_report()


def _flat(values: Any) -> list[Any]:
    if hasattr(values, "reshape"):
        values = values.reshape(-1)
    if hasattr(values, "tolist"):
        values = values.tolist()
    return list(values)


def regression_metrics(labels: Any, predictions: Any) -> dict[str, float]:
    """Mean squared error, mean absolute error and (when both vary) Pearson r."""
    y = [float(v) for v in _flat(labels)]
    p = [float(v) for v in _flat(predictions)]
    if len(y) != len(p):
        raise ValueError("labels and predictions differ in length")
    n = len(y)
    if n == 0:
        raise DataError("nothing to evaluate: no predictions")
    out = {"mse": sum((a - b) ** 2 for a, b in zip(y, p, strict=True)) / n,
           "mae": sum(abs(a - b) for a, b in zip(y, p, strict=True)) / n}
    my, mp = sum(y) / n, sum(p) / n
    sy = math.sqrt(sum((a - my) ** 2 for a in y))
    sp = math.sqrt(sum((b - mp) ** 2 for b in p))
    if n > 1 and sy > 0 and sp > 0:
        out["pearson"] = sum((a - my) * (b - mp) for a, b in zip(y, p, strict=True)) / (sy * sp)
    return out


def perplexity(loss: float | None) -> float | None:
    """exp(mean negative log-likelihood per token), capped so a diverged run gives a huge finite number
    rather than an overflow; None for a missing or non-finite loss."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 700.0))


def round_metric(value: Any) -> Any:
    """A float rounded to 6 places for reports (non-finite -> None, so JSON stays valid); others unchanged."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def report_renderable(report: Evaluation | dict[str, Any], title: str = "Validation report") -> Any:
    """The one terminal view of a classification report: headline, per-class table, confusion matrix.

    Args:
        report: an `Evaluation` (classify --evaluate) or its `as_report()` dict (finetune/distill report.json).
        title: the per-class table's title.

    Returns:
        A rich renderable (print it on stderr or stdout).
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if isinstance(report, Evaluation):
        head = (f"{report.count} examples · accuracy {report.accuracy:.4f} · macro-F1 {report.macro_f1:.4f}"
                + (f" · {report.skipped} skipped (empty or no gold label)" if report.skipped else ""))
        data = report.as_report()
    else:
        data = report
        head = f"accuracy {data.get('accuracy', 0):.4f} · macro-F1 {data.get('macro_f1', 0):.4f}"
    per_class = data.get("per_class") or {}
    table = Table(title=title, title_justify="left")
    for column in ("label", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, row in per_class.items():
        table.add_row(str(name), f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                      str(row["support"]))
    parts: list[Any] = [Text(head, style="bold"), table]
    matrix = data.get("confusion_matrix")
    if matrix:
        labels = data.get("labels") or list(per_class)
        cm = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
        cm.add_column("")
        for name in labels:
            cm.add_column(str(name), justify="right")
        for name, row in zip(labels, matrix, strict=False):
            cm.add_row(str(name), *[str(v) for v in row])
        parts.append(cm)
    return Group(*parts)
