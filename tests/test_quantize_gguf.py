"""`quantize --method gguf` with the issue-14 additions: --imatrix, the engines named in the report, a killed run's
temporaries removed by the next run, and `models --remove` / `--clean` on the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import invoke

from llmkit import kquants, tempnames
from llmkit.errors import EXIT_NOT_FOUND, EXIT_USAGE

CALIBRATION = "the capital of france is paris . a good book and a great film . the dog and the cat .\n" * 20


@pytest.fixture(autouse=True)
def _short_speed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmkit import quantize as qz

    monkeypatch.setattr(qz, "SPEED_NEW_TOKENS", 4, raising=False)


def quantize_json(*args: str) -> dict:
    result = invoke(["quantize", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not kquants.available(), reason="llama.cpp bindings with ggml_quantize_chunk needed")
def test_imatrix_changes_the_written_blocks_and_is_recorded(tiny_causal_lm_bpe: Path, tmp_path: Path) -> None:
    import gguf
    import numpy as np

    calibration = tmp_path / "calibration.txt"
    calibration.write_text(CALIBRATION)
    plain = quantize_json("-m", str(tiny_causal_lm_bpe), "--method", "gguf", "--gguf-type", "q4_k_m",
                          "-o", str(tmp_path / "plain.gguf"))  # fmt: skip
    weighted = quantize_json("-m", str(tiny_causal_lm_bpe), "--method", "gguf", "--gguf-type", "q4_k_m",
                             "--imatrix", str(calibration), "-o", str(tmp_path / "weighted.gguf"))  # fmt: skip
    assert "imatrix_tokens" not in plain["settings"] and weighted["settings"]["imatrix_tokens"] > 50
    a = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "plain.gguf")).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "weighted.gguf")).tensors}
    # rows of 64 do not fit K super-blocks: Q5_0, as llama.cpp falls back; the imatrix weighs its rounding too
    assert a["blk.0.attn_q.weight"].tensor_type.name == "Q5_0"
    assert not np.array_equal(a["blk.0.attn_q.weight"].data, b["blk.0.attn_q.weight"].data)


def test_imatrix_refused_where_it_does_nothing(tiny_causal_lm_bpe: Path, tmp_path: Path) -> None:
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(CALIBRATION)
    for extra, message in (
        (["--method", "gguf", "--gguf-type", "q8_0", "-o", str(tmp_path / "a.gguf")], "changes nothing for f16/q8_0"),
        (["--method", "dynamic-int8", "-o", str(tmp_path / "b")], "--imatrix applies to --method gguf only"),
    ):
        result = invoke(["quantize", "-m", str(tiny_causal_lm_bpe), "--imatrix", str(calibration), *extra])
        assert result.exit_code == EXIT_USAGE, result.output
        assert message in result.stderr
    assert list(tmp_path.iterdir()) == [calibration]


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tiny_causal_lm_bpe: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.gguf"
    # A writer killed mid-write, as `kill -9` during quantize: its temporary and nested one stay behind.
    writer = (
        "import sys, time\nfrom pathlib import Path\nfrom llmkit import tempnames\n"
        "outer = tempnames.temp_file(Path(sys.argv[1]), '.gguf')\nouter.write_bytes(b'x' * 2000)\n"
        "inner = tempnames.temp_file(outer, '.tmp')\ninner.write_bytes(b'y' * 1000)\n"
        "print(outer, inner, flush=True)\ntime.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-c", writer, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    left = [Path(p) for p in proc.stdout.readline().split()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    other = tempnames.temp_file(tmp_path / "other.gguf", ".gguf")  # another output's (this process: alive)
    result = invoke(["quantize", "-m", str(tiny_causal_lm_bpe), "--method", "gguf", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in left)
    for path in left:
        assert f"Removed {path}" in result.stderr and f"left by process {proc.pid}" in result.stderr
    assert other.exists() and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["q.gguf", "q.report.json", other.name])


def test_models_remove_and_clean_say_what_they_freed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LLMKIT_HOME", str(home))
    for name, size in (("one-0001", 1000), ("two-0002", 3000)):
        (home / "converted" / name).mkdir(parents=True)
        (home / "converted" / name / "model.safetensors").write_bytes(b"w" * size)
    result = invoke(["models", "--remove", "one-0001", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["kind"] == "converted" and record["size_bytes"] == 1000
    assert not (home / "converted" / "one-0001").exists()
    result = invoke(["models", "--remove", "one-0001"])
    assert result.exit_code == EXIT_NOT_FOUND and "no model named 'one-0001'" in result.stderr
    result = invoke(["models", "--remove", "smollm2-135m-instruct"])
    assert result.exit_code == EXIT_USAGE and "pip uninstall" in result.stderr
    result = invoke(["models", "--clean", "--format", "rich"])
    assert result.exit_code == 0, result.output
    assert "two-0002 (converted): 3.0 KB freed" in result.stdout and "1 removed, 3.0 KB freed" in result.stdout
    assert list((home / "converted").iterdir()) == []
    result = invoke(["models", "--clean", "--format", "rich"])
    assert "Nothing to remove" in result.stdout


def test_a_gguf_llama_cpp_cannot_load_is_measured_de_quantized_and_no_copy_stays(
    tiny_causal_lm_bpe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmkit import llama_measure, loading
    from llmkit.engines.llama_cpp import EngineLoadError

    def refuse(*args: object, **kwargs: object) -> None:
        raise EngineLoadError("unknown tokenizer")

    monkeypatch.setattr(llama_measure, "measure_speed", refuse)
    out = tmp_path / "d.gguf"
    record = quantize_json("-m", str(tiny_causal_lm_bpe), "--method", "gguf", "-o", str(out))
    assert record["quantized"]["engine"] == "transformers (de-quantized)"
    assert record["kl_divergence"] is not None
    assert any("could not load" in note for note in record["notes"])
    assert not loading.converted_dir(out).exists()  # the float copy made for measuring is gone
    converted = loading.llmkit_home() / "converted"
    assert not converted.exists() or not [p for p in converted.iterdir() if p.name.startswith(".d.gguf")]
