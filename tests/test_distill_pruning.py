"""`llmkit distill --prune-ffn/--prune-heads` on tiny checkpoints: the student is narrowed before training,
records what it kept, reloads, and runs under classify/generate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import tiny
import torch
from typer.testing import CliRunner

from llmkit.cli import app

DATA = Path(__file__).parent / "data" / "sentiment.csv"
FAST = ["--max-length", "16", "--batch-size", "8", "--seed", "1", "--device", "cpu", "--json"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tiny_classifier: Path) -> Path:
    from llmkit.loading import load

    lm = load(str(tiny_classifier), "sequence-classification", device="cpu", dtype="float32")
    with torch.no_grad():
        lm.model.classifier.weight.mul_(200.0)
    path = tmp_path_factory.mktemp("teacher") / "classifier"
    lm.model.save_pretrained(str(path))
    lm.tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:40]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_prune_ffn_with_fewer_layers(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    record = _json(_invoke(["distill", str(small_data), "--teacher", str(teacher), "-o", str(out),
                            "--student-layers", "1", "--prune-ffn", "0.5", "--max-steps", "3", "--baseline", *FAST]))
    half = tiny.INTERMEDIATE // 2
    assert record["kept_layers"] == [1] or record["kept_layers"] == [0]
    assert f"FFN {half} of {tiny.INTERMEDIATE} neurons" in record["student"]
    assert record["pruning"]["ffn"]["intermediate_size"] == [tiny.INTERMEDIATE, half]
    assert record["pruning"]["calibration"]["texts"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == half and config["num_hidden_layers"] == 1
    assert len(config["llmkit_pruning"]["ffn"]["kept"]) == 1 and len(config["llmkit_pruning"]["ffn"]["kept"][0]) == half
    teacher_report, student_report, baseline_report = record["models"]
    assert student_report["parameters"] < teacher_report["parameters"]
    assert baseline_report["parameters"] == student_report["parameters"]  # the baseline is the same pruned student

    result = _invoke(["classify", "--model", str(out), "a great film", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] in ("negative", "positive")


def test_prune_ffn_alone_keeps_every_layer(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    record = _json(_invoke(["distill", str(small_data), "--teacher", str(teacher), "-o", str(tmp_path / "w"),
                            "--prune-ffn", "0.75", "--max-steps", "2", *FAST]))
    assert record["kept_layers"] == list(range(tiny.LAYERS))
    assert record["pruning"]["ffn"]["intermediate_size"] == [tiny.INTERMEDIATE, tiny.INTERMEDIATE // 4]


def test_without_pruning_nothing_is_recorded(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    record = _json(_invoke(["distill", str(small_data), "--teacher", str(teacher), "-o", str(tmp_path / "p"),
                            "--student-layers", "1", "--max-steps", "1", *FAST]))
    assert record["pruning"] is None
    assert "llmkit_pruning" not in json.loads((tmp_path / "p" / "config.json").read_text())


def test_prune_heads_on_a_llama_student_generates(tiny_causal_lm: Path, tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"the {w} is a good {v} ." for w in ("dog", "cat", "bird") for v in ("movie", "book")) + "\n")
    out = tmp_path / "lm"
    record = _json(_invoke(["distill", str(text), "--teacher", str(tiny_causal_lm), "-o", str(out),
                            "--student-layers", "1", "--prune-heads", "0.5", "--prune-ffn", "0.5",
                            "--max-steps", "2", *FAST]))
    assert record["pruning"]["heads"]["num_attention_heads"] == [tiny.HEADS, tiny.HEADS // 2]
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (1, 1)
    assert config["head_dim"] == tiny.HIDDEN // tiny.HEADS
    gen = _invoke(["generate", "--model", str(out), "--raw", "--max-new-tokens", "3", "--json", "--device", "cpu",
                   "the dog"])
    assert gen.exit_code == 0, gen.output


@pytest.mark.parametrize(("args", "message"), [
    (["--prune-ffn", "1.0"], "--prune-ffn is the fraction to remove, in (0, 1)"),
    (["--prune-heads", "0"], "--prune-heads is the fraction to remove, in (0, 1)"),
    (["--prune-heads", "0.5"], "--prune-heads works on Llama-like models; BertForSequenceClassification"),
    (["--prune-heads", "0.5", "--attention-weight", "1"], "drop it with --prune-heads"),
])
def test_bad_pruning_settings(teacher: Path, small_data: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = _invoke(["distill", str(small_data), "--teacher", str(teacher), "-o", str(tmp_path / "s"),
                      "--max-steps", "1", *FAST, *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()
