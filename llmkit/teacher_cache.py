"""Teacher outputs on disk (`llmkit distill --cache-teacher`), so later epochs and reruns skip the teacher.

The teacher runs once over the training examples, in order, without gradients; each example's outputs are
kept unpadded (logits, and the mapped hidden states / attention maps when those losses are on) in one
safetensors file under $LLMKIT_HOME/teacher-cache/, named by a digest of everything that decides them: the
teacher's files, the task, the token ids of every example and which extra outputs were asked for. A rerun on
the same data finds the file; any change gives a new name, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmkit import tempnames
from llmkit.fsutil import llmkit_home

CACHE_VERSION = "1"  # bump when the stored layout changes
CACHE_BATCH_SIZE = 16  # examples per teacher forward pass while filling the cache


def teacher_fingerprint(location: str | Path) -> str:
    """Names, sizes and modification times of a local model folder's files (cheap; no hashing of weights)."""
    path = Path(location)
    if not path.is_dir():
        return str(location)
    parts = [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.iterdir()) if p.is_file()
    ]
    return f"{path.resolve()}|" + "|".join(parts)


def cache_key(fingerprint: str, task: str, examples: Sequence[dict[str, Any]], extras: dict[str, Any]) -> str:
    """The digest that names a cache file."""
    digest = hashlib.sha256()
    digest.update(f"{CACHE_VERSION}|{fingerprint}|{task}|{json.dumps(extras, sort_keys=True)}".encode())
    for example in examples:
        digest.update(json.dumps([example["input_ids"], example.get("mlm_labels")]).encode())
    return digest.hexdigest()[:20]


def cache_path(key: str) -> Path:
    return llmkit_home() / "teacher-cache" / f"{key}.safetensors"


def load_or_fill(
    key: str,
    count: int,
    run_teacher: Callable[[list[int]], list[dict[str, Any]]],
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """The cached teacher outputs for examples 0..count-1, computing and storing them when missing.

    Args:
        key: from `cache_key`.
        count: number of examples.
        run_teacher: example ids -> a dict of unpadded tensors per example ("logits", "hidden", "attention").
        on_progress: called with (done, count) while filling.

    Returns:
        ({"<name>.<id>": tensor}, hit) where hit says whether the file already existed.
    """
    from safetensors.torch import load_file, save_file

    path = cache_path(key)
    if path.exists():
        return load_file(str(path)), True
    tensors: dict[str, Any] = {}
    for start in range(0, count, CACHE_BATCH_SIZE):
        ids = list(range(start, min(count, start + CACHE_BATCH_SIZE)))
        for example_id, outputs in zip(ids, run_teacher(ids), strict=True):
            for name, tensor in outputs.items():
                tensors[f"{name}.{example_id}"] = tensor.detach().to("cpu").contiguous()
        if on_progress:
            on_progress(ids[-1] + 1, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name (tempnames' rule), then renamed: a stopped run never leaves a truncated
    # cache behind, and a killed one's temporary is removed by the next fill or `llmkit models --clean`.
    journal = tempnames.journal_dir()
    tempnames.sweep(path, journal=journal)
    with tempnames.replacing(path, suffix=".tmp", journal=journal) as tmp:
        save_file(tensors, str(tmp))
    return tensors, False


def estimate_bytes(count: int, mean_length: float, width: int, task: str) -> int:
    """Rough size of the logits part of a cache (float32), to warn before filling a huge one."""
    per_example = width if task == "classification" else mean_length * width
    return int(count * per_example * 4)
