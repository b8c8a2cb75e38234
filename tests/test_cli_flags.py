"""What the shared flags do, not only that they exist: each test here fails if its flag does nothing.

test_cli_layout.py checks that every command spells the flags alike; these run them: --text-column and its old
spelling --field, --label-column and --label-field, distill's three loading flags reaching the loading calls,
classify --output tables read back, gold label ids mapped in the model's order, the error boundary's unexpected-
exception path, and the umask on output folders.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmkit.cli import app
from tests.helpers import invoke, json_lines

DATA = Path(__file__).parent / "data" / "sentiment.csv"
TEXTS = ["i loved it", "terrible film , never again", "it was fine", "great acting"]


def _invoke_env(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(app, args, env=env)


# --- --text-column / --field, --label-column / --label-field --------------------------------------------------


def test_text_column_and_its_old_spelling_pick_the_field(tiny_mlm: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 7, "sentence": "the [MASK] sat ."}) + "\n")
    base = ["fill-mask", "-m", str(tiny_mlm), "-i", str(source), "--json"]
    missing = invoke(base)
    assert missing.exit_code != 0 and "'text'" in missing.stderr  # without the flag the default column is missing
    new = invoke([*base, "--text-column", "sentence"])
    old = invoke([*base, "--field", "sentence"])
    assert new.exit_code == 0, new.stderr
    (record,) = json_lines(new.stdout)
    assert record["text"] == "the [MASK] sat ." and record["id"] == 7
    assert json_lines(old.stdout) == json_lines(new.stdout)


def test_generate_reads_the_text_column(tiny_causal_lm: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 3, "prompt": "hello there"}) + "\n")
    result = invoke(["generate", "-m", str(tiny_causal_lm), "-n", "2", "-i", str(source), "--text-column", "prompt",
                     "--json"])
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["prompt"] == "hello there" and record["id"] == 3


def test_generate_reads_the_text_column_of_json_lines_on_stdin(tiny_causal_lm: Path) -> None:
    # Piped JSON lines were once read as one prompt per line, braces and all, with --text-column ignored.
    result = invoke(["generate", "-m", str(tiny_causal_lm), "-n", "2", "--text-column", "prompt", "--json"],
                    input=json.dumps({"id": 3, "prompt": "hello there"}) + "\n")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["prompt"] == "hello there" and record["id"] == 3


def test_a_text_column_plain_stdin_lacks_is_exit_2(tiny_causal_lm: Path) -> None:
    result = invoke(["generate", "-m", str(tiny_causal_lm), "-n", "2", "--text-column", "prompt"], input="hello\n")
    assert result.exit_code == 2
    assert "Error: --text-column 'prompt': stdin is neither JSON lines with that field" in result.stderr


@pytest.mark.parametrize("flag", ["--label-column", "--label-field"])
def test_quantize_reads_the_gold_column_under_both_spellings(tiny_classifier: Path, tmp_path: Path, flag: str) -> None:
    data = tmp_path / "eval.csv"
    data.write_text("sentence,gold\nthe dog .,maybe\n")
    args = ["quantize", "-m", str(tiny_classifier), "--method", "dynamic-int8", "--eval-data", str(data),
            "--text-column", "sentence", "-o", str(tmp_path / "out")]
    result = invoke([*args, flag, "gold"])
    # The gold column was read: its label is checked against the model's labels (exit 2 naming it).
    assert result.exit_code == 2 and "label 'maybe' is not one of the model's labels" in result.stderr
    assert not (tmp_path / "out").exists()


# --- distill: --revision, --allow-pickle, --trust-remote-code reach the loading calls --------------------------------


def test_distill_refuses_a_pickle_teacher_unless_allowed(tiny_classifier: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    teacher = tmp_path / "pickle-teacher"
    shutil.copytree(tiny_classifier, teacher)
    torch.save(load_file(str(teacher / "model.safetensors")), teacher / "pytorch_model.bin")
    (teacher / "model.safetensors").unlink()
    base = ["distill", str(DATA), "--teacher", str(teacher), "-o", str(tmp_path / "out"), "--task", "classification",
            "--student", str(tmp_path / "no-such-student")]
    refused = invoke(base)
    assert refused.exit_code == 2 and "--allow-pickle" in refused.stderr
    # Allowed, the teacher loads and the run gets as far as the (missing) student.
    allowed = invoke([*base, "--allow-pickle"])
    assert allowed.exit_code == 3 and "no-such-student" in allowed.stderr, allowed.stderr
    assert "--allow-pickle" not in allowed.stderr


def test_distill_passes_revision_pickle_and_remote_code_to_loading(
    tiny_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmkit.loading
    from llmkit.errors import UsageError

    seen: list[tuple[str, dict[str, Any]]] = []

    def spy(name: str) -> Any:
        def record(_spec: str, *_args: Any, **kwargs: Any) -> None:
            seen.append((name, kwargs))
            raise UsageError(f"stopped at {name}")

        return record

    # Spies on the loading calls only: what is tested is that distill hands the flags on.
    monkeypatch.setattr(llmkit.loading, "read_config", spy("read_config"))
    monkeypatch.setattr(llmkit.loading, "load", spy("load"))
    flags = ["--revision", "v2", "--allow-pickle", "--trust-remote-code"]
    base = ["distill", str(DATA), "--teacher", str(tiny_classifier), "-o", str(tmp_path / "out"), *flags]
    assert invoke(base).exit_code == 2  # task auto: the teacher's config is read first
    assert invoke([*base, "--task", "classification"]).exit_code == 2  # then the teacher itself is loaded
    (first, config_kwargs), (second, load_kwargs) = seen
    assert (first, second) == ("read_config", "load")
    assert config_kwargs["revision"] == "v2" and config_kwargs["trust_remote_code"] is True
    assert {k: load_kwargs.get(k) for k in ("revision", "allow_pickle", "trust_remote_code")} == {
        "revision": "v2", "allow_pickle": True, "trust_remote_code": True,
    }


# --- classify tables ----------------------------------------------------------------------------------------------


def _table(path: Path, rows: list[dict[str, str]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    return path


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return json_lines(path.read_text())
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_classify_output_round_trips(tiny_classifier: Path, tmp_path: Path, suffix: str) -> None:
    rows = [{"id": str(i), "review": t} for i, t in enumerate(TEXTS)]
    source = _table(tmp_path / f"in{suffix}", rows)
    out = tmp_path / f"out{suffix}"
    result = invoke(["classify", "-m", str(tiny_classifier), "-i", str(source), "--text-column", "review",
                     "--all-scores", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    expected = json_lines(invoke(["classify", "-m", str(tiny_classifier), "--all-scores", "--json", *TEXTS]).stdout)
    written = _read(out)
    assert list(written[0]) == ["id", "review", "prediction", "prediction_score", "score_negative",
                                "score_positive", "error"]
    assert [str(r["id"]) for r in written] == ["0", "1", "2", "3"] and [r["review"] for r in written] == TEXTS
    assert [r["prediction"] for r in written] == [e["label"] for e in expected]
    for row, want in zip(written, expected, strict=True):
        scores = {s["label"]: s["score"] for s in want["scores"]}
        assert float(row["score_positive"]) == pytest.approx(scores["positive"], abs=1e-6)
        assert float(row["score_negative"]) == pytest.approx(scores["negative"], abs=1e-6)
        assert row["error"] in ("", None)


def test_multi_label_active_column_survives_an_empty_first_row(tiny_multilabel: Path, tmp_path: Path) -> None:
    source = _table(tmp_path / "in.csv", [{"text": ""}, {"text": "a song"}, {"text": "a match"}])
    out = tmp_path / "out.csv"
    result = invoke(["classify", "-m", str(tiny_multilabel), "-i", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    written = _read(out)
    assert list(written[0]) == ["text", "prediction", "prediction_score", "active_labels", "error"]
    assert written[0]["error"] == "empty input"
    assert all(r["prediction"] in ("sports", "politics", "music") for r in written[1:])


def test_single_label_nli_keeps_its_active_column(tiny_nli: Path, tmp_path: Path) -> None:
    # One label on an NLI model is scored on its own (entailment vs contradiction), so each row says whether it
    # is active; the table must keep that column although --multi-label was not given.
    source = _table(tmp_path / "in.csv", [{"text": ""}, {"text": "the match went to penalties"}])
    out = tmp_path / "out.csv"
    result = invoke(["classify", "-m", str(tiny_nli), "--labels", "sports", "-i", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    written = _read(out)
    assert list(written[0]) == ["text", "prediction", "prediction_score", "active_labels", "error"]
    score = float(written[1]["prediction_score"])
    assert written[1]["active_labels"] == ("sports" if score >= 0.5 else "")


def test_evaluate_maps_gold_label_ids_in_the_model_order(tiny_classifier: Path, tmp_path: Path) -> None:
    import torch

    from llmkit.loading import load

    # A classifier that is sure of label id 1 ("positive"): each result's scores, best first, are then the
    # reverse of the id order, so ids mapped through a result's scores instead of id2label come out wrong.
    lm = load(str(tiny_classifier), "sequence-classification", device="cpu", dtype="float32")
    with torch.no_grad():
        lm.model.classifier.weight.zero_()
        lm.model.classifier.bias.copy_(torch.tensor([0.0, 5.0]))
    model = tmp_path / "sure-positive"
    lm.model.save_pretrained(str(model))
    lm.tokenizer.save_pretrained(str(model))
    assert lm.model.config.id2label[1] == "positive"
    source = _table(tmp_path / "gold.csv", [{"review": t, "y": "1"} for t in TEXTS])  # gold: label id 1
    result = invoke(["classify", "-m", str(model), "-i", str(source), "--text-column", "review",
                     "--label-column", "y", "--evaluate", "--json"])
    assert result.exit_code == 0, result.stderr
    (report,) = json_lines(result.stdout)
    assert report["count"] == len(TEXTS) and report["labels"] == ["positive"] and report["accuracy"] == 1.0


# --- the error boundary: unexpected exceptions ---------------------------------------------------------------------


def test_unexpected_exception_is_one_line_exit_1_and_debug_adds_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmkit.classify

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(llmkit.classify, "parse_labels", broken)
    args = ["classify", "--labels", "a,b", "x"]
    plain = _invoke_env(args, {"LLMKIT_DEBUG": "0"})
    assert plain.exit_code == 1
    # a bug said as one: where it happened, its words, how to report it; no exception class posing as the message
    assert re.fullmatch(
        r"Error: llmkit \S+ stopped on an unexpected failure in test_cli_flags\.py:\d+: boom\. "
        r"This is a bug: run the command again with LLMKIT_DEBUG=1 and report it with the traceback",
        plain.stderr.strip(),
    ), plain.stderr
    assert "RuntimeError" not in plain.stderr
    debug = _invoke_env(args, {"LLMKIT_DEBUG": "1"})
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr and "in broken" in debug.stderr


# --- permissions of output folders (finetune and distill write theirs through training.atomic_output) ----------


def test_output_folders_get_the_umask_not_mkdtemp_0700(tmp_path: Path) -> None:
    from llmkit import training

    old = os.umask(0o022)
    try:
        with training.atomic_output(tmp_path / "model") as staging:
            (staging / "weights").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "model" / "weights").stat().st_mode) == 0o644


def test_python_dash_m_llmkit_is_the_same_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "llmkit", "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("llmkit ")
