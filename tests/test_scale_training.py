"""finetune and distill on 2 CPU processes (`accelerate launch --multi_gpu`, gloo) against 1 process.

Same data, same global batch (1 x 8 against 2 x 4), dropout off so the processes draw nothing of their own:
the logged losses and final weights must match the 1-process run, the main process alone reports, the report
says 2 processes ran, and a run interrupted at a checkpoint resumes under DDP to the same end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmkit.cli import app

ROOT = Path(__file__).resolve().parent.parent
SENTIMENT = Path(__file__).parent / "data" / "sentiment.csv"
LAUNCHER = Path(sys.executable).parent / "accelerate"
pytestmark = pytest.mark.skipif(
    not LAUNCHER.exists() and shutil.which("accelerate") is None, reason="accelerate CLI not installed"
)

# 40 rows, validation 0.2 -> 32 training rows: 4 full global batches of 8, so no uneven last batch.
COMMON = ["--validation-split", "0.2", "--seed", "0", "--no-group-by-length", "--lr", "0.001", "--json"]

CRASH_HOOK = '''
import os
_step = os.environ.get("LLMKIT_TEST_INTERRUPT_AT_STEP")
if _step:
    import llmkit.training as _training

    def _interrupt(self, args, state, control, **kwargs):
        if state.global_step == int(_step):
            raise KeyboardInterrupt  # what Ctrl-C does to every process right after a checkpoint

    _training._ProgressMixin.on_save = _interrupt
'''


def _no_dropout(path: Path, head: str) -> Path:
    import torch
    from tiny import _bert_config, _save, bert_tokenizer
    from transformers import BertForSequenceClassification, BertModel

    tokenizer = bert_tokenizer()
    torch.manual_seed(0)
    extra = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if head == "classifier":
        config = _bert_config(tokenizer, num_labels=2, id2label={0: "negative", 1: "positive"},
                              label2id={"negative": 0, "positive": 1}, **extra)
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(_bert_config(tokenizer, **extra))
    return _save(model, tokenizer, path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scale") / "d.csv"
    path.write_text("\n".join(SENTIMENT.read_text().splitlines()[:41]) + "\n")
    return path


def _launch(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    cmd = [str(LAUNCHER if LAUNCHER.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "llmkit", *args]
    full_env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1", **env)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r.get("event") == "log" and "loss" in r}


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_finetune_on_two_processes_equals_one_and_resumes(data: Path, tmp_path: Path) -> None:
    model = _no_dropout(tmp_path / "enc", "encoder")
    args = ["finetune", str(data), "-m", str(model), "--max-steps", "4", "--save-steps", "2", *COMMON]

    one = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "one"), "--batch-size", "8"])
    assert one.exit_code == 0, one.stderr
    single = _records(one.stdout)

    out = tmp_path / "two"
    two_args = [*args, "-o", str(out), "--batch-size", "4", "--report-to", "tensorboard"]
    crashed = _launch(two_args, tmp_path, LLMKIT_TEST_INTERRUPT_AT_STEP="2")
    assert crashed.returncode != 0
    assert not out.exists()  # nothing that looks finished
    checkpoints = sorted(p.name for p in (tmp_path / "two.checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2", "runs"]  # the tracker logs stay with the checkpoint for --resume

    resumed = _launch([*two_args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = [r for r in _records(resumed.stdout) if r.get("event") == "result"]
    assert len(results) == 1  # the main process alone reports
    result = results[0]
    assert result["processes"] == 2 and result["resumed_from_step"] == 2 and result["steps"] == 4
    assert json.loads((out / "report.json").read_text())["result"]["processes"] == 2

    # The losses the 2-process runs logged (steps 1-2 before the interruption, 3-4 after) are the 1-process ones.
    expected = _losses(single)
    got = {**_losses(_records(crashed.stdout)), **_losses(_records(resumed.stdout))}
    assert sorted(got) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        assert got[step] == pytest.approx(expected[step], abs=1e-4), step
    assert 0.6 < got[1] < 0.8  # about ln 2 for 2 balanced labels: not doubled
    metrics = result["metrics"]
    assert metrics["eval_loss"] == pytest.approx(next(r for r in single if r.get("event") == "result")["metrics"]
                                                  ["eval_loss"], abs=1e-4)
    a, b = _tensors(tmp_path / "one"), _tensors(out)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert not (tmp_path / "two.checkpoints").exists()
    # The same settings reached both ranks; the main one alone reported: one event file per launch, with the
    # losses of steps 1-2 (before the interruption) and 3-4 (resumed), each once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = out / "runs" / "two"
    assert len(list(board.glob("events.out.tfevents.*"))) == 2
    accumulator = EventAccumulator(str(board))
    accumulator.Reload()
    events = accumulator.Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert {e.step: e.value for e in events} == pytest.approx(got, abs=1e-5)


def test_gradient_accumulation_logs_the_same_loss_as_one_big_batch(data: Path, tmp_path: Path) -> None:
    model = _no_dropout(tmp_path / "enc", "encoder")
    args = ["finetune", str(data), "-m", str(model), "--max-steps", "2", *COMMON]
    big = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "big"), "--batch-size", "8"])
    accumulated = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "ga"), "--batch-size", "4",
                                           "--gradient-accumulation", "2"])
    assert big.exit_code == 0 and accumulated.exit_code == 0, big.stderr + accumulated.stderr
    expected, got = _losses(_records(big.stdout)), _losses(_records(accumulated.stdout))
    assert got.keys() == expected.keys() == {1, 2}
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-4)  # was 2x before the fix


def test_distill_on_two_processes_equals_one(data: Path, tmp_path: Path) -> None:
    teacher = _no_dropout(tmp_path / "teacher", "classifier")
    config = tmp_path / "distill.toml"
    config.write_text("group-by-length = false\n")  # distill has no flag for it; the settings file has
    args = ["distill", str(data), "--teacher", str(teacher), "--student-layers", "1", "--max-steps", "4",
            "--validation-split", "0.2", "--seed", "0", "--config", str(config), "--json"]
    one = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "one"), "--batch-size", "8"])
    assert one.exit_code == 0, one.stderr
    single = _records(one.stdout)[0]

    two = _launch([*args, "-o", str(tmp_path / "two"), "--batch-size", "4"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    records = _records(two.stdout)
    assert len(records) == 1  # one report, from the main process
    assert two.stderr.count("training and") == 1  # progress lines from the main process only
    result = records[0]
    assert result["processes"] == 2 and single["processes"] == 1
    assert result["steps"] == single["steps"] == 4
    assert result["loss_history"] == pytest.approx(single["loss_history"], abs=1e-4)
    assert json.loads((tmp_path / "two" / "report.json").read_text())["processes"] == 2
