"""Runs the console examples of README.md and docs/ and compares what they print with what the page shows.

A page marks an example with `<!-- check -->` (or `<!-- check slow -->` for multi-minute training) on the line
before a ```console block. In the block, `$ ` starts a command (a line ending in `\\` continues it); the lines up
to the next command are its expected output, stdout and stderr together. The examples of one page run in order in
one scratch folder (so a later command sees the files an earlier one wrote) where `examples/` and `tests/` are
links to the repository's.

Expected and real output are compared line by line:
- a line `...` stands for any number of lines, and `...` inside a line for any text (timings, paths);
- two lines that both parse as JSON are compared as values: numbers to 1e-3 relative, and timing fields
  (`seconds`, `*_seconds`, `*_per_second`, `created`) not at all;
- any other line must be equal (trailing spaces aside).

    python tests/docs_examples.py [--update] [--slow] [PAGE ...]   # check (or rewrite the outputs of) pages

`--update` replaces each example's expected output by what it printed, unless the old one still matches (so the
`...` written by hand survive); read the diff before committing it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- check( slow)? -->\s*$")
ELLIPSIS = "..."
TIMING_KEYS = {"seconds", "tokens_per_second", "created"}
TIMING_SUFFIXES = ("_seconds", "_per_second")
LINKED = ("examples", "tests")  # repository folders the examples may read


@dataclass
class Command:
    line: int  # 1-based line of the `$ ` in its page
    text: str  # the shell command, continuation lines joined
    expected: list[str] = field(default_factory=list)


@dataclass
class Example:
    page: Path
    line: int  # 1-based line of the marker
    slow: bool
    commands: list[Command]
    start: int  # 0-based index of the block's first line after the fence
    end: int  # 0-based index of the closing fence


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse(page: Path) -> list[Example]:
    """The marked console examples of one page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i])
        if not m:
            i += 1
            continue
        fence = i + 1
        if fence >= len(lines) or lines[fence].strip() != "```console":
            raise ValueError(f"{page}:{i + 1}: <!-- check --> must be followed by a ```console block")
        end = fence + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end >= len(lines):
            raise ValueError(f"{page}:{fence + 1}: console block is not closed")
        commands: list[Command] = []
        j = fence + 1
        while j < end:
            if lines[j].startswith("$ "):
                text, first = lines[j][2:], j
                while text.endswith("\\") and j + 1 < end:
                    j += 1
                    text += "\n" + lines[j]  # bash joins a line ending in a backslash with the next
                commands.append(Command(first + 1, text))
            elif commands:
                commands[-1].expected.append(lines[j])
            else:
                raise ValueError(f"{page}:{j + 1}: a checked console block must start with a `$ ` command")
            j += 1
        examples.append(Example(page, i + 1, bool(m.group(1)), commands, fence + 1, end))
        i = end + 1
    return examples


def _number_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)


def same_json(expected: object, actual: object) -> bool:
    """JSON values equal up to number rounding, ignoring timing fields."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return False
        return all(
            k in TIMING_KEYS or k.endswith(TIMING_SUFFIXES) or same_json(expected[k], actual[k]) for k in expected
        )
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(same_json(e, a) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return _number_close(float(expected), float(actual))
    return expected == actual


def _json(line: str) -> object:
    line = line.strip()
    if not line or line[0] not in "{[":
        raise ValueError
    return json.loads(line)


def same_line(expected: str, actual: str) -> bool:
    """One expected line against one printed line (see the module docstring)."""
    expected, actual = expected.rstrip(), actual.rstrip()
    if ELLIPSIS in expected:
        pattern = ".*".join(re.escape(part) for part in expected.split(ELLIPSIS))
        return re.fullmatch(pattern, actual, re.S) is not None
    try:
        return same_json(_json(expected), _json(actual))
    except ValueError:
        return expected == actual


def same_output(expected: list[str], actual: list[str]) -> bool:
    """Expected lines (with `...` lines standing for any number of lines) against printed lines."""
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(expected):
                result = j == len(actual)
            elif expected[i].strip() == ELLIPSIS:
                result = go(i + 1, j) or (j < len(actual) and go(i, j + 1))
            else:
                result = j < len(actual) and same_line(expected[i], actual[j]) and go(i + 1, j + 1)
            memo[i, j] = result
        return memo[i, j]

    return go(0, 0)


def scratch(parent: Path | None = None) -> Path:
    """A fresh folder (under `parent`, else the temp folder) with links to the repository folders examples read."""
    folder = Path(tempfile.mkdtemp(prefix="llmkit-docs-", dir=parent))
    for name in LINKED:
        (folder / name).symlink_to(ROOT / name)
    return folder


def run(command: str, cwd: Path, timeout: float = 600) -> list[str]:
    """What `command` prints (stdout and stderr together), as lines, run by bash in `cwd`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"  # rich tables and progress bars at a fixed width, whatever the terminal
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    return proc.stdout.splitlines()


def check(examples: list[Example], cwd: Path) -> list[str]:
    """Run the examples in order in `cwd`; one message per command whose output differs from its page."""
    failures = []
    for example in examples:
        for command in example.commands:
            actual = run(command.text, cwd)
            if not same_output(command.expected, actual):
                failures.append(
                    f"{_shown(example.page)}:{command.line}: $ {command.text}\n--- page shows\n"
                    + "\n".join(command.expected) + "\n--- it printed\n" + "\n".join(actual)
                )
    return failures


def _shown(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def update(page: Path, slow: bool) -> int:
    """Rewrite the expected output of every (non-slow unless `slow`) example of `page`; the number changed."""
    lines = page.read_text(encoding="utf-8").splitlines()
    cwd, changed = scratch(), 0
    # run in page order (later commands may need earlier ones' files), then rewrite from the end
    outputs: list[tuple[Example, list[list[str]]]] = []
    for example in parse(page):
        if example.slow and not slow:
            outputs.append((example, [c.expected for c in example.commands]))
            continue
        outputs.append((example, [run(c.text, cwd) for c in example.commands]))
    for example, printed in reversed(outputs):
        body: list[str] = []
        for command, actual in zip(example.commands, printed, strict=True):
            keep = same_output(command.expected, actual)
            changed += not keep
            body += ["$ " + command.text] + (command.expected if keep else actual)
        lines[example.start:example.end] = body
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


def main(argv: list[str]) -> int:
    slow = "--slow" in argv
    chosen = [ROOT / a for a in argv if not a.startswith("--")] or pages()
    if "--update" in argv:
        for page in chosen:
            print(f"{_shown(page)}: {update(page, slow)} output(s) rewritten", file=sys.stderr)
        return 0
    failures = []
    for page in chosen:
        examples = [e for e in parse(page) if slow or not e.slow]
        if examples:
            failures += check(examples, scratch())
    print("\n\n".join(failures) or "all examples print what their pages show", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
