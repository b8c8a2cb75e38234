"""Small helpers shared by the CLI tests."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from llmkit.cli import app


def invoke(args: list[str], input: str | None = None) -> Any:
    """Run the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(app, args, input=input)


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]
