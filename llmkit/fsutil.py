"""File-system habits shared by every command that writes an output."""

from __future__ import annotations

import os
from pathlib import Path


def llmkit_home() -> Path:
    """Where llmkit keeps its own caches and its journal of temporaries: $LLMKIT_HOME, default ~/.cache/llmkit."""
    return Path(os.environ.get("LLMKIT_HOME") or Path.home() / ".cache" / "llmkit").expanduser()


def make_public(path: Path | str) -> None:
    """Give a temporary output the permissions a plain write would (mkstemp/mkdtemp make it private: 0600/0700).

    Call it on the temporary file or folder before renaming it into place, so the user's umask decides.
    """
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
