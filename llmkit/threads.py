"""CPU threads for torch and llama.cpp: as many as there are free cores, not as many as there are cores.

torch starts one intra-op thread per core. When other processes keep those cores busy, its threads wait on each
other at every operator: classifying 200 tweets with MiniLM on a 2-core machine at load average 13 took 23.1 s
with 2 threads and 8.5 s with 1 (benchmarks/classify.py, 2026-11-28). On an idle machine this keeps every core.
"""

from __future__ import annotations

import os
import time

THREADS_ENV = "LLMKIT_THREADS"  # an explicit thread count wins over the load-based choice
SAMPLE_SECONDS = 0.03  # how long busy cores are sampled from /proc/stat


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is none (macOS, Windows)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


MARK_MAX_AGE = 5.0  # a start-of-process mark older than this is stale: sample afresh
_mark: tuple[float, float, tuple[int, int]] | None = None  # (wall time, own CPU seconds, /proc/stat) at start


def mark() -> None:
    """Take the first /proc/stat reading now (the command line calls this on entry).

    `busy_cores` then measures from here to when it is asked, so the window is the start-up (imports, parsing),
    which the process spends anyway, instead of a 30 ms sleep; the process's own CPU time in that window is
    taken out, so it does not count itself.
    """
    global _mark
    first = _cpu_times()
    _mark = None if first is None else (time.perf_counter(), time.process_time(), first)


def busy_cores(cpus: int, seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores that other processes keep busy right now: /proc/stat over at least `seconds`, less this process's
    own CPU time. None where /proc/stat is missing.

    The window starts at `mark()` when that is recent (the start of the command), else now (this process then
    sleeps out the window). The 1-minute load average is not used where /proc/stat exists: it lags by a minute,
    so a command run right after another one (a shell loop, back-to-back benchmarks) saw the previous run's load
    and took one thread on an idle 2-core machine (llama.cpp generated 47 tokens/s with 1 thread and 80 with 2
    on 64 prompts, 2026-11-28).
    """
    now = time.perf_counter()
    if _mark is not None and now - _mark[0] <= MARK_MAX_AGE:
        started, own, first = _mark
    else:
        started, own, first = now, time.process_time(), _cpu_times()  # type: ignore[assignment]
    if first is None:
        return None
    left = seconds - (time.perf_counter() - started)
    if left > 0:
        time.sleep(left)
    second = _cpu_times()
    own = time.process_time() - own
    if second is None or second[1] <= first[1]:
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = max(0.0, second[0] - first[0] - own * ticks)
    return others / (second[1] - first[1]) * (os.cpu_count() or cpus)


def free_cores(cpus: int | None = None, load: float | None = None) -> int:
    """Cores not kept busy by other processes: cpus minus the busy cores, rounded, at least 1.

    Args:
        cpus: usable cores (default: the cores this process may run on).
        load: busy cores (default: `busy_cores()`, sampled now; where /proc/stat is missing, the 1-minute load
            average; 0 where the platform has neither).

    Returns:
        A thread count in 1..cpus.
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = busy_cores(cpus)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cpus, round(cpus - load)))


def requested_threads() -> int | None:
    """$LLMKIT_THREADS as a thread count, or None when unset.

    Raises:
        UsageError: not a whole number of at least 1.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        from llmkit.errors import UsageError

        raise UsageError(f"{THREADS_ENV}={value!r}: give a whole number of threads, at least 1")
    return int(value)


def pick_threads() -> int:
    """Threads for llama.cpp: $LLMKIT_THREADS, else `free_cores()`.

    llama.cpp's threads spin while they wait for each other, so one that shares its core with another busy
    process stalls every token: on 2 cores with other work running, 1 thread measured 24.7 tokens/s against
    4.4 for 2 threads.
    """
    requested = requested_threads()
    return requested if requested is not None else free_cores()


def cpu_threads() -> int:
    """Threads for CPU work outside torch (the ONNX engine's batches at once): $LLMKIT_THREADS, else
    $OMP_NUM_THREADS, else `free_cores()`."""
    requested = requested_threads()
    if requested is not None:
        return requested
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    return free_cores()


def use_free_cores() -> int:
    """Set torch's intra-op threads to `free_cores()` unless the user chose (LLMKIT_THREADS, OMP_NUM_THREADS).

    Returns:
        The thread count torch now uses.
    """
    import torch

    requested = requested_threads()
    if requested is not None:
        torch.set_num_threads(requested)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(min(torch.get_num_threads(), free_cores()))
    return torch.get_num_threads()
