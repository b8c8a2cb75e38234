"""The files of an ONNX export: where exports live, what their manifest says, their checksums, and the exports
that failed (remembered so that --engine auto does not try them on every run).

An export is a folder under $LLMKIT_HOME/onnx/ named after the model, the head and a key of the model's files
(names, sizes, modification times), the head, FORMAT_VERSION and the versions of torch, transformers, onnx and
onnxruntime: a changed file or a new library makes a new key. It holds the graph (model.onnx), the tokenizer as
transformers built it (tokenizer.json) and a manifest (llmkit_onnx.json) with the checksum of each. A folder
written by `llmkit quantize --method onnx-int8` holds the same three files.

Below both engines/onnx.py (the runtime) and engines/onnx_export.py (the exporter); imports nothing heavy.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError

CACHE_DIR = "onnx"  # under $LLMKIT_HOME
MANIFEST = "llmkit_onnx.json"  # in an export (and in an onnx-int8 folder): what it is and its checksums
GRAPH = "model.onnx"
TOKENIZER = "tokenizer.json"
REFUSED_SUFFIX = ".refused.json"  # beside the exports: the export of that key failed, and why
FORMAT_VERSION = 1  # bump when the cache layout or the export recipe changes: old exports are then not found
# The heads an export serves and the graph output each one gives.
OUTPUTS = {"sequence-classification": "logits", "masked-lm": "logits", "base": "last_hidden_state"}
# Version of each library that shapes an export: a new one exports again.
VERSIONED = ("torch", "transformers", "onnx", "onnxruntime")
CHECKSUM_CHUNK = 1 << 22  # bytes read at a time for the checksum


class ExportError(UsageError):
    """The model could not be exported to ONNX (or the export did not match transformers): exit 2 when
    --engine onnx asked for it; --engine auto runs transformers instead and says why."""


@dataclass(frozen=True)
class Export:
    """An export (or an onnx-int8 folder) on disk and what its manifest says."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def graph(self) -> Path:
        return self.folder / GRAPH


def cache_root() -> Path:
    from llmkit.loading import llmkit_home

    return llmkit_home() / CACHE_DIR


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@functools.cache
def versions() -> dict[str, str]:
    """Installed versions of the libraries an export depends on (from their metadata: no import)."""
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cache_key(folder: Path, head: str) -> str:
    """The key of `folder`'s export for `head`: its files (name, size, modification time), the head, the
    library versions and FORMAT_VERSION. A changed file or a new library makes a new key."""
    parts = [f"format={FORMAT_VERSION}", f"head={head}", *(f"{k}={v}" for k, v in sorted(versions().items()))]
    for path in sorted(folder.iterdir()):
        if path.is_file():  # follows the hub cache's symlinks to the blobs
            stat = path.stat()
            parts.append(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def export_dir(folder: Path, head: str) -> Path:
    """Where the export of `folder` for `head` lives (it may not exist)."""
    name = folder.name if folder.name not in ("", "model") else folder.parent.name
    if len(folder.parts) >= 3 and folder.parent.name == "snapshots":  # hub cache: models--org--name/snapshots/<sha>
        name = folder.parent.parent.name.removeprefix("models--")
    short = {"sequence-classification": "cls", "masked-lm": "mlm", "base": "base"}[head]
    return cache_root() / f"{name}-{short}-{cache_key(folder, head)}"


def refused_marker(target: Path) -> Path:
    return target.parent / (target.name + REFUSED_SUFFIX)


def refusal(folder: Path, head: str) -> str | None:
    """Why the export of `folder` for `head` failed before (same files and versions), or None."""
    data = read_json(refused_marker(export_dir(folder, head)))
    return str(data.get("reason")) if data else None


def remember_refusal(target: Path, reason: str) -> None:
    """Write the refusal marker of an export that failed (atomically; a failure to write it is ignored)."""
    marker = refused_marker(target)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.pid{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"reason": reason, "versions": versions()}) + "\n", encoding="utf-8")
        os.replace(tmp, marker)
    except OSError:
        pass


def onnx_folder(folder: Path) -> Export | None:
    """The export a model folder itself holds (`quantize --method onnx-int8` output), or None."""
    manifest = read_json(folder / MANIFEST)
    if manifest is None or not (folder / GRAPH).is_file():
        return None
    return Export(folder, manifest)


# --- checksums ------------------------------------------------------------------------------------------------


def checksum(path: Path) -> str:
    """CRC-32 of a file, streamed (35 ms for MiniLM's 90 MB graph: cheap enough to check on every load)."""
    value = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHECKSUM_CHUNK):
            value = zlib.crc32(chunk, value)
    return f"crc32:{value:08x}"


def file_entry(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "checksum": checksum(path)}


def damage(export: Export) -> str | None:
    """What is wrong with an export's files (missing, wrong size or checksum), or None when they are intact."""
    files = export.manifest.get("files")
    if not isinstance(files, dict) or GRAPH not in files or TOKENIZER not in files:
        return "its manifest lists no files"
    for name, entry in files.items():
        path = export.folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("size"):
            return f"{name} has the wrong size"
        if checksum(path) != entry.get("checksum"):
            return f"{name} fails its checksum"
    return None


def cached_export(folder: Path, head: str) -> Export | None:
    """The intact cached export of `folder` for `head`, or None. A damaged one is deleted (and said once on
    stderr), so the caller exports again."""
    target = export_dir(folder, head)
    manifest = read_json(target / MANIFEST)
    if manifest is None:
        if target.exists():  # a folder without a readable manifest: damaged
            shutil.rmtree(target, ignore_errors=True)
        return None
    export = Export(target, manifest)
    broken = damage(export)
    if broken is None:
        return export
    from llmkit.console import warn

    warn(f"the cached ONNX export {target.name} is damaged ({broken}); exporting it again")
    shutil.rmtree(target, ignore_errors=True)
    return None


# --- `llmkit models`: list and remove exports --------------------------------------------------------------------


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_exports() -> list[dict[str, Any]]:
    """The cached exports as `llmkit models` rows (name, kind "onnx-export", size, path, what it is)."""
    root = cache_root()
    if not root.is_dir():
        return []
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = read_json(folder / MANIFEST) or {}
        what = f"ONNX export of {manifest.get('source', '?')} ({manifest.get('head', '?')})"
        rows.append({"name": folder.name, "kind": "onnx-export", "installed": True, "size_bytes": _tree_size(folder),
                     "path": str(folder), "description": what})
    return rows


def remove_export(name: str) -> tuple[str, int] | None:
    """Delete the export named `name` (and its refusal marker): (path, bytes freed), or None when no such
    export exists."""
    root = cache_root()
    target = root / name
    if "/" in name or name.startswith(".") or not target.is_dir():
        return None
    size = _tree_size(target)
    shutil.rmtree(target)
    refused_marker(target).unlink(missing_ok=True)
    return str(target), size


def clean_exports() -> list[tuple[str, int]]:
    """Delete every export and every refusal marker: (path, bytes freed) each."""
    root = cache_root()
    if not root.is_dir():
        return []
    freed = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue  # temporaries: tempnames' sweep decides which are stale
        size = _tree_size(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        freed.append((str(path), size))
    return freed
