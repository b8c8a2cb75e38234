"""The scoring rules of benchmarks/quality.py (pure functions; no model, no download)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _quality():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("quality_bench", BENCH / "quality.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = _quality()


@pytest.mark.parametrize(
    ("text", "accepted", "expected"),
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("the capital of france is paris", ["Paris"], True),  # case-insensitive
        ("Dried plums are called prunes.", ["prune"], True),  # plurals count
        ("They are called Prunella.", ["prune"], False),  # whole words only
        ("It was in the year 2012.", ["12", "twelve"], False),  # digits must stand alone
        ("There are 12 signs.", ["12", "twelve"], True),
        ("Because of the rain.", ["Au"], False),  # not inside a word
        ("Its symbol is Au.", ["Au"], True),
        ("He was called Leonardo.", ["da Vinci", "Leonardo"], True),  # any accepted spelling
        ("", ["Paris"], False),
    ],
)
def test_answer_matches(text: str, accepted: list[str], expected: bool) -> None:
    assert quality.answer_matches(text, accepted) is expected


def test_wilson_interval_known_values() -> None:
    low, high = quality.wilson(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    low, high = quality.wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775  # never a zero-width interval at the edge
    assert quality.wilson(0, 0) == (0.0, 1.0)


def test_facts_file_has_enough_checkable_prompts() -> None:
    rows = [json.loads(line) for line in (BENCH / "data" / "facts.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) >= 50 and len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert row["accept"] and all(isinstance(a, str) and a.strip() for a in row["accept"])
        assert ("prompt" in row) != (row["source"] == "chatterbot-trivia")  # trivia text is fetched, not committed


def test_results_merge_keeps_other_sections(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    quality.write_results(out, {"generate": {"rows": [1]}})
    quality.write_results(out, {"zeroshot": {"rows": [2]}})
    merged = json.loads(out.read_text())
    assert merged["sections"] == {"generate": {"rows": [1]}, "zeroshot": {"rows": [2]}}
    assert not list(tmp_path.glob("*.tmp"))
