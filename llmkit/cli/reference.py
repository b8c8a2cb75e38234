"""The README's command reference, rendered from `--help` so it cannot drift (as llm does with cog).

    python -m llmkit.cli.reference          # rewrite the blocks in README.md
    python -m llmkit.cli.reference --check  # exit 1 if README.md differs (tests/test_readme.py runs this check)

Each block sits between `<!-- help:NAME -->` and `<!-- /help:NAME -->` markers; NAME is `llmkit` or a command.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

WIDTH = 120  # columns the help is rendered at: fixed, so the output does not depend on the terminal

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"(<!-- help:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /help:(?P=name) -->)", re.S)


def render(name: str) -> str:
    """`llmkit NAME --help` (or `llmkit --help` for NAME "llmkit") as plain text at WIDTH columns."""
    import typer.rich_utils as rich_utils
    from typer.testing import CliRunner

    from llmkit.cli import app

    rich_utils.MAX_WIDTH, rich_utils.COLOR_SYSTEM, rich_utils.FORCE_TERMINAL = WIDTH, None, False
    args = ["--help"] if name == "llmkit" else [name, "--help"]
    result = CliRunner().invoke(app, args, prog_name="llmkit", env={"TERMINAL_WIDTH": str(WIDTH)})
    if result.exit_code != 0:
        raise RuntimeError(f"llmkit {' '.join(args)} failed: {result.output}")
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    return "\n".join(lines).strip("\n") + "\n"


def rewrite(text: str) -> str:
    """README text with every help block replaced by the current help."""
    return BLOCK.sub(lambda m: f"{m.group(1)}```text\n{render(m.group('name'))}```\n{m.group(4)}", text)


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    new = rewrite(text)
    if "--check" in argv:
        if new != text:
            print("README.md help blocks are out of date: run `python -m llmkit.cli.reference`", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
