"""CPU training: keep freed memory in the process instead of handing it back to the OS after every step.

glibc's malloc serves each block above its mmap threshold (adaptive, at most 32 MiB by default) with a fresh
`mmap` and gives it back with `munmap` when freed. A training step allocates and frees tensors of that size
every time (the logits of 8 blocks x 128 tokens x 8,192 vocabulary entries are 32 MiB, and their gradient as
much again), so a step faults in, and the kernel zeroes, thousands of new pages. Measured on the tiny
causal-LM preset, one torch thread (benchmarks/pretrain_allocator.py, loaded machine): at vocabulary 8192,
33,800 minor page faults and 65 ms of system time per step of 282 ms CPU, against 645 faults, 2 ms and 215 ms
with the settings below; at 4096 (glibc's adaptive threshold catches more of the smaller logits) 4,500-8,300
faults and 9-19 ms, 170-194 ms against 157-163 ms. `llmkit pretrain` against a plain Trainer loop on the same
shapes (benchmarks/pretrain.py): 1.00x tokens per CPU-second before this, 1.20x with it (median of 3 rounds).
PyTorch's CPU performance guide gives the same reason for swapping in jemalloc or tcmalloc; `mallopt` gets
the effect from the allocator already loaded, with no preload.

The cost: memory freed by a step stays with the process for the next step, up to `RETAIN_BYTES` (the peak of
a step is needed again at once anyway). Only glibc (Linux) has `mallopt`; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>: free memory at the top of the heap kept before trimming
M_MMAP_THRESHOLD = -3  # glibc <malloc.h>: blocks at least this large get their own mmap
RETAIN_BYTES = 1 << 30  # 1 GiB: above any per-step tensor of the tiny and small presets

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to `RETAIN_BYTES` (once per process).

    Returns:
        True when glibc accepted both settings (now or earlier), False where there is no glibc `mallopt`.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES))
    return _applied
