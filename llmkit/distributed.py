"""Inference on several processes: who the peers are, which inputs each one runs, and one merged output.

Launched by `torchrun --nproc_per_node N -m llmkit ...` or `accelerate launch --multi_gpu --num_processes N -m
llmkit ...`, every process runs the same command. `detect()` reads the launcher's environment (RANK, WORLD_SIZE,
LOCAL_RANK; the MPI names accelerate also reads). `shard()` gives each rank its own part of the inputs, every
rank writes its records to a shard file through `ShardedRun`, and the main rank (rank 0) waits for the others
and merges the shards in input order into the one output (a temporary name, then a rename) or onto stdout.

What each rank reads: the whole input stream, in the same order. Ranks agree on the split without talking to
each other because it depends only on a record's position: with the total known, rank r takes one contiguous
slice (the sizes of `accelerate.PartialState.split_between_processes`); on a stream of unknown length, blocks of
`block_size` consecutive records are dealt round-robin (block b to rank b % N), so no rank has to count first.
Each rank also counts every record it read, and the main rank refuses to merge if the counts differ (the ranks
did not see the same input).

Where the shards live: beside the output file (`.NAME.llmkit-shards-KEY/`), or for stdout in the temporary
folder (`LLMKIT_SHARD_DIR` overrides both). On several nodes that folder must be on a file system all nodes
share. KEY names one launch (see `run_key`).

Failure handling: a rank that raises writes a failure marker with its message; each rank touches a heartbeat
file every second from a background thread (the main rank until the folder is removed). The main rank stops
waiting with a `PeerError` naming the rank when that rank failed, never started, or its heartbeat stopped for
`timeout` seconds (killed, out of memory). Nothing is renamed into the output path until every shard is in, so a
crash leaves no half-written output.

Leftovers: the main rank removes the shard folder when the run ends, however it ends: done, failed, or stopped by
Ctrl-C, SIGTERM or SIGHUP (a launcher SIGTERMs the other ranks when one dies; see llmkit/signals.py). A folder a
`kill -9` of the main rank left behind is removed by the next launch for the same output once no heartbeat in it
moved for `timeout` seconds (a running launch keeps beating), and by `llmkit models --clean` (every rank records
the folder in llmkit's journal of temporaries, tempnames.py).

This module imports no torch at import time; `barrier()` uses torch.distributed only when a process group is
already initialised (a training run), otherwise files.
"""

from __future__ import annotations

import atexit
import hashlib
import heapq
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from llmkit import signals, tempnames
from llmkit.errors import EXIT_FAILURE, LlmkitError, UsageError

T = TypeVar("T")

DEFAULT_BLOCK_SIZE = 64  # records per round-robin block: whole batches stay on one rank
DEFAULT_TIMEOUT = 300.0  # seconds without a heartbeat (or without a start) before a peer counts as dead
HEARTBEAT_SECONDS = 1.0
POLL_SECONDS = 0.1

# (rank, world size, local rank) names, in the order accelerate's `get_int_from_env` reads them.
_RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_RANK_ENV = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
_LOCAL_WORLD_ENV = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


class PeerError(LlmkitError):
    """Another process of a multi-process run failed, vanished, or saw different input (exit 1)."""

    exit_code = EXIT_FAILURE


@dataclass(frozen=True)
class Peers:
    """This process's place in a multi-process run.

    Attributes:
        rank: 0-based global rank (0 is the main process, which writes the output).
        world_size: number of processes in the run (1 when not launched by a multi-process launcher).
        local_rank: rank on this node (picks the GPU).
        local_world_size: processes on this node.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(names: tuple[str, ...], env: dict[str, str]) -> tuple[str, int] | None:
    for name in names:
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            return name, int(raw)
        except ValueError:
            raise UsageError(f"environment variable {name}={raw!r} is not a whole number; unset it or fix it") from None
    return None


def detect(env: dict[str, str] | None = None) -> Peers:
    """The peers this process has, from the launcher's environment variables.

    torchrun and `accelerate launch --multi_gpu` set RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; MPI
    launchers set their own names (read as accelerate reads them). Without any of them: one process.

    Args:
        env: the environment to read (default: `os.environ`).

    Returns:
        A `Peers`.

    Raises:
        UsageError: values that cannot describe a run (a rank outside 0..WORLD_SIZE-1, a size below 1).
    """
    env = dict(os.environ if env is None else env)
    world = _env_int(_WORLD_ENV, env)
    rank = _env_int(_RANK_ENV, env)
    world_size = world[1] if world else 1
    rank_value = rank[1] if rank else 0
    if world_size < 1:
        raise UsageError(f"{world[0] if world else 'WORLD_SIZE'}={world_size}: a run needs at least one process")
    if not 0 <= rank_value < world_size:
        name = rank[0] if rank else "RANK"
        raise UsageError(f"{name}={rank_value} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    local = _env_int(_LOCAL_RANK_ENV, env)
    local_world = _env_int(_LOCAL_WORLD_ENV, env)
    return Peers(
        rank=rank_value,
        world_size=world_size,
        local_rank=local[1] if local else rank_value,
        local_world_size=local_world[1] if local_world else world_size,
    )


# --- which inputs each rank runs ------------------------------------------------------------------------------


def contiguous_range(total: int, rank: int, world_size: int) -> range:
    """The slice of `total` records that `rank` runs: sizes differ by at most one, the first ranks larger.

    The same split as `accelerate.PartialState.split_between_processes` (without its padding).

    Args:
        total: number of records.
        rank / world_size: this rank and the number of ranks.

    Returns:
        The record positions, a `range`.
    """
    per_rank, extra = divmod(total, world_size)
    start = rank * per_rank + min(rank, extra)
    return range(start, start + per_rank + (1 if rank < extra else 0))


def owner(index: int, world_size: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """The rank that runs record `index` when the total is unknown (round-robin blocks of `block_size`)."""
    return (index // block_size) % world_size


class Shard:
    """This rank's records from an input iterable, with how many records the whole input held.

    Iterate it for `(index, item)` pairs; after the iteration ends, `seen` is the number of records in the
    whole input (every rank reads every record, runs only its own).

    Args:
        items: the input, read once and in order.
        peers: this process's `Peers`.
        total: the number of records, if known (a contiguous slice per rank); None for a stream (blocks).
        block_size: records per block for streams.
    """

    def __init__(
        self, items: Iterable[T], peers: Peers, *, total: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> None:
        if block_size < 1:
            raise UsageError("block size must be at least 1")
        self._items = items
        self.peers = peers
        self.total = total
        self.block_size = block_size
        self.seen = 0
        self.finished = False

    def mine(self, index: int) -> bool:
        """Whether this rank runs record `index`."""
        if self.total is not None:
            return index in contiguous_range(self.total, self.peers.rank, self.peers.world_size)
        return owner(index, self.peers.world_size, self.block_size) == self.peers.rank

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        mine = (
            contiguous_range(self.total, self.peers.rank, self.peers.world_size) if self.total is not None else None
        )
        index = -1
        for index, item in enumerate(self._items):
            self.seen = index + 1
            if mine is not None:
                if index >= mine.stop:
                    continue  # keep reading: the count must cover the whole input
                if index >= mine.start:
                    yield index, item
            elif owner(index, self.peers.world_size, self.block_size) == self.peers.rank:
                yield index, item
        self.seen = index + 1
        self.finished = True


def shard(
    items: Iterable[T], peers: Peers, *, total: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE
) -> Shard:
    """This rank's `(index, item)` pairs from `items` (see `Shard`); one process gets every item."""
    return Shard(items, peers, total=total, block_size=block_size)


def check_shareable_input(peers: Peers, texts: list[str] | None, input_file: Path | None) -> None:
    """Refuse stdin under several processes: every rank would race for the same pipe (one gets it all).

    Args:
        peers: this process's `Peers`.
        texts: the command's text arguments (`["-"]` or none means stdin).
        input_file: `--input FILE`, if given.

    Raises:
        UsageError: several processes and the input would come from stdin.
    """
    if peers.distributed and input_file is None and (not texts or list(texts) == ["-"]):
        raise UsageError(
            f"{peers.world_size} processes cannot share stdin; give the input as --input FILE (every process "
            "reads it and runs its own share)"
        )


# --- shard files and the merge --------------------------------------------------------------------------------


def run_key(peers: Peers, env: dict[str, str] | None = None) -> str:
    """A name every rank of one launch computes alike, and the next launch does not.

    `LLMKIT_RUN_ID` wins when set. Otherwise the launcher's rendezvous (TORCHELASTIC_RUN_ID, MASTER_ADDR,
    MASTER_PORT, the restart count) and, when all ranks are on this node, the launcher's process id (the common
    parent of all ranks under torchrun and accelerate) are hashed. On several nodes give each launch its own
    `--rdzv-id` (torchrun) or `LLMKIT_RUN_ID`.
    """
    env = dict(os.environ if env is None else env)
    explicit = env.get("LLMKIT_RUN_ID")
    if explicit:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in explicit)[:64]
    parts = [env.get(name, "") for name in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT",
                                            "TORCHELASTIC_RESTART_COUNT")]
    parts.append(str(peers.world_size))
    if peers.local_world_size == peers.world_size:
        parts.append(str(os.getppid()))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def shard_dir(output: Path | None, key: str) -> Path:
    """Where the shards of one run live: beside `output`, or in the temporary folder for stdout."""
    override = os.environ.get("LLMKIT_SHARD_DIR")
    if override:
        return Path(override) / f"llmkit-shards-{key}"
    if output is not None:
        output = Path(output)
        return output.parent / f".{output.name}.llmkit-shards-{key}"
    return Path(tempfile.gettempdir()) / f"llmkit-shards-{key}"


def peer_timeout() -> float:
    """Seconds without a heartbeat before a peer counts as dead: $LLMKIT_PEER_TIMEOUT, default 300."""
    return float(os.environ.get("LLMKIT_PEER_TIMEOUT", DEFAULT_TIMEOUT))


SHARD_PREFIX = "llmkit-shards-"


def shard_folder_stale(folder: Path, timeout: float | None = None) -> bool:
    """True when `folder` is a shard folder in which nothing moved for `timeout` seconds: its launch is over.

    Every live rank rewrites its heartbeat file each second, so a folder whose newest file (or the folder
    itself) is older than the peer timeout belongs to no running launch. Anything not named as a shard folder
    is never stale here.

    Args:
        folder: the folder to judge.
        timeout: seconds (default `peer_timeout()`).
    """
    if SHARD_PREFIX not in folder.name or not folder.is_dir() or folder.is_symlink():
        return False
    limit = peer_timeout() if timeout is None else timeout
    try:
        newest = max([folder.stat().st_mtime] + [p.lstat().st_mtime for p in folder.iterdir()])
    except FileNotFoundError:
        return False  # removed meanwhile (its own main rank finished)
    return time.time() - newest > limit


def remove_stale_shards(output: Path | None, *, keep: Path | None = None, timeout: float | None = None) -> list[Path]:
    """Remove the shard folders of earlier launches for `output` whose heartbeats stopped (`shard_folder_stale`).

    Args:
        output: the output file (its `.NAME.llmkit-shards-*` siblings); None: stdout runs' folders.
        keep: this launch's own folder, never removed.
        timeout: seconds without a heartbeat (default `peer_timeout()`).

    Returns:
        The folders removed.
    """
    pattern = shard_dir(output, "")
    if not pattern.parent.is_dir():
        return []
    removed = []
    for folder in sorted(pattern.parent.glob(f"{pattern.name}*")):
        if folder != keep and shard_folder_stale(folder, timeout):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _sweep_earlier_launches(output: Path | None, *, keep: Path | None = None, timeout: float | None = None) -> None:
    from llmkit.console import info

    limit = peer_timeout() if timeout is None else timeout
    for folder in remove_stale_shards(output, keep=keep, timeout=limit):
        info(f"Removed {folder}, left by an earlier launch for this output (no heartbeat for {limit:g} s)")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(tempnames.prefix(path) + "tmp")  # tempnames' rule; its folder is the journalled temporary
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class _Heartbeat(threading.Thread):
    """Rewrites `path` with a growing counter every second while the rank is alive."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="llmkit-heartbeat", daemon=True)
        self.path = path
        self.stopped = threading.Event()
        self.beats = 0

    def beat(self) -> None:
        self.beats += 1
        try:
            _write_atomic(self.path, str(self.beats))
        except OSError:
            pass  # the folder went away: the main rank gave up; the next write of a record says so

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            self.beat()


class ShardedRun:
    """One rank's side of a sharded command: write records, then (main rank) merge every rank's records.

    Use as a context manager around the rank's work; an exception inside marks this rank as failed (with the
    message, for the main rank's error). On the main rank, call `merged()` after the block to get every
    rank's records in input order.

        peers = detect()
        with ShardedRun(peers, output=path) as run:
            for index, item in run.shard(items):
                run.write(index, process(item))
        if peers.is_main:
            write_output(run.merged())

    Args:
        peers: this process's `Peers`.
        output: the output file the merge will go to (None for stdout); the shard folder goes beside it.
        timeout: seconds without a heartbeat before a peer counts as dead (`LLMKIT_PEER_TIMEOUT` overrides the
            default).
        key: the run's name (default: `run_key(peers)`).
    """

    def __init__(
        self,
        peers: Peers,
        *,
        output: Path | None = None,
        timeout: float | None = None,
        key: str | None = None,
    ) -> None:
        self.peers = peers
        self.timeout = peer_timeout() if timeout is None else timeout
        self.key = key or run_key(peers)
        self.output = None if output is None else Path(output)
        self.folder = shard_dir(output, self.key)
        self.rank = peers.rank
        self._shard: Shard | None = None
        self._handle: Any = None
        self._heartbeat: _Heartbeat | None = None
        self._written = 0
        self._last_index = -1
        self.closed = False
        self.failed = False
        self.nonce = ""

    # file names
    def _path(self, rank: int, suffix: str) -> Path:
        return self.folder / f"rank-{rank:05d}.{suffix}"

    @property
    def _begin(self) -> Path:
        return self.folder / "begin.json"

    def __enter__(self) -> ShardedRun:
        if self.peers.is_main:
            _sweep_earlier_launches(self.output, keep=self.folder, timeout=self.timeout)
            # However this process ends (an error, or a signal before the merge began or during this method),
            # the folder goes: registered before it exists.
            atexit.register(self.cleanup)
        self.folder.mkdir(parents=True, exist_ok=True)
        tempnames.record(self.folder, tempnames.journal_dir())  # for `llmkit models --clean` after a kill -9
        for suffix in ("done", "failed", "jsonl"):
            self._path(self.rank, suffix).unlink(missing_ok=True)  # this rank's leftovers of an earlier launch
        if self.peers.is_main:
            # The main rank names this launch; peers copy the name into their markers, so a marker left by an
            # earlier launch with the same key is never taken for this one.
            self.nonce = secrets.token_hex(8)
            _write_atomic(self._begin, json.dumps({"nonce": self.nonce, "world_size": self.peers.world_size}))
        self._handle = open(self._path(self.rank, "part"), "w", encoding="utf-8")
        self._heartbeat = _Heartbeat(self._path(self.rank, "alive"))
        self._heartbeat.beat()
        self._heartbeat.start()
        return self

    def shard(self, items: Iterable[T], *, total: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE) -> Shard:
        """This rank's `(index, item)` pairs (see `Shard`); the run remembers the input's size for the merge."""
        self._shard = shard(items, self.peers, total=total, block_size=block_size)
        return self._shard

    def write(self, index: int, record: Any) -> None:
        """Store this rank's result for input `index` (any JSON value); indices must increase."""
        if self._handle is None:
            raise RuntimeError("ShardedRun.write outside its `with` block")
        if index <= self._last_index:
            raise RuntimeError(f"shard records must come in input order (got {index} after {self._last_index})")
        self._last_index = index
        self._handle.write(json.dumps({"i": index, "r": record}, ensure_ascii=False) + "\n")
        self._written += 1

    def _peer_nonce(self) -> str:
        """The launch name the main rank wrote (peers wait for it a little: the main may start later)."""
        deadline = time.monotonic() + self.timeout
        while True:
            begin = _read_json(self._begin)
            if begin and begin.get("nonce"):
                return str(begin["nonce"])
            if time.monotonic() > deadline:
                raise PeerError(f"the main process (rank 0) never started its part of the run in {self.folder}")
            time.sleep(POLL_SECONDS)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        try:
            if exc is not None:
                self.failed = True
                self._mark_failed(exc)
                if self.peers.is_main:
                    self.cleanup()
                return
            seen = self._shard.seen if self._shard is not None else self._written
            try:
                os.replace(self._path(self.rank, "part"), self._path(self.rank, "jsonl"))
                nonce = self.nonce if self.peers.is_main else self._peer_nonce()
                marker = {"nonce": nonce, "rank": self.rank, "records": self._written, "seen": seen}
                _write_atomic(self._path(self.rank, "done"), json.dumps(marker))
            except FileNotFoundError:
                raise PeerError(
                    f"process {self.rank}: the shard folder {self.folder} was removed; the main process stopped the run"
                ) from None
        finally:
            # Beat until the marker is written, so the main rank never takes a finishing peer for a dead one;
            # the main rank beats on while it merges (until `cleanup`), so no other launch takes it for dead.
            if not self.peers.is_main:
                self._stop_heartbeat()
                tempnames.forget(self.folder, tempnames.journal_dir())

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stopped.set()
            if self._heartbeat.is_alive() and self._heartbeat is not threading.current_thread():
                self._heartbeat.join()

    def _mark_failed(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            text = signals.describe(exc)  # "interrupted (SIGTERM)": the main rank's error names the signal
        elif isinstance(exc, LlmkitError):
            text = exc.message
        else:
            first = str(exc).strip().splitlines()
            text = f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
        nonce = self.nonce
        if not self.peers.is_main:
            begin = _read_json(self._begin)
            nonce = str(begin.get("nonce", "")) if begin else ""
            if not nonce and not isinstance(exc, KeyboardInterrupt):
                # This rank failed before the main rank named the launch (it may still be loading its model):
                # wait for the name, as a finishing rank does, so the main rank reports this error and not,
                # after its timeout, a peer that "stopped responding". The heartbeat keeps beating meanwhile.
                try:
                    nonce = self._peer_nonce()
                except PeerError:
                    nonce = ""
        try:
            _write_atomic(self._path(self.rank, "failed"), json.dumps({"nonce": nonce, "error": text}))
            self._path(self.rank, "part").unlink(missing_ok=True)
        except OSError:
            pass

    # --- main rank --------------------------------------------------------------------------------------------

    def wait(self) -> list[dict[str, Any]]:
        """(main rank) Wait until every rank's shard is in; return their done markers, by rank.

        Raises:
            PeerError: a rank failed, never started, or stopped beating for `timeout` seconds.
        """
        world = self.peers.world_size
        done: dict[int, dict[str, Any]] = {}
        last_beat: dict[int, tuple[str | None, float]] = {}
        started = time.monotonic()
        while True:
            now = time.monotonic()
            for rank in range(world):
                if rank in done:
                    continue
                marker = _read_json(self._path(rank, "done"))
                if marker and marker.get("nonce") == self.nonce:
                    done[rank] = marker
                    continue
                failed = _read_json(self._path(rank, "failed"))
                if failed and failed.get("nonce") == self.nonce:
                    raise PeerError(f"process {rank} of {world} failed: {failed.get('error') or 'no message'}")
                try:
                    beat: str | None = self._path(rank, "alive").read_text(encoding="utf-8")
                except OSError:
                    beat = None
                previous = last_beat.get(rank)
                if previous is None or previous[0] != beat:
                    last_beat[rank] = (beat, now)
                    if previous is None and beat is None:
                        last_beat[rank] = (None, started)
                elif now - previous[1] > self.timeout:
                    if marker:  # a marker of an earlier launch with the same key, never replaced by this one
                        what = (f"finished another launch, not this one (give each run its own LLMKIT_RUN_ID, or "
                                f"remove {self.folder})")
                    elif beat is None:
                        what = f"never started (no heartbeat in {self.timeout:g} s)"
                    else:
                        what = f"stopped responding (no heartbeat for {self.timeout:g} s; killed or out of memory?)"
                    raise PeerError(f"process {rank} of {world} {what}; no output was written")
            if len(done) == world:
                return [done[r] for r in range(world)]
            time.sleep(POLL_SECONDS)

    def merged(self) -> Iterator[Any]:
        """(main rank) Every rank's records in input order, each input exactly once; cleans up at the end.

        Raises:
            PeerError: as `wait`, or shards that do not add up to the input (ranks read different inputs).
        """
        if not self.peers.is_main:
            raise RuntimeError("only the main process merges")
        if self.failed:
            raise RuntimeError("this rank failed; nothing to merge")
        try:
            markers = self.wait()
            counts = {m["seen"] for m in markers}
            if len(counts) != 1:
                seen = ", ".join(f"rank {m['rank']}: {m['seen']}" for m in markers)
                raise PeerError(f"the processes read different inputs ({seen} records); give every process the same --input FILE")
            (total,) = counts
            streams = [self._records(rank) for rank in range(self.peers.world_size)]
            expected = 0
            for index, record in heapq.merge(*streams, key=lambda pair: pair[0]):
                if index != expected:
                    raise PeerError(f"input {expected + 1} is {'missing' if index > expected else 'duplicated'} in the shards")
                expected += 1
                yield record
            if expected != total:
                raise PeerError(f"the shards hold {expected} of {total} records")
        finally:
            self.cleanup()

    def _records(self, rank: int) -> Iterator[tuple[int, Any]]:
        with open(self._path(rank, "jsonl"), encoding="utf-8") as handle:
            for line in handle:
                item = json.loads(line)
                yield item["i"], item["r"]

    def cleanup(self) -> None:
        """(main rank) Remove the shard folder (idempotent; also run at exit, whatever stopped the process)."""
        self._stop_heartbeat()
        for _ in range(3):  # a peer still finishing may add a file between rmtree's listing and its rmdir
            shutil.rmtree(self.folder, ignore_errors=True)
            if not self.folder.exists():
                break
            time.sleep(POLL_SECONDS)
        tempnames.forget_all(self.folder, tempnames.journal_dir())  # a killed peer's entry too
        atexit.unregister(self.cleanup)
        self.closed = True


def run_sharded(
    items: Iterable[T],
    work: Callable[[Iterator[T]], Iterable[Any]],
    *,
    peers: Peers | None = None,
    output: Path | None = None,
    total: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Iterator[Any] | None:
    """Run `work` on this rank's share of `items`; the main rank gets every rank's results in input order.

    Args:
        items: the whole input (every rank passes the same, in the same order).
        work: takes an iterator of this rank's items and yields one result per item, in order (it may read
            ahead). With several processes the results must be JSON values (they travel through files).
        peers: default `detect()`.
        output: the file the caller will write the merged results to (the shards go beside it); None: stdout.
        total: the number of items if known (a contiguous share per rank), else round-robin blocks.
        block_size: items per block when `total` is None.

    Returns:
        With one process, `work(items)` itself. With several: on the main rank an iterator of all results in
        input order (the shard folder is removed when it is exhausted or closed); on the other ranks None
        (they have nothing more to do).

    Raises:
        PeerError: another rank failed or vanished (main rank, while iterating).
    """
    peers = peers or detect()
    if not peers.distributed:
        if output is not None:  # a crashed launch for the same output may have left its shard folder
            _sweep_earlier_launches(output)
        return iter(work(iter(items)))
    run = ShardedRun(peers, output=output)
    with run:
        positions: deque[int] = deque()

        def mine() -> Iterator[T]:
            for index, item in run.shard(items, total=total, block_size=block_size):
                positions.append(index)
                yield item

        given = mine()
        for result in work(given):
            if not positions:
                raise RuntimeError("work yielded more results than it was given items")
            run.write(positions.popleft(), result)
        for _ in given:  # what the work never asked for still counts (and must be read: see Shard.seen)
            pass
        if positions:
            raise RuntimeError(f"work yielded no result for {len(positions)} of its items")
    return run.merged() if peers.is_main else None


# --- results through shard files ------------------------------------------------------------------------------


def rebuild(kind: Any, value: Any) -> Any:
    """A result dataclass back from `dataclasses.asdict` output that went through JSON (nested ones too).

    Task results (`Classification`, `MaskPrediction`, `Generation`) are frozen dataclasses of plain values; a
    peer writes `asdict(result)` to its shard and the main rank rebuilds the object, so it renders, evaluates
    and warns exactly as it does for its own results.

    Args:
        kind: the type to build (a dataclass, `list[X]`, `X | None`, a plain type).
        value: the JSON value.

    Returns:
        The rebuilt value.
    """
    import dataclasses
    import types
    import typing

    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        arms = [arm for arm in typing.get_args(kind) if arm is not type(None)]
        return rebuild(arms[0], value) if len(arms) == 1 else value
    if origin in (list, tuple) and isinstance(value, list):
        args = typing.get_args(kind)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(rebuild(arg, item) for arg, item in zip(args, value, strict=True))
        item_kind = args[0] if args else Any
        items = [rebuild(item_kind, item) for item in value]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        return kind(**{k: rebuild(hints.get(k, Any), v) for k, v in value.items() if k in names})  # type: ignore[operator]
    return value


def map_records(
    records: Iterable[Any],
    task: Callable[[Iterator[Any]], Iterable[Any]],
    *,
    record_type: type,
    result_type: type,
    peers: Peers | None = None,
    output: Path | None = None,
) -> Iterator[tuple[Any, Any]] | None:
    """`(record, result)` pairs for a command: its own with one process, everyone's on the main rank with several.

    Args:
        records: the command's input records (dataclasses, e.g. `data.InputRecord`), the same on every rank.
        task: takes an iterator of records and yields one result dataclass per record, in order (it may read
            ahead, as the batching task functions do).
        record_type / result_type: the dataclasses, to rebuild what peers wrote (see `rebuild`).
        peers: default `detect()`.
        output: the file the caller writes (shards go beside it); None for stdout.

    Returns:
        An iterator of `(record, result)` in input order; None on a rank other than the main one, which has
        written its share and has nothing left to do.
    """
    import dataclasses

    peers = peers or detect()

    def pairs(mine: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
        taken: deque[Any] = deque()

        def feed() -> Iterator[Any]:
            for record in mine:
                taken.append(record)
                yield record

        for result in task(feed()):
            if not taken:
                raise RuntimeError("the task yielded more results than it was given records")
            yield taken.popleft(), result

    if not peers.distributed:
        if output is not None:  # a crashed launch for the same output may have left its shard folder
            _sweep_earlier_launches(output)
        return pairs(iter(records))

    def work(mine: Iterator[Any]) -> Iterator[dict[str, Any]]:
        for record, result in pairs(mine):
            yield {"record": dataclasses.asdict(record), "result": dataclasses.asdict(result)}

    merged = run_sharded(records, work, peers=peers, output=output)
    if merged is None:
        return None
    return ((rebuild(record_type, item["record"]), rebuild(result_type, item["result"])) for item in merged)


# --- a barrier for code that holds a process group ------------------------------------------------------------


def barrier(peers: Peers, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Wait until every rank reached this point, through an initialised torch.distributed process group.

    Training runs have a process group (the Trainer's accelerator starts one): gloo's `monitored_barrier`
    names a rank that does not arrive within `timeout`; other backends use their own barrier and timeout.
    Sharded inference needs none: its main rank waits on files (`ShardedRun.wait`), with the same timeout.

    Args:
        peers: this process's `Peers`.
        name: what the barrier guards, for the error message.
        timeout: seconds to wait (gloo only).

    Returns:
        True when the ranks met through a process group; False when there is none (one process, or no group
        initialised), so the caller knows nothing was synchronised.

    Raises:
        PeerError: a rank did not arrive or the group broke (a peer died).
    """
    if not peers.distributed or "torch" not in sys.modules:
        return False
    import datetime

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout))
        else:
            dist.barrier()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerError(f"barrier {name!r}: {first}") from None
    return True
