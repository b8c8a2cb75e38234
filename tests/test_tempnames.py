"""Temporaries named after their writer: a killed writer's are stale, a live writer's are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmkit import tempnames

# A writer that makes a temporary (and a nested one, as write_gguf does inside quantize's), then waits.
WRITER = """
import sys, time
from pathlib import Path
from llmkit import tempnames
target = Path(sys.argv[1])
outer = tempnames.temp_file(target, ".gguf")
outer.write_bytes(b"x" * 1000)
inner = tempnames.temp_file(outer, ".tmp")
inner.write_bytes(b"y" * 500)
print(outer, inner, flush=True)
time.sleep(60)
"""


def start_writer(target: Path) -> tuple[subprocess.Popen, list[Path]]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    paths = [Path(p) for p in proc.stdout.readline().split()]
    assert len(paths) == 2 and all(p.exists() for p in paths)
    return proc, paths


def test_names_carry_the_target_and_the_pid(tmp_path: Path) -> None:
    outer = tempnames.temp_file(tmp_path / "q.gguf", ".gguf")
    inner = tempnames.temp_file(outer, ".tmp")
    folder = tempnames.temp_dir(tmp_path / "model")
    assert outer.name.startswith(f".q.gguf.pid{os.getpid()}.") and outer.suffix == ".gguf"
    assert tempnames.owner(outer) == ("q.gguf", os.getpid())
    assert tempnames.owner(inner) == ("q.gguf", os.getpid())  # nested: still the output's
    assert tempnames.owner(folder) == ("model", os.getpid()) and folder.is_dir()
    assert tempnames.owner(tmp_path / ".q.gguf.abc123.gguf") is None  # not ours to judge
    assert tempnames.stale(tmp_path) == []  # this process is alive


def test_a_killed_writers_temporaries_are_removed_a_live_ones_kept(tmp_path: Path) -> None:
    killed, killed_paths = start_writer(tmp_path / "q.gguf")
    live, live_paths = start_writer(tmp_path / "q.gguf")
    other, other_paths = start_writer(tmp_path / "other.gguf")
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        os.kill(other.pid, signal.SIGKILL)
        other.wait()
        assert {p for p, _ in tempnames.stale(tmp_path, "q.gguf")} == set(killed_paths)
        removed = tempnames.remove_stale(tmp_path, "q.gguf")
        assert sorted(r.size_bytes for r in removed) == [500, 1000]
        assert {r.owner_pid for r in removed} == {killed.pid}
        assert not any(p.exists() for p in killed_paths)
        assert all(p.exists() for p in live_paths)  # its writer is still running
        assert all(p.exists() for p in other_paths)  # another output's: only a sweep of everything takes it
        assert {Path(r.path) for r in tempnames.remove_stale(tmp_path)} == set(other_paths)
        assert all(p.exists() for p in live_paths)
    finally:
        for proc in (killed, live, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_reused_pid_does_not_protect_an_old_temporary(tmp_path: Path) -> None:
    # A living process that started after the file was last written cannot be its writer.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = tmp_path / f".q.gguf.pid{sleeper.pid}.abc.gguf"
        path.write_bytes(b"z")
        assert tempnames.owner_alive(sleeper.pid, path)  # written now: it could be the writer
        old = time.time() - 3600
        os.utime(path, (old, old))
        if Path(f"/proc/{sleeper.pid}/stat").exists():
            assert not tempnames.owner_alive(sleeper.pid, path)
            assert [p for p, _ in tempnames.stale(tmp_path)] == [path]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_journal_finds_a_killed_writers_temporaries_anywhere(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    writer = WRITER.replace('tempnames.temp_file(target, ".gguf")', 'tempnames.temp_file(target, ".gguf", journal=J)')
    writer = writer.replace('tempnames.temp_file(outer, ".tmp")', 'tempnames.temp_file(outer, ".tmp", journal=J)')
    writer = writer.replace("target = Path(sys.argv[1])", f"target = Path(sys.argv[1]); J = Path({str(journal)!r})")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    procs, made = [], []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        proc = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path / folder / "q.gguf")],
                                stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        assert proc.stdout is not None
        procs.append(proc)
        made.append([Path(p) for p in proc.stdout.readline().split()])
    try:
        assert len(list(journal.iterdir())) == 4
        assert tempnames.sweep_journal(journal) == []  # both writers alive
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        removed = tempnames.sweep_journal(journal)
        assert {Path(r.path) for r in removed} == set(made[0]) and sum(r.size_bytes for r in removed) == 1500
        assert all(p.exists() for p in made[1]) and len(list(journal.iterdir())) == 2
        # a finished writer forgets its temporaries: nothing left to sweep
        mine = tempnames.temp_file(tmp_path / "c.gguf", journal=journal)
        mine.unlink()
        tempnames.forget(mine, journal)
        assert len(list(journal.iterdir())) == 2
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
