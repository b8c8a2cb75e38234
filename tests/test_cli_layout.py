"""The CLI layer: one module per command, shared flags that agree, and the one error boundary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.cli import COMMANDS, load_command
from tests.helpers import invoke, json_lines

MODEL_COMMANDS = ["generate", "fill-mask", "classify", "embed", "finetune", "distill", "quantize"]


def _options(name: str) -> set[str]:
    return {opt for param in load_command(name).params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listing_help_is_the_docstring_first_line(name: str) -> None:
    command = load_command(name)
    assert command.help.strip().splitlines()[0] == COMMANDS[name][1]


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_every_model_command_has_the_loading_flags(name: str) -> None:
    assert {"--revision", "--allow-pickle", "--trust-remote-code", "--device"} <= _options(name)


@pytest.mark.parametrize("name", ["generate", "fill-mask", "classify", "embed", "finetune", "distill", "quantize"])
def test_text_column_is_spelt_the_same_everywhere(name: str) -> None:
    assert "--text-column" in _options(name)


@pytest.mark.parametrize("name", ["classify", "finetune", "distill", "quantize"])
def test_label_column_is_spelt_the_same_everywhere(name: str) -> None:
    assert "--label-column" in _options(name)


def test_old_spellings_stay_as_aliases() -> None:
    assert "--field" in _options("generate") and "--field" in _options("classify")
    assert "--label-field" in _options("quantize")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_misspelt_format_exits_2_naming_the_choices(name: str) -> None:
    args = [name, "--format", "jsno"]
    if name == "quantize":
        args += ["--method", "gguf", "-o", "x.gguf"]
    if name == "distill":
        args.insert(1, "data.csv")
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert "auto, json, text, rich" in result.output


def test_errors_are_one_line_without_traceback_unless_debugging(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    base = [sys.executable, "-m", "llmkit", "classify", "-m", str(tmp_path / "no-model"), "-i", str(missing)]
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_DEBUG"}
    quiet = subprocess.run(base, capture_output=True, text=True, env=env, check=False)
    assert quiet.returncode != 0
    assert quiet.stderr.startswith("Error:"), quiet.stderr
    assert "Traceback" not in quiet.stderr
    loud = subprocess.run(base, capture_output=True, text=True, env={**env, "LLMKIT_DEBUG": "1"}, check=False)
    assert loud.returncode == quiet.returncode
    assert "Traceback (most recent call last)" in loud.stderr
    assert "Error:" in loud.stderr


def _classifier_table(tmp_path: Path, first: str) -> Path:
    source = tmp_path / "in.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "id"])
        writer.writerows([[first, 1], ["a good film", 2], ["a bad film", 3]])
    return source


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_classify_output_columns_come_from_the_model_labels(tmp_path: Path, tiny_classifier: Path, suffix: str) -> None:
    """An empty first row must not drop the score columns of the rows after it (they used to follow row one)."""
    out = tmp_path / f"out{suffix}"
    result = invoke(["classify", "-m", str(tiny_classifier), "-i", str(_classifier_table(tmp_path, "")),
                     "--all-scores", "-o", str(out)])
    assert result.exit_code == 0, result.output
    if suffix == ".jsonl":
        rows = json_lines(out.read_text(encoding="utf-8"))
    else:
        with out.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
    assert len(rows) == 3
    from llmkit.loading import read_config

    labels = [read_config(str(tiny_classifier)).id2label[i] for i in range(2)]
    for row in rows:
        assert {f"score_{label}" for label in labels} <= set(row), row
    assert rows[0]["error"] == "empty input"
    assert all(row[f"score_{labels[0]}"] not in ("", None) for row in rows[1:])
    assert [str(r["id"]) for r in rows] == ["1", "2", "3"]


def test_outputs_follow_the_umask(tmp_path: Path, tiny_classifier: Path) -> None:
    out = tmp_path / "out.csv"
    old = os.umask(0o022)
    try:
        result = invoke(["classify", "-m", str(tiny_classifier), "-i", str(_classifier_table(tmp_path, "fine")),
                         "-o", str(out)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o644


def test_evaluate_json_report(tmp_path: Path, tiny_classifier: Path) -> None:
    source = tmp_path / "gold.csv"
    source.write_text("text,label\na good film,0\na bad film,1\n", encoding="utf-8")
    result = invoke(["classify", "-m", str(tiny_classifier), "-i", str(source), "--label-column", "label",
                     "--evaluate", "--json"])
    assert result.exit_code == 0, result.output
    (report,) = json_lines(result.stdout)
    assert report["count"] == 2 and 0.0 <= report["accuracy"] <= 1.0
    assert json.dumps(report)
