"""The README's command reference is the commands' own --help: it fails here when the two drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmkit.cli import COMMANDS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_has_a_help_block_per_command() -> None:
    text = README.read_text(encoding="utf-8")
    for name in ["llmkit", *COMMANDS]:
        assert f"<!-- help:{name} -->" in text and f"<!-- /help:{name} -->" in text, name


def test_readme_help_blocks_match_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "llmkit.cli.reference", "--check"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
