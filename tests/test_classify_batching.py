"""classify's window encoding (one tokenizer call), direct padding, and the free-core thread choice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmkit import classify as cl
from llmkit import threads


def _runner(model: Path) -> cl._ClassifierRunner:
    from llmkit import loading

    lm = loading.load(str(model), "sequence-classification", device="cpu", dtype="float32")
    return cl._ClassifierRunner(lm, truncate=True, multi_label=None)


def test_window_encoding_matches_one_call_per_input(tiny_classifier: Path) -> None:
    runner = _runner(tiny_classifier)
    long = "word " * (runner.max_tokens + 20)
    items = [(0, "i loved it", None), (1, long, None), (2, "bad", None)]
    together = runner.encode_many(items)
    alone = [runner._encode_one(i, t, p) for i, t, p in items]
    assert together == alone
    assert [cut for _, cut in together] == [False, True, False]
    assert len(together[1][0]["input_ids"]) == runner.max_tokens


def test_window_encoding_of_pairs(tiny_nli: Path) -> None:
    runner = _runner(tiny_nli)
    items = [(0, "a cat sat", "This example is animals."), (1, "stocks fell", "This example is money.")]
    assert runner.encode_many(items) == [runner._encode_one(i, t, p) for i, t, p in items]


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch_matches_tokenizer_pad(tiny_nli: Path, side: str) -> None:
    runner = _runner(tiny_nli)
    runner.tok.padding_side = side
    features = [f for f, _ in runner.encode_many([(0, "a b c d e f", "x"), (1, "a", "y z"), (2, "q", "r")])]
    ours = cl.pad_batch(features, runner.tok)
    theirs = runner.tok.pad(features, return_tensors="pt")
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key].tolist() == theirs[key].tolist(), key


def test_free_cores() -> None:
    assert threads.free_cores(cpus=2, load=0.1) == 2
    assert threads.free_cores(cpus=2, load=0.8) == 1
    assert threads.free_cores(cpus=2, load=12.0) == 1
    assert threads.free_cores(cpus=16, load=5.2) == 11


def test_use_free_cores_respects_explicit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(threads.THREADS_ENV, "1")
        assert threads.use_free_cores() == 1
        monkeypatch.delenv(threads.THREADS_ENV)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert threads.use_free_cores() == 2  # the user's OMP setting (here: torch's 2) is left alone
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(threads, "free_cores", lambda: 1)
        assert threads.use_free_cores() == 1
    finally:
        torch.set_num_threads(before)


def test_busy_cores_sees_a_spinning_process_and_not_the_last_minute() -> None:
    """The free-core count follows what runs now, not the 1-minute load average (which still held the previous
    command's load and gave one thread on an idle machine)."""
    import subprocess
    import sys
    import time

    if threads.busy_cores(2) is None:
        pytest.skip("no /proc/stat here")
    cpus = os.cpu_count() or 1
    idle = min(threads.busy_cores(cpus, seconds=0.2) for _ in range(3))  # type: ignore[type-var]
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = max(threads.busy_cores(cpus, seconds=0.2) for _ in range(3))  # type: ignore[type-var]
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and idle is not None
    assert busy >= idle + 0.6  # one more core kept busy
