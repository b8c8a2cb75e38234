"""Temporary names that say who owns them, so the leftovers of a killed run can be told from a live writer's.

Outputs are written under a hidden temporary name beside the target and renamed into place. A `kill -9` in the
middle leaves that temporary behind; a second run for the same output must not delete the file of a run that
is still writing. Each temporary name carries its writer's process id (`.q.gguf.pid4242.k3j9x1.gguf`; a nested
temporary of a temporary keeps the marker: `..q.gguf.pid4242.k3j9x1.gguf.pid4242.a8s7d6.tmp`). It is stale
when that process is gone, a zombie, or started after the temporary was last written (its pid was reused).

A journal folder (llmkit's is $LLMKIT_HOME/temporaries, `journal_dir()`) records where each temporary was made,
so that `llmkit models --clean` can find a killed run's leftovers wherever its output was going.

The one rule for every file llmkit writes: `sweep(target)` first (a killed earlier run's temporaries for the same
output go, a live run's stay), then write through `replacing(target)` (a named, journalled temporary, renamed into
place only when complete, removed on any failure, Ctrl-C, SIGTERM or SIGHUP).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmkit import signals
from llmkit.fsutil import llmkit_home, make_public

# `.<target name>.pid<pid>.<random><suffix>`, with one or more leading dots (a temporary of a temporary).
_OWNED = re.compile(r"^\.+(?P<target>.+?)\.pid(?P<pid>\d+)\.")
JOURNAL = "temporaries"  # llmkit's journal folder, under $LLMKIT_HOME
START_SLACK_SECONDS = 2.0  # /proc's boot time is in whole seconds


@dataclass(frozen=True)
class Removed:
    """One stale temporary that was deleted, and the bytes that freed."""

    path: str
    size_bytes: int
    owner_pid: int


def journal_dir() -> Path:
    """llmkit's journal of temporaries ($LLMKIT_HOME/temporaries), read by `llmkit models --clean`."""
    return llmkit_home() / JOURNAL


def describe(removed: Removed) -> str:
    """One line for a stale temporary a run removed before writing the same output."""
    return (
        f"Removed {removed.path} ({removed.size_bytes / 1e6:.1f} MB), left by process {removed.owner_pid} "
        "(no longer running) from an earlier run for this output"
    )


def prefix(target: Path) -> str:
    """The hidden name prefix of this process's temporaries for `target`."""
    return f".{target.name}.pid{os.getpid()}."


def _entry(journal: Path, path: Path, pid: int | None = None) -> Path:
    digest = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:16]
    return journal / f"{os.getpid() if pid is None else pid}.{digest}"


def record(path: Path, journal: Path | None) -> None:
    """Record `path` in the journal as this process's (temp_file/temp_dir do it; a folder named otherwise may too)."""
    if journal is not None:
        journal.mkdir(parents=True, exist_ok=True)
        _entry(journal, path).write_text(str(path.absolute()), encoding="utf-8")


def forget(path: Path, journal: Path | None) -> None:
    """Drop `path` from the journal (call once the temporary was renamed into place or deleted)."""
    if journal is not None:
        _entry(journal, path).unlink(missing_ok=True)


def forget_all(path: Path, journal: Path | None) -> None:
    """Drop every process's journal entry for `path` (a shared folder its last user removed)."""
    if journal is not None and journal.is_dir():
        for entry in journal.glob(f"*.{_entry(journal, path).name.split('.', 1)[1]}"):
            entry.unlink(missing_ok=True)


def forget_for(path: Path, pid: int, journal: Path | None) -> None:
    """Drop another (dead) process's journal entry for `path`, once its temporary was removed."""
    if journal is not None:
        _entry(journal, path, pid).unlink(missing_ok=True)


def temp_file(target: Path, suffix: str = "", *, journal: Path | None = None) -> Path:
    """Create an empty temporary file beside `target`, named after it and this process (mode 0600).

    Args:
        target: the file that will be renamed into place.
        suffix: kept at the end of the name (e.g. ".gguf", for tools that look at the extension).
        journal: a folder where the temporary is recorded until `forget()` (None: not recorded).

    Returns:
        The temporary's path.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=prefix(target), suffix=suffix, dir=target.parent)
    os.close(fd)
    record(Path(name), journal)
    return Path(name)


def temp_dir(target: Path, *, journal: Path | None = None) -> Path:
    """Create an empty temporary folder beside `target`, named after it and this process (mode 0700)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix(target), dir=target.parent))
    record(path, journal)
    return path


def owner(path: Path) -> tuple[str, int] | None:
    """(target name, owner pid) encoded in a temporary's name, or None for any other name."""
    match = _OWNED.match(path.name)
    return (match.group("target"), int(match.group("pid"))) if match else None


def _process_start(pid: int) -> float | None:
    """When `pid` started (seconds since the epoch), from /proc; None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in parentheses may contain spaces
    if fields and fields[0] == "Z":
        return float("inf")  # a zombie: killed and not yet reaped, it writes nothing any more
    try:
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, OSError):
        return None


def owner_alive(pid: int, path: Path) -> bool:
    """True when process `pid` is alive and could have written `path` (it started before the last write)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    started = _process_start(pid)
    if started is None:
        return True
    try:
        written = path.lstat().st_mtime
    except FileNotFoundError:
        return True  # gone already: nothing to remove
    return started <= written + START_SLACK_SECONDS


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def stale(directory: Path, target_name: str | None = None) -> list[tuple[Path, int]]:
    """The stale temporaries in `directory` (for one target name, or all), with their owner pids.

    Args:
        directory: where the temporaries lie (beside their targets).
        target_name: only temporaries of this target (e.g. "q.gguf"); None for every target.

    Returns:
        [(path, owner pid)] of temporaries whose owner is gone.
    """
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        parsed = owner(path)
        if parsed is None or (target_name is not None and parsed[0] != target_name):
            continue
        if not owner_alive(parsed[1], path):
            found.append((path, parsed[1]))
    return found


def remove_stale(directory: Path, target_name: str | None = None) -> list[Removed]:
    """Delete the stale temporaries `stale()` finds; a live writer's are left alone.

    Returns:
        What was removed, with the bytes each freed.
    """
    removed = []
    for path, pid in stale(directory, target_name):
        size = _size(path)
        _remove(path)
        removed.append(Removed(str(path), size, pid))
    return removed


def sweep_journal(journal: Path, *, shared_stale: Callable[[Path], bool] | None = None) -> list[Removed]:
    """Delete every temporary in the journal whose writer is gone, wherever it lies, and its journal entry.

    Args:
        journal: the journal folder.
        shared_stale: for a recorded path whose name carries no owner (a folder several processes share, such
            as a launch's shard folder): whether it is stale. Such a path is kept, with its entry, until it is.

    Returns:
        What was removed, with the bytes each freed (entries whose temporary no longer exists free nothing).
    """
    removed: list[Removed] = []
    if not journal.is_dir():
        return removed
    for entry in sorted(journal.iterdir()):
        pid_text = entry.name.split(".", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            path = Path(entry.read_text(encoding="utf-8").strip())
        except OSError:
            continue
        parsed = owner(path)
        exists = path.exists() or path.is_symlink()
        if exists and parsed is None and shared_stale is not None:
            if shared_stale(path):
                size = _size(path)
                _remove(path)
                removed.append(Removed(str(path), size, int(pid_text)))
                entry.unlink(missing_ok=True)
            continue
        if exists and owner_alive(int(pid_text), path):
            continue
        if not exists and owner_alive(int(pid_text), entry):
            continue  # the writer may still be about to forget it
        if exists and parsed is not None and parsed[1] == int(pid_text):  # only what the journal says is ours
            size = _size(path)
            _remove(path)
            removed.append(Removed(str(path), size, parsed[1]))
        entry.unlink(missing_ok=True)
    return removed


def sweep(target: Path, *, journal: Path | None) -> list[Removed]:
    """Delete the stale temporaries of `target` beside it (a killed earlier run's), and their journal entries.

    A live writer's temporaries for the same target are left alone (see `owner_alive`).

    Args:
        target: the output about to be written.
        journal: the journal the temporaries were recorded in (None: none).

    Returns:
        What was removed, with the bytes each freed (`describe` words one for the user).
    """
    removed = remove_stale(Path(target).parent, Path(target).name)
    for item in removed:
        forget_for(Path(item.path), item.owner_pid, journal)
    return removed


@contextmanager
def replacing(target: Path, *, suffix: str = "", folder: bool = False, journal: Path | None) -> Iterator[Path]:
    """A temporary beside `target` to write into; renamed onto `target` when the block ends without an error.

    The temporary carries this process's marker and is journalled until it is renamed or removed, so a `kill -9`
    leaves something the next run (`sweep`) or `llmkit models --clean` can tell from a live writer's file. On any
    exception (an error, Ctrl-C, SIGTERM/SIGHUP through llmkit.signals) the temporary is removed and `target`
    is left as it was. The result gets the permissions a plain write would (the user's umask).

    Args:
        target: the file (or, with `folder`, the folder) to create or replace.
        suffix: kept at the end of the temporary's name (tools that look at the extension).
        folder: make an empty folder instead of an empty file (`target` must not be a non-empty folder).
        journal: where the temporary is recorded (`journal_dir()` for llmkit's own; None: not recorded).

    Yields:
        The temporary's path.
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        with signals.deferred():  # a stop signal between creating it and naming it here would leak it
            tmp = temp_dir(target, journal=journal) if folder else temp_file(target, suffix, journal=journal)
        yield tmp
        make_public(tmp)
        os.replace(tmp, target)
    finally:
        if tmp is not None:
            if tmp.exists() or tmp.is_symlink():
                _remove(tmp)
            forget(tmp, journal)


@contextmanager
def scratch(target: Path, *, journal: Path | None) -> Iterator[Path]:
    """A temporary folder named after `target`, for work files: removed when the block ends, never renamed.

    Args:
        target: the name it is a temporary of (beside it; `sweep(target)` removes a killed run's).
        journal: where it is recorded while it exists (`journal_dir()` for llmkit's own; None: not recorded).

    Yields:
        The folder's path.
    """
    folder: Path | None = None
    try:
        with signals.deferred():  # a stop signal between creating it and naming it here would leak it
            folder = temp_dir(Path(target), journal=journal)
        yield folder
    finally:
        if folder is not None:
            _remove(folder)
            forget(folder, journal)
