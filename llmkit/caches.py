"""Remove what `llmkit models` lists: `llmkit models --remove NAME` and `--clean` (as `hf cache delete`, `ollama rm`).

Converted GGUF caches (safetensors copies under $LLMKIT_HOME/converted/) and ONNX exports ($LLMKIT_HOME/onnx/,
see engines/onnx.py) are llmkit's own and go without asking;
Hugging Face cache entries go through huggingface_hub's own deletion (every revision of that repository);
built-in models are pip packages, so the answer for them is the pip command. `clean()` also removes the
temporaries of runs that were killed mid-write (see tempnames.py), wherever their output was going.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit import distributed, tempnames
from llmkit.errors import NotFoundError, UsageError

CONVERTED = "converted"  # under $LLMKIT_HOME: de-quantized GGUF caches


@dataclass(frozen=True)
class Freed:
    """One thing removed from disk, and the bytes that freed."""

    name: str
    kind: str  # "converted", "onnx-export", "hub-cache" or "stale-temporary"
    path: str
    size_bytes: int


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def listed() -> list[dict[str, Any]]:
    """What `llmkit models` lists: loading.list_models() (built-in aliases, converted GGUF caches, the Hugging Face
    cache) and the ONNX exports (engines/onnx_cache.py)."""
    from llmkit.engines import onnx_cache
    from llmkit.loading import list_models

    rows = list_models()
    hub = next((i for i, row in enumerate(rows) if row["kind"] == "hub-cache"), len(rows))
    return rows[:hub] + onnx_cache.list_exports() + rows[hub:]


def remove(name: str) -> list[Freed]:
    """Delete one model that `llmkit models` lists.

    Args:
        name: its name as listed (a converted cache folder name or a Hugging Face repo id).

    Returns:
        What was removed, with the bytes freed.

    Raises:
        UsageError: a built-in model (a pip package: the message names the pip command).
        NotFoundError: no listed model has that name (exit 3).
    """
    from llmkit.loading import BUNDLED

    rows = [row for row in listed() if row["name"] == name]
    if not rows:
        raise NotFoundError(f"no model named {name!r} in `llmkit models`; run it to see the names")
    row = rows[0]
    if row["kind"] == "built-in":
        distribution = next(m.distribution for m in BUNDLED.values() if m.alias == name)
        raise UsageError(f"{name} is a built-in model installed with pip; remove it with: pip uninstall {distribution}")
    if row["kind"] == "converted":
        path = Path(row["path"])
        size = _tree_size(path)
        shutil.rmtree(path)
        return [Freed(name, "converted", str(path), size)]
    if row["kind"] == "onnx-export":
        from llmkit.engines import onnx_cache

        gone = onnx_cache.remove_export(name)
        if gone is None:
            raise NotFoundError(f"the ONNX export {name} is no longer there")
        return [Freed(name, "onnx-export", gone[0], gone[1])]
    from huggingface_hub import constants, scan_cache_dir

    cache = scan_cache_dir(constants.HF_HUB_CACHE)  # read now: the function's own default is frozen at import
    repos = [r for r in cache.repos if r.repo_id == name and r.repo_type == "model"]
    if not repos:
        raise NotFoundError(f"{name} is no longer in the Hugging Face cache")
    strategy = cache.delete_revisions(*(rev.commit_hash for rev in repos[0].revisions))
    size = int(strategy.expected_freed_size)
    strategy.execute()
    return [Freed(name, "hub-cache", str(repos[0].repo_path), size)]


def clean() -> list[Freed]:
    """Delete every converted GGUF cache, every ONNX export (and remembered export failure) and every temporary
    left by a killed llmkit run.

    The Hugging Face cache is left alone (it is shared with other tools; `--remove NAME` takes one entry).

    Returns:
        What was removed, with the bytes each freed.
    """
    from llmkit.loading import llmkit_home

    freed = [
        Freed(Path(r.path).name, "stale-temporary", r.path, r.size_bytes)
        # a launch's shard folder is shared by its ranks: stale once no heartbeat in it moved for the peer timeout
        for r in tempnames.sweep_journal(tempnames.journal_dir(), shared_stale=distributed.shard_folder_stale)
    ]
    converted = llmkit_home() / CONVERTED
    freed += [
        Freed(Path(r.path).name, "stale-temporary", r.path, r.size_bytes) for r in tempnames.remove_stale(converted)
    ]
    if converted.is_dir():
        for folder in sorted(p for p in converted.iterdir() if p.is_dir() and not p.name.startswith(".")):
            size = _tree_size(folder)
            shutil.rmtree(folder)
            freed.append(Freed(folder.name, "converted", str(folder), size))
    from llmkit.engines import onnx_cache

    exports = onnx_cache.cache_root()
    freed += [Freed(Path(r.path).name, "stale-temporary", r.path, r.size_bytes) for r in tempnames.remove_stale(exports)]
    freed += [Freed(Path(path).name, "onnx-export", path, size) for path, size in onnx_cache.clean_exports()]
    return freed
