"""errors.explain: each library failure the user can fix gets llmkit's message (one formatter each, raised for real
where the machine allows it); anything else is said to be a bug, with where it happened and how to report it."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from llmkit import errors
from llmkit.errors import (
    EXIT_FAILURE,
    EXIT_MISSING_DEPENDENCY,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    InternalError,
    UsageError,
    explain,
)


def _raised(action) -> BaseException:
    """The exception `action()` raises (with its traceback, as the CLI boundary sees it)."""
    try:
        action()
    except BaseException as exc:  # noqa: BLE001 - the point is to catch whatever the library raises
        return exc
    raise AssertionError("expected an exception")


def test_gpu_out_of_memory() -> None:
    import torch

    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)")
    assert errors.format_gpu_out_of_memory(exc).message == (
        "the GPU ran out of memory; use a smaller --batch-size, a smaller model, or --dtype bfloat16, or --device cpu")
    # torch.OutOfMemoryError is a RuntimeError: the table must pick the memory message, not a later entry's
    assert explain(exc).message == errors.format_gpu_out_of_memory(exc).message


def test_cpu_out_of_memory_from_torchs_own_allocator() -> None:
    import torch

    exc = _raised(lambda: torch.empty(2**60, dtype=torch.uint8))  # torch's real message: DefaultCPUAllocator
    error = explain(exc)
    assert error.message == "out of memory; use a smaller --batch-size, a smaller model, or --dtype bfloat16"
    assert error.exit_code == EXIT_FAILURE
    assert explain(MemoryError()).message == error.message


def test_disk_full_from_dev_full() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")

    def write() -> None:
        with open("/dev/full", "w", encoding="utf-8") as handle:
            handle.write("x")

    exc = _raised(write)
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    assert explain(exc).message == "no space left on the disk; free some space, or write the output elsewhere"
    named = OSError(errno.ENOSPC, "No space left on device", "/data/out.csv")
    assert errors.format_disk_full(named).message == (
        "no space left on the disk writing /data/out.csv; free some space, or write the output elsewhere")


def test_permission_and_read_only() -> None:
    denied = PermissionError(errno.EACCES, "Permission denied", "/srv/models/out")
    error = explain(denied)
    assert error.message == "access to /srv/models/out is not permitted; check its permissions, or use another path"
    assert error.exit_code == EXIT_USAGE
    read_only = OSError(errno.EROFS, "Read-only file system", "/mnt/cd/out.csv")
    assert explain(read_only).message == (
        "access to /mnt/cd/out.csv is on a read-only file system; check its permissions, or use another path")


def test_damaged_safetensors_file(tmp_path: Path, tiny_classifier: Path) -> None:
    from safetensors import safe_open

    whole = (tiny_classifier / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    exc = _raised(lambda: safe_open(str(bad), framework="pt"))
    said = str(exc).splitlines()[0]
    assert said.startswith("Error while deserializing header")
    error = explain(exc)
    assert error.message == f"a weights file is damaged or incomplete ({said}); save or download the model again"
    assert error.exit_code == EXIT_NOT_FOUND


def test_weights_that_do_not_fit_the_config(tmp_path: Path, tiny_classifier: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    # transformers' real refusal: a 2-label checkpoint loaded as 3 labels without ignore_mismatched_sizes
    exc = _raised(lambda: AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier), num_labels=3))
    assert "ignore_mismatched_sizes" in str(exc)
    error = explain(exc)
    assert error.message == (
        "the model's weights do not have the shapes its config.json describes (e.g. a classifier head with another "
        "number of labels); save the model again with its own config")
    assert error.exit_code == EXIT_USAGE


def test_missing_package() -> None:
    exc = _raised(lambda: __import__("llmkit_no_such_package"))
    error = explain(exc)
    assert error.message == "the Python package llmkit_no_such_package is not installed; pip install llmkit_no_such_package"
    assert error.exit_code == EXIT_MISSING_DEPENDENCY
    peft = ModuleNotFoundError("No module named 'peft.tuners'", name="peft.tuners")
    assert explain(peft).message == "the Python package peft is not installed; pip install 'llmkit[train]'"


def test_gpu_runtime_failure() -> None:
    exc = RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be reported later")
    assert errors.format_gpu_failure(exc).message == (
        "the GPU reported an error (CUDA error: device-side assert triggered); run again with --device cpu")
    assert explain(exc).message == errors.format_gpu_failure(exc).message


def test_llmkit_errors_pass_through_unchanged() -> None:
    error = UsageError("give --labels")
    assert explain(error) is error


def _buggy() -> None:
    raise KeyError("column")


def test_an_unknown_exception_is_called_a_bug_with_where_and_how_to_report() -> None:
    exc = _raised(_buggy)
    error = explain(exc)
    assert isinstance(error, InternalError) and error.exit_code == EXIT_FAILURE
    assert re.fullmatch(
        r"llmkit \S+ stopped on an unexpected failure in test_errors\.py:\d+: 'column'\. This is a bug: run the "
        r"command again with LLMKIT_DEBUG=1 and report it with the traceback",
        error.message,
    ), error.message
    assert "KeyError" not in error.message


def test_a_library_bug_names_the_library_and_no_class() -> None:
    from transformers import AutoConfig

    exc = _raised(lambda: AutoConfig.for_model("no-such-model-type"))
    message = explain(exc).message
    assert re.match(r"llmkit \S+ stopped on an unexpected failure in transformers \(configuration_auto\.py:\d+\): "
                    r"Unrecognized model identifier: no-such-model-type\.", message), message
    assert len(message.splitlines()) == 1 and "ValueError" not in message
    assert "..." in message  # transformers' list of every model type is cut, not pasted whole


def test_an_exception_without_words_or_traceback() -> None:
    message = explain(AssertionError()).message
    assert re.fullmatch(r"llmkit \S+ stopped on an unexpected failure in llmkit\. This is a bug: .*", message), message


def test_library_words_quote_the_message_never_the_class() -> None:
    assert errors.library_words(RuntimeError("\n  first line  \nsecond")) == "first line"
    assert errors.library_words(RuntimeError()) == "no details given"
    assert errors.library_words(KeyError("")) == "''"  # what KeyError itself says: still no class name
    long = errors.library_words(ValueError("x" * 500))
    assert len(long) == errors.MESSAGE_CHARS and long.endswith("...")
