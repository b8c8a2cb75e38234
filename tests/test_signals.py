"""Stopping a run: SIGTERM/SIGHUP/Ctrl-C unwind it and it removes its own temporaries; a `kill -9` leaves one
that the next run for the same output, or `llmkit models --clean`, removes (never a live run's).

The unit tests signal this process inside `signals.handled()`. The others start real `llmkit` processes, wait
until their temporary exists (never a sleep), signal them, and check the exit code, the one error line and a
folder holding nothing but the inputs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llmkit import errors, signals, tempnames, training

WAIT_LIMIT = 300.0  # seconds a started process may take to reach the awaited state on a loaded machine (a bound)


# --- the module, on this process --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGTERM, errors.EXIT_TERMINATED), (signal.SIGHUP, errors.EXIT_HANGUP),
     (signal.SIGINT, errors.EXIT_INTERRUPTED)],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_each_stop_signal_raises_interrupted_with_the_shells_exit_code(sig: int, code: int) -> None:
    before = signal.getsignal(sig)
    with signals.handled(), pytest.raises(signals.Interrupted) as caught:
        os.kill(os.getpid(), sig)
        time.sleep(30)  # interrupted at once by the handler's exception
    assert caught.value.signum == sig and caught.value.exit_code == code == 128 + sig
    assert isinstance(caught.value, KeyboardInterrupt)  # so `except Exception` in library code cannot swallow it
    assert signals.describe(caught.value) == f"interrupted ({signal.Signals(sig).name})"
    assert signal.getsignal(sig) is before  # the previous handler is back


def test_a_plain_keyboard_interrupt_is_ctrl_c() -> None:
    assert signals.exit_code(KeyboardInterrupt()) == 130
    assert signals.describe(KeyboardInterrupt()) == "interrupted (SIGINT)"


def test_a_second_signal_is_ignored_while_the_first_one_unwinds() -> None:
    cleaned = []
    with signals.handled():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        except signals.Interrupted:
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C right after a launcher's SIGTERM
            for _ in range(1000):  # a few bytecodes for a handler to run (and raise, were it not ignored)
                pass
            cleaned.append("cleanup ran to its end")
        assert cleaned == ["cleanup ran to its end"] and signals.pending() == signal.SIGTERM


def test_deferred_holds_the_signal_until_its_block_ends() -> None:
    steps = []
    with signals.handled(), pytest.raises(signals.Interrupted) as caught:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            steps.append("after the signal")  # still runs: the signal waits for the block's end
            assert signals.pending() == signal.SIGHUP
        steps.append("after the block")  # never reached
    assert steps == ["after the signal"] and caught.value.signum == signal.SIGHUP


def test_on_signal_is_called_instead_of_raising() -> None:
    calls: list[int] = []
    with signals.handled(on_signal=calls.append):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # a few bytecodes for the handler to run
            pass
    assert calls == [signal.SIGTERM]


def test_a_signal_the_parent_ignores_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does
    try:
        with signals.handled():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_replacing_removes_its_temporary_and_journal_entry_on_an_interrupt(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with signals.handled(), pytest.raises(signals.Interrupted):
        with tempnames.replacing(target, journal=journal) as tmp:
            tmp.write_text("half")
            assert tempnames.owner(tmp) == ("out.csv", os.getpid()) and len(list(journal.iterdir())) == 1
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal", "out.csv"]
    assert target.read_text() == "old\n" and list(journal.iterdir()) == []


# --- real llmkit processes ---------------------------------------------------------------------------------------


def _texts(count: int) -> str:
    words = "good bad movie plot fun boring great awful ok food".split()
    rng = random.Random(0)
    return "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(count)) + "\n"


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    """The environment of the started processes: their own LLMKIT_HOME (journal), one thread each."""
    env = dict(os.environ, LLMKIT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", LLMKIT_THREADS="1")
    env.pop("LLMKIT_DEBUG", None)
    return env


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


class Started:
    """One `python -m llmkit ...` process, its stdout and stderr in files outside the work folder."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str], logs: Path) -> None:
        logs.mkdir(exist_ok=True)
        n = len(list(logs.iterdir())) // 2
        self.stdout_path, self.stderr_path = logs / f"{n}.out", logs / f"{n}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "llmkit", *args], cwd=cwd, env=env, stdout=out,
                                         stderr=err)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, what: str, ready: Callable[[], object]) -> object:
        """Poll until `ready()` is truthy; fail if the process ends first (or after WAIT_LIMIT, a bound)."""
        deadline = time.monotonic() + WAIT_LIMIT
        while True:
            found = ready()
            if found:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"exited {self.proc.returncode} before {what}:\n{self.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} after {WAIT_LIMIT:g} s:\n{self.stderr()[-3000:]}")
            time.sleep(0.02)

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=WAIT_LIMIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def started(tmp_path: Path, run_env: dict[str, str]):
    procs: list[Started] = []

    def start(args: list[str], cwd: Path) -> Started:
        procs.append(Started(args, cwd=cwd, env=run_env, logs=tmp_path / "logs"))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()


def _temporary(folder: Path, target: str, pid: int) -> Callable[[], Path | None]:
    """The temporary `pid` writes `target` under (tempnames' name), once it exists and holds something."""

    def find() -> Path | None:
        for path in folder.iterdir():
            if path.name.startswith(f".{target}.pid{pid}.") and (path.is_dir() or path.stat().st_size > 0):
                return path
        return None

    return find


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def _journal(run_env: dict[str, str]) -> list[str]:
    folder = Path(run_env["LLMKIT_HOME"]) / tempnames.JOURNAL
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_classify_stopped_by_a_signal_removes_its_output_temporary(
    sig: int, tiny_classifier: Path, work: Path, started, run_env: dict[str, str]
) -> None:
    (work / "in.txt").write_text(_texts(30_000))
    proc = started(["classify", "-m", str(tiny_classifier), "-i", "in.txt", "-o", "pred.csv"], work)
    temporary = proc.wait_for("the output's temporary", _temporary(work, "pred.csv", proc.pid))
    assert isinstance(temporary, Path) and [name.split(".")[0] for name in _journal(run_env)] == [str(proc.pid)]
    assert proc.stop(sig) == 128 + sig
    assert _error_lines(proc.stderr()) == [f"Error: interrupted ({signal.Signals(sig).name})"]
    assert sorted(p.name for p in work.iterdir()) == ["in.txt"]  # no pred.csv, no temporary
    assert _journal(run_env) == []


@pytest.mark.parametrize("batch", [1, 8])
def test_generate_on_llama_cpp_stops_at_the_next_token(batch: int, tiny_gguf: Path, work: Path, started) -> None:
    # llama.cpp holds the main thread (batch 1) or worker threads (batch 8) while it generates; xllamacpp's
    # callback wrapper would swallow the handler's exception and generate on to the end of the input.
    from llmkit.engines import llama_cpp

    if not llama_cpp.bindings_installed():
        pytest.skip("the llama.cpp bindings are not installed")
    (work / "prompts.txt").write_text("".join(f"tell me a long story number {i}\n" for i in range(400)))
    proc = started(["generate", "-m", str(tiny_gguf), "--engine", "llama-cpp", "-i", "prompts.txt", "-n", "64",
                    "--batch-size", str(batch), "--json"], work)  # fmt: skip
    proc.wait_for("the first answer", lambda: proc.stdout().count("\n") >= 1)
    assert proc.stop(signal.SIGTERM) == 143
    assert _error_lines(proc.stderr()) == ["Error: interrupted (SIGTERM)"]
    assert "Exception ignored" not in proc.stderr()
    assert 1 <= proc.stdout().count("\n") < 400  # stopped, not run to the end of the input
    assert sorted(p.name for p in work.iterdir()) == ["prompts.txt"]


def _trainer_step(folder: Path) -> int:
    return int(json.loads((folder / "trainer_state.json").read_text())["global_step"])


def _first_logged_step(proc: Started) -> Callable[[], int | None]:
    def step() -> int | None:
        for line in proc.stdout().splitlines():
            if line.endswith("}"):
                record = json.loads(line)
                if record.get("event") == "log" and "loss" in record:
                    return int(record["step"])
        return None

    return step


def test_finetune_stopped_by_a_signal_saves_a_checkpoint_that_resume_continues(
    tiny_classifier: Path, work: Path, started
) -> None:
    rows = [f"{'good fun great' if i % 2 else 'bad awful boring'} {i},{'pos' if i % 2 else 'neg'}" for i in range(64)]
    (work / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    # 100 steps: a log line every 5; the signal comes right after the first, far from the end.
    args = ["finetune", "train.csv", "-m", str(tiny_classifier), "-o", "ft", "--max-steps", "100", "--batch-size", "4",
            "--validation-split", "0", "--json"]  # fmt: skip
    first = started(args, work)
    logged = first.wait_for("a training log line", _first_logged_step(first))
    assert logged == 5
    assert first.stop(signal.SIGTERM) == 143
    assert _error_lines(first.stderr()) == ["Error: interrupted (SIGTERM)"]
    assert "Run the same command with --resume" in first.stderr()
    assert sorted(p.name for p in work.iterdir()) == ["ft.checkpoints", "train.csv"]  # no output, no staging
    checkpoint = training.last_checkpoint(work / "ft")
    assert checkpoint is not None
    saved = int(checkpoint.name.split("-")[-1])
    assert saved >= 5 and _trainer_step(checkpoint) == saved  # saved at a step end after the signal

    second = started([*args, "--resume"], work)
    resumed = second.wait_for("a training log line", _first_logged_step(second))
    assert resumed > saved  # continued from the checkpoint (a new run would log step 5 first)
    assert second.stop(signal.SIGHUP) == 129
    assert _error_lines(second.stderr()) == ["Error: interrupted (SIGHUP)"]
    later = training.last_checkpoint(work / "ft")
    assert later is not None and int(later.name.split("-")[-1]) >= resumed
    assert sorted(p.name for p in work.iterdir()) == ["ft.checkpoints", "train.csv"]


def test_quantize_stopped_by_a_signal_leaves_nothing(
    tiny_classifier: Path, work: Path, started, run_env: dict[str, str]
) -> None:
    (work / "eval.txt").write_text(_texts(120))  # measuring on these keeps the temporary there for a while
    proc = started(["quantize", "-m", str(tiny_classifier), "--method", "dynamic-int8", "--eval-data", "eval.txt",
                    "-o", "q"], work)  # fmt: skip
    proc.wait_for("the output's temporary", _temporary(work, "q", proc.pid))
    assert proc.stop(signal.SIGTERM) == 143
    assert _error_lines(proc.stderr()) == ["Error: interrupted (SIGTERM)"]
    assert sorted(p.name for p in work.iterdir()) == ["eval.txt"]
    assert _journal(run_env) == []


def test_a_killed_runs_temporary_is_removed_by_the_next_run_for_the_same_output(
    tiny_classifier: Path, work: Path, started, run_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import invoke

    (work / "in.txt").write_text(_texts(30_000))
    proc = started(["classify", "-m", str(tiny_classifier), "-i", "in.txt", "-o", "pred.csv"], work)
    temporary = proc.wait_for("the output's temporary", _temporary(work, "pred.csv", proc.pid))
    assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
    assert isinstance(temporary, Path) and temporary.exists()  # nothing could run: it stays, named after its writer
    assert [name.split(".")[0] for name in _journal(run_env)] == [str(proc.pid)]

    (work / "small.txt").write_text("good movie\nbad plot\nok\n")
    monkeypatch.setenv("LLMKIT_HOME", run_env["LLMKIT_HOME"])
    monkeypatch.chdir(work)
    rerun = invoke(["classify", "-m", str(tiny_classifier), "-i", "small.txt", "-o", "pred.csv"])
    assert rerun.exit_code == 0, rerun.stderr
    assert f"Removed {temporary.name} (" in rerun.stderr
    assert f"left by process {proc.pid} (no longer running)" in rerun.stderr
    assert sorted(p.name for p in work.iterdir()) == ["in.txt", "pred.csv", "small.txt"]
    assert len((work / "pred.csv").read_text().splitlines()) == 4  # header + 3 rows
    assert _journal(run_env) == []


def test_models_clean_removes_a_dead_runs_temporary_and_keeps_a_live_ones(
    tiny_classifier: Path, work: Path, started, run_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import invoke, json_lines

    (work / "in.txt").write_text(_texts(30_000))
    dead = started(["classify", "-m", str(tiny_classifier), "-i", "in.txt", "-o", "a.csv"], work)
    live = started(["classify", "-m", str(tiny_classifier), "-i", "in.txt", "-o", "b.csv"], work)
    dead_tmp = dead.wait_for("a.csv's temporary", _temporary(work, "a.csv", dead.pid))
    live_tmp = live.wait_for("b.csv's temporary", _temporary(work, "b.csv", live.pid))
    dead.stop(signal.SIGKILL)

    monkeypatch.setenv("LLMKIT_HOME", run_env["LLMKIT_HOME"])
    cleaned = invoke(["models", "--clean", "--json"])
    assert cleaned.exit_code == 0, cleaned.stderr
    freed = [(r["kind"], r["path"]) for r in json_lines(cleaned.stdout) if r["kind"] != "onnx-export"]
    assert freed == [("stale-temporary", str(dead_tmp))]  # (the runs' ONNX export is a cache --clean also frees)
    assert isinstance(live_tmp, Path) and live_tmp.exists()  # its writer is still running
    assert [name.split(".")[0] for name in _journal(run_env)] == [str(live.pid)]

    assert live.stop(signal.SIGTERM) == 143  # and the live one removes its own when stopped
    assert sorted(p.name for p in work.iterdir()) == ["in.txt"]
    assert _journal(run_env) == []
