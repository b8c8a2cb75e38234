"""classify's window encoding (one tokenizer call), direct padding, and the free-core thread choice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmkit import classify as cl
from llmkit import threads
from llmkit.tokens import pad_batch


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
    ours = pad_batch(features, runner.tok)
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


def test_busy_cores_from_the_start_mark_leaves_out_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a start mark (what `llmkit` takes on entry) the window is the start-up: this process's own work in it
    is not load, another process's is, and no sleep is needed once the window is long enough."""
    import subprocess
    import sys
    import time

    if threads.busy_cores(2) is None:
        pytest.skip("no /proc/stat here")
    cpus = os.cpu_count() or 1
    monkeypatch.setattr(threads, "_mark", None)

    def spin_here(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    own = []
    for _ in range(3):
        threads.mark()
        spin_here(0.2)  # start-up work of this process: one core busy, but it is ours
        started = time.perf_counter()
        own.append(threads.busy_cores(cpus))
        assert time.perf_counter() - started < threads.SAMPLE_SECONDS  # the window was long enough: no sleep
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        other = []
        for _ in range(3):
            threads.mark()
            time.sleep(0.2)
            other.append(threads.busy_cores(cpus))
    finally:
        spinner.kill()
        spinner.wait()
    assert min(own) < 0.5  # type: ignore[type-var]  # our own spinning core is not counted
    assert max(other) >= min(own) + 0.6  # type: ignore[operator]  # another process's is
    # A stale mark is not used: this one's counters lie ahead of /proc/stat, so using it would give None.
    monkeypatch.setattr(threads, "_mark", (time.perf_counter() - threads.MARK_MAX_AGE - 1, 0.0, (10**15, 10**15)))
    assert threads.busy_cores(cpus) is not None


def test_onnx_classifier_takes_its_threads_from_the_same_rule(tiny_classifier: Path, monkeypatch) -> None:
    """LLMKIT_THREADS, then OMP_NUM_THREADS, then the free cores: how many batches the ONNX engine runs at once."""
    from llmkit.engines import onnx

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.cpu_threads() == 3
    monkeypatch.delenv(threads.THREADS_ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.cpu_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    assert threads.cpu_threads() == 2
    lm = onnx.load(str(tiny_classifier), "sequence-classification")
    assert lm.model.engine == "onnx" and lm.model.threads == 2
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    lm = onnx.load(str(tiny_classifier), "sequence-classification")
    assert lm.model.threads == 3
    assert len(list(cl.classify(["i loved it", "bad"], loaded=lm))) == 2
