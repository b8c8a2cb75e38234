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


class FakeMachine:
    """A clock, this process's CPU time and /proc/stat's jiffies that move only when the test says so: `others`
    cores kept busy by other processes, this process's own work added by `work()`. Sleeps advance the clock and
    are recorded, so a test sees whether busy_cores waited, and for how long."""

    def __init__(self, others: float = 0.0) -> None:
        self.cpus = os.cpu_count() or 1  # busy_cores scales by os.cpu_count(), as /proc/stat counts every CPU
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.others = others
        self.now, self.own, self.busy, self.total = 1000.0, 5.0, 10**6, 10**7
        self.sleeps: list[float] = []

    def advance(self, seconds: float, own_busy: float = 0.0) -> None:
        self.now += seconds
        self.own += seconds * own_busy
        self.busy += round(seconds * self.ticks * (self.others + own_busy))
        self.total += round(seconds * self.ticks * self.cpus)

    def work(self, seconds: float) -> None:
        """This process keeps one core busy for `seconds`."""
        self.advance(seconds, own_busy=1.0)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
        from types import SimpleNamespace

        clock = SimpleNamespace(perf_counter=lambda: self.now, process_time=lambda: self.own, sleep=self.sleep)
        monkeypatch.setattr(threads, "time", clock)
        monkeypatch.setattr(threads, "_cpu_times", lambda: (self.busy, self.total))
        monkeypatch.setattr(threads, "_mark", None)
        return self


def test_busy_cores_counts_what_runs_now_and_not_the_last_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """The free-core count follows what runs now, not the 1-minute load average (which still held the previous
    command's load and gave one thread on an idle machine)."""
    monkeypatch.setattr(os, "getloadavg", lambda: (12.0, 12.0, 12.0))  # a busy last minute, now over
    machine = FakeMachine(others=0.0).install(monkeypatch)
    assert threads.busy_cores(2) == 0.0
    assert machine.sleeps == [threads.SAMPLE_SECONDS]  # no start mark: it sampled a window of its own
    assert threads.free_cores(cpus=2) == 2
    machine.others = 1.0  # another process spins on one core from now on
    assert threads.busy_cores(2) == pytest.approx(1.0, abs=0.01)
    assert threads.free_cores(cpus=2) == 1


def test_busy_cores_from_the_start_mark_leaves_out_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a start mark (what `llmkit` takes on entry) the window is the start-up: this process's own work in it
    is not load, another process's is, and no sleep is needed once the window is long enough."""
    machine = FakeMachine(others=0.0).install(monkeypatch)
    threads.mark()
    machine.work(0.2)  # start-up work of this process: one core busy, but it is ours
    assert threads.busy_cores(2) == pytest.approx(0.0, abs=0.01)
    assert machine.sleeps == []  # the window since the mark was long enough: no sleep

    machine.others = 1.0
    threads.mark()
    machine.work(0.2)  # ours again, and another process's core beside it
    assert threads.busy_cores(2) == pytest.approx(1.0, abs=0.01)

    threads.mark()
    machine.work(0.01)  # a window shorter than SAMPLE_SECONDS: topped up with a sleep of the rest
    assert threads.busy_cores(2) == pytest.approx(1.0, abs=0.05)
    assert machine.sleeps == [pytest.approx(threads.SAMPLE_SECONDS - 0.01)]

    # A stale mark is not used: the window starts afresh, so the long-gone load before it does not count.
    threads.mark()
    machine.advance(threads.MARK_MAX_AGE + 1)  # the other process spun all this time...
    machine.others = 0.0  # ...and has just stopped
    assert threads.busy_cores(2) == 0.0
    assert machine.sleeps[-1] == threads.SAMPLE_SECONDS


def test_busy_cores_without_proc_stat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)
    monkeypatch.setattr(threads, "_mark", None)
    assert threads.busy_cores(2) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 0.0, 0.0))
    assert threads.free_cores(cpus=2) == 1  # the load average is the fallback where /proc/stat is missing


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
