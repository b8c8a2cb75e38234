"""llmkit.metrics against scikit-learn: one macro-F1 rule (union of gold and predicted labels) everywhere."""

from __future__ import annotations

import math
import random

import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

from llmkit import classify, metrics, training
from llmkit.errors import DataError


def _check_against_sklearn(gold: list[str], predicted: list[str]) -> None:
    ev = metrics.evaluate(gold, predicted)
    labels = sorted(set(gold) | set(predicted))
    assert ev.labels == labels
    assert ev.accuracy == pytest.approx(accuracy_score(gold, predicted))
    assert ev.macro_f1 == pytest.approx(f1_score(gold, predicted, average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    assert [c.precision for c in ev.per_class] == pytest.approx(list(p))
    assert [c.recall for c in ev.per_class] == pytest.approx(list(r))
    assert [c.f1 for c in ev.per_class] == pytest.approx(list(f))
    assert [c.support for c in ev.per_class] == list(s)
    assert ev.confusion == confusion_matrix(gold, predicted, labels=labels).tolist()


def test_hand_made_with_a_label_only_predicted_and_one_only_gold() -> None:
    gold = ["a", "a", "b", "b", "c"]
    predicted = ["a", "d", "b", "a", "a"]  # "d" never gold, "c" never predicted
    _check_against_sklearn(gold, predicted)
    ev = metrics.evaluate(gold, predicted)
    assert ev.macro_f1 == pytest.approx((0.4 + 2 / 3 + 0 + 0) / 4)  # a: P 1/3 R 1/2 -> .4; b: P 1 R .5 -> 2/3


@pytest.mark.parametrize("seed", range(6))
def test_random_predictions_match_sklearn(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"l{i}" for i in range(rng.randint(2, 7))]
    n = rng.randint(1, 60)
    gold = [rng.choice(names) for _ in range(n)]
    predicted = [rng.choice(names + ["other"]) for _ in range(n)]
    _check_against_sklearn(gold, predicted)


def test_classification_report_on_ids_uses_the_same_rule_as_classify_evaluate() -> None:
    names = ["neg", "neu", "pos"]  # "neu" is neither gold nor predicted: not scored by either
    gold_ids, pred_ids = [0, 0, 2, 2, 2], [0, 2, 2, 2, 0]
    report = training.classification_report(gold_ids, pred_ids, names)
    ev = classify.evaluate([names[i] for i in gold_ids], [names[i] for i in pred_ids])
    assert report["macro_f1"] == pytest.approx(ev.macro_f1)
    assert report["macro_f1"] == pytest.approx(f1_score(gold_ids, pred_ids, average="macro", zero_division=0))
    assert report["labels"] == ["neg", "pos"] and list(report["per_class"]) == ["neg", "pos"]
    assert report["confusion_matrix"] == [[1, 1], [1, 2]]


def test_classification_report_keeps_the_model_label_order() -> None:
    report = metrics.classification_report([2, 1, 0], [2, 1, 0], ["z", "b", "a"])
    assert report["labels"] == ["z", "b", "a"] and report["accuracy"] == 1.0


def test_numeric_labels_sort_numerically_and_empty_input_is_an_error() -> None:
    assert metrics.evaluate(["10", "2"], ["2", "10"]).labels == ["2", "10"]
    with pytest.raises(DataError):
        metrics.evaluate([], [])
    with pytest.raises(ValueError):
        metrics.evaluate(["a"], [])


def test_accuracy_and_macro_f1_helpers() -> None:
    assert metrics.accuracy(["a", "b"], ["a", "a"]) == 0.5
    assert metrics.macro_f1(["a", "b"], ["a", "a"]) == pytest.approx(f1_score(["a", "b"], ["a", "a"], average="macro", zero_division=0))


def test_regression_metrics_match_sklearn_and_numpy() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    y, p = rng.normal(size=50), rng.normal(size=50)
    out = metrics.regression_metrics(y, p)
    assert out["mse"] == pytest.approx(mean_squared_error(y, p))
    assert out["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert out["pearson"] == pytest.approx(float(np.corrcoef(y, p)[0, 1]))
    assert "pearson" not in metrics.regression_metrics([1.0, 1.0], [0.0, 2.0])  # constant gold: undefined


def test_perplexity_and_rounding() -> None:
    assert metrics.perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert metrics.perplexity(None) is None and metrics.perplexity(float("inf")) is None
    assert math.isfinite(metrics.perplexity(10_000.0) or 0)
    assert metrics.round_metric(0.1234567891) == 0.123457 and metrics.round_metric(float("nan")) is None
    assert metrics.round_metric(3) == 3


def test_one_renderer_for_both_report_shapes() -> None:
    from rich.console import Console

    ev = metrics.evaluate(["a", "b", "b"], ["a", "b", "a"], skipped=1)
    for report in (ev, ev.as_report()):
        console = Console(record=True, width=120)
        console.print(metrics.report_renderable(report))
        text = console.export_text()
        assert "macro-F1 0.6667" in text and "confusion" in text and "0.5000" in text
    console = Console(record=True, width=120)
    console.print(metrics.report_renderable(ev))
    text = console.export_text()
    assert "3 examples" in text and "1 skipped" in text


# --- moved from test_training.py with the code they test ---------------------------------------------------


def test_classification_report_hand_computed() -> None:
    # true:  a a a b b c ; predicted: a a b b c c
    report = metrics.classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert report["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert report["per_class"]["c"]["recall"] == 1.0
    f1_b, f1_c = 0.5, 2 * 0.5 * 1.0 / 1.5
    assert report["macro_f1"] == pytest.approx((0.8 + f1_b + f1_c) / 3)


def test_perplexity_and_regression_metrics() -> None:
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(float("nan")) is None
    m = metrics.regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert m["mse"] == pytest.approx(4 / 3)
    assert m["mae"] == pytest.approx(2 / 3)
