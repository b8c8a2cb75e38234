"""Errors users can act on, each with a documented exit code, and the table that turns library failures into them.

`cli.main()` turns an `LlmkitError` into one `Error: ...` line on stderr and its exit code. Any other exception
goes through `explain()`: a failure the libraries below raise for a reason the user can fix (memory, disk,
permissions, a damaged weights file, a missing package) gets its llmkit message from `LIBRARY_ERRORS`; anything
else is a bug, said as such in one line that asks for LLMKIT_DEBUG=1's traceback (exit 1). Torch-free at import:
library exceptions are recognised by their class names, not imported.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

# Exit codes, documented in docs/concepts/exit-codes.md (and the signals in docs/interruptions.md).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_MISSING_DEPENDENCY = 4
EXIT_QUALITY_GATE = 5
EXIT_BATCH_LINES_FAILED = 6  # generate on an OpenAI batch file: output complete, some lines carry an error
# Stopped by a signal (llmkit/signals.py): 128 + its number, as a shell reports a process the signal killed. The
# command stops, removes its own temporaries and prints one `Error: interrupted (SIGxxx)` line.
EXIT_HANGUP = 129  # SIGHUP: the terminal went away
EXIT_INTERRUPTED = 130  # SIGINT: Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM: kill, timeout, systemd, Kubernetes, Slurm, a multi-process launcher


class LlmkitError(Exception):
    """Base class: a message that says what to do next, and an exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(LlmkitError):
    """Impossible settings or malformed input (exit 2)."""

    exit_code = EXIT_USAGE


class ContextLengthError(UsageError):
    """A prompt, or its answer, did not fit the model's context (exit 2); never a silently short answer."""


class NotFoundError(LlmkitError):
    """A model, file or column that does not exist (exit 3)."""

    exit_code = EXIT_NOT_FOUND


class ModelNotFoundError(NotFoundError):
    """A model spec that resolves to nothing loadable (exit 3)."""


class DataError(UsageError):
    """Input data that cannot be used as given (exit 2)."""


class MissingDependencyError(LlmkitError):
    """An optional extra or hardware back-end that is not available (exit 4)."""

    exit_code = EXIT_MISSING_DEPENDENCY


class QualityGateError(LlmkitError):
    """A result that failed a quality gate such as `quantize --max-drop` (exit 5)."""

    exit_code = EXIT_QUALITY_GATE


class InternalError(LlmkitError):
    """An exception llmkit did not expect: a bug, reported as one (exit 1)."""


DEBUG_ENV = "LLMKIT_DEBUG"  # set to 1 for the traceback behind an error
MESSAGE_CHARS = 200  # a library's own words quoted in an llmkit message are cut to this many characters
_FIX_MEMORY = "use a smaller --batch-size, a smaller model, or --dtype bfloat16"


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of the exception's message, cut to MESSAGE_CHARS ("" when it has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def library_words(exc: BaseException) -> str:
    """A library exception's own words, to quote inside an llmkit message: its first line cut to MESSAGE_CHARS, or
    "no details given" when it has none. Never its class name: `RuntimeError` tells a user nothing to do."""
    return _first_line(exc) or "no details given"


def _is(exc: BaseException, *names: str) -> bool:
    """True when the exception's class or one of its bases has one of these names (torch, safetensors and the
    like are recognised without importing them)."""
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _says(exc: BaseException, *phrases: str) -> bool:
    text = str(exc)
    return any(phrase in text for phrase in phrases)


# --- the formatters, one per known library failure (each unit-tested in tests/test_errors.py) --------------------


def format_gpu_out_of_memory(exc: BaseException) -> LlmkitError:
    """torch.OutOfMemoryError: the accelerator's memory is full."""
    return LlmkitError(f"the GPU ran out of memory; {_FIX_MEMORY}, or --device cpu")


def format_out_of_memory(exc: BaseException) -> LlmkitError:
    """MemoryError, or torch's CPU allocator failing: the machine's memory is full."""
    return LlmkitError(f"out of memory; {_FIX_MEMORY}")


def format_disk_full(exc: BaseException) -> LlmkitError:
    """ENOSPC / EDQUOT while writing."""
    where = f" writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
    return LlmkitError(f"no space left on the disk{where}; free some space, or write the output elsewhere")


def format_permission(exc: BaseException) -> LlmkitError:
    """EACCES / EPERM / EROFS: a file or folder llmkit may not read or write."""
    path = exc.filename if isinstance(exc, OSError) and exc.filename else "a file"
    verb = "is on a read-only file system" if isinstance(exc, OSError) and exc.errno == errno.EROFS \
        else "is not permitted"
    return LlmkitError(f"access to {path} {verb}; check its permissions, or use another path", exit_code=EXIT_USAGE)


def format_damaged_weights(exc: BaseException) -> LlmkitError:
    """safetensors cannot read a weights file: truncated or damaged."""
    return LlmkitError(
        f"a weights file is damaged or incomplete ({_first_line(exc)}); save or download the model again",
        exit_code=EXIT_NOT_FOUND,
    )


def format_weights_config_mismatch(exc: BaseException) -> LlmkitError:
    """transformers refuses weights whose shapes differ from what config.json asks for."""
    return LlmkitError(
        "the model's weights do not have the shapes its config.json describes (e.g. a classifier head with "
        "another number of labels); save the model again with its own config",
        exit_code=EXIT_USAGE,
    )


# import name -> the llmkit extra that installs it (pyproject.toml's optional dependencies)
EXTRAS = {"peft": "train", "sklearn": "train", "torchao": "quant", "xllamacpp": "llama"}


def format_missing_module(exc: BaseException) -> LlmkitError:
    """An import of a package that is not installed (most often an optional extra)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not name:
        return MissingDependencyError(f"a Python package is missing ({_first_line(exc)}); reinstall llmkit")
    fix = f"pip install 'llmkit[{EXTRAS[name]}]'" if name in EXTRAS else f"pip install {name}"
    return MissingDependencyError(f"the Python package {name} is not installed; {fix}")


def format_gpu_failure(exc: BaseException) -> LlmkitError:
    """A CUDA/accelerator runtime error (driver, device-side assert)."""
    return LlmkitError(f"the GPU reported an error ({_first_line(exc)}); run again with --device cpu")


# (recognises, formatter): the first entry that recognises an exception explains it. Order matters where one
# failure is a kind of another (torch.OutOfMemoryError is a RuntimeError).
LIBRARY_ERRORS: tuple[tuple[Callable[[BaseException], bool], Callable[[BaseException], LlmkitError]], ...] = (
    (lambda e: _is(e, "OutOfMemoryError") or _says(e, "CUDA out of memory"), format_gpu_out_of_memory),
    (lambda e: isinstance(e, MemoryError) or _says(e, "DefaultCPUAllocator: can't allocate memory"),
     format_out_of_memory),
    (lambda e: isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT), format_disk_full),
    (lambda e: isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS), format_permission),
    (lambda e: _is(e, "SafetensorError") or _says(e, "Error while deserializing header"), format_damaged_weights),
    (lambda e: _says(e, "ignore_mismatched_sizes"), format_weights_config_mismatch),
    (lambda e: isinstance(e, ModuleNotFoundError), format_missing_module),
    (lambda e: _is(e, "AcceleratorError") or _says(e, "CUDA error:"), format_gpu_failure),
)


def _origin(exc: BaseException) -> str:
    """Where the exception was raised, for a bug report: `transformers (modeling_utils.py:4689)`."""
    import traceback
    from pathlib import PurePath

    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if not frames:
        return "llmkit"
    last = frames[-1]
    path = PurePath(last.filename)
    place = f"{path.name}:{last.lineno}"
    if PurePath(__file__).parent in path.parents:
        return f"llmkit ({place})"
    for marker in ("site-packages", "dist-packages"):
        if marker in path.parts[:-2]:
            return f"{path.parts[path.parts.index(marker) + 1]} ({place})"
    return place


def unexpected_message(exc: BaseException) -> str:
    """One line for an exception nothing recognises: where it happened, its words, and how to report it."""
    from llmkit import __version__

    words = _first_line(exc)
    said = f": {words}" if words else ""
    return (
        f"llmkit {__version__} stopped on an unexpected failure in {_origin(exc)}{said}. This is a bug: run the "
        f"command again with {DEBUG_ENV}=1 and report it with the traceback"
    )


def explain(exc: BaseException) -> LlmkitError:
    """The llmkit error to show for any exception that reached the user.

    Args:
        exc: the exception.

    Returns:
        `exc` itself when it is an LlmkitError; the message of the first `LIBRARY_ERRORS` entry that recognises it;
        else an InternalError saying it is a bug (exit 1).
    """
    if isinstance(exc, LlmkitError):
        return exc
    for recognises, formatter in LIBRARY_ERRORS:
        if recognises(exc):
            return formatter(exc)
    return InternalError(unexpected_message(exc))
