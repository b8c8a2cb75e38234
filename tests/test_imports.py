"""`llmkit --help` must stay instant: neither torch nor transformers may be imported for it."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
from typer.testing import CliRunner
from llmkit.cli import app
result = CliRunner().invoke(app, {args!r})
assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
heavy = sorted(m for m in ("torch", "transformers", "datasets", "accelerate") if m in sys.modules)
print(",".join(heavy) or "none")
"""


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["models", "--help"], ["--version"]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK.format(args=args)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none"


def test_every_command_help_is_light() -> None:
    from llmkit.cli import COMMANDS

    for name in COMMANDS:
        proc = subprocess.run(
            [sys.executable, "-c", CHECK.format(args=[name.replace("_", "-"), "--help"])],
            capture_output=True, text=True, check=False,
        )
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout.strip() == "none", name


LISTING = """
import sys
from typer.testing import CliRunner
from llmkit.cli import app
result = CliRunner().invoke(app, ["--help"])
assert result.exit_code == 0, result.output
print(",".join(sorted(m for m in sys.modules if m.startswith("llmkit.") and m != "llmkit.errors")))
"""


def test_top_level_help_imports_no_command_module() -> None:
    """The command list comes from the static table in llmkit.cli, not from importing every command."""
    proc = subprocess.run([sys.executable, "-c", LISTING], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "llmkit.cli"


PYDANTIC = """
import sys
from typer.testing import CliRunner
from llmkit.cli import app
result = CliRunner().invoke(app, {args!r})
assert result.exit_code == 0, result.output
print("pydantic" in sys.modules)
"""


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["finetune", "--help"], ["--version"]])
def test_help_does_not_import_pydantic(args: list[str]) -> None:
    """typer coerces values through pydantic adapters; importing pydantic was half of `llmkit COMMAND --help`."""
    proc = subprocess.run([sys.executable, "-c", PYDANTIC.format(args=args)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_embed_help_does_not_import_numpy() -> None:
    """`llmkit embed --help` stays as light as the other commands' (numpy loads with the model)."""
    code = ("import sys\nfrom llmkit.cli import load_command\nload_command('embed')\n"
            "print(sorted(m for m in ('numpy', 'torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
