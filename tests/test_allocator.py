"""allocator.keep_freed_memory: freed blocks stay in the process, so allocating the same size again faults in
no new pages (what a training step does with its logits)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh process: malloc, touch, free a 64 MiB block 8 times; print the minor page faults it cost.
CHILD = """
import ctypes, resource, sys
from llmkit import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def once():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    once()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_new_page_faults() -> None:
    applied, kept = _faults("keep")
    _, plain = _faults("plain")
    assert applied == "True"
    pages = 8 * (64 << 20) // 4096
    assert plain >= pages // 2  # without it, every 64 MiB block is a fresh mmap faulted in page by page
    assert kept < pages // 20


def test_applies_once_and_answers_the_same() -> None:
    from llmkit import allocator

    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first
    assert first is sys.platform.startswith("linux")
