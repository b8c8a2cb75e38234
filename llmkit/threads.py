"""CPU threads for torch: as many as there are free cores, not as many as there are cores.

torch starts one intra-op thread per core. When other processes keep those cores busy, its threads wait on each
other at every operator: classifying 200 tweets with MiniLM on a 2-core machine at load average 13 took 23.1 s
with 2 threads and 8.5 s with 1 (benchmarks/classify.py, 2026-11-28). On an idle machine this keeps every core.
"""

from __future__ import annotations

import os

THREADS_ENV = "LLMKIT_THREADS"  # an explicit thread count wins over the load-based choice


def free_cores(cpus: int | None = None, load: float | None = None) -> int:
    """Cores not kept busy by other processes: cpus minus the 1-minute load average, rounded, at least 1.

    Args:
        cpus: usable cores (default: the cores this process may run on).
        load: the load average (default: `os.getloadavg()[0]`; 0 where the platform has none).

    Returns:
        A thread count in 1..cpus.
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cpus, round(cpus - load)))


def use_free_cores() -> int:
    """Set torch's intra-op threads to `free_cores()` unless the user chose (LLMKIT_THREADS, OMP_NUM_THREADS).

    Returns:
        The thread count torch now uses.
    """
    import torch

    explicit = os.environ.get(THREADS_ENV)
    if explicit and explicit.isdigit() and int(explicit) > 0:
        torch.set_num_threads(int(explicit))
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(min(torch.get_num_threads(), free_cores()))
    return torch.get_num_threads()
