"""Errors users can act on, each with a documented exit code.

`cli.main()` turns an `LlmkitError` into one `Error: ...` line on stderr and its exit code; anything else is a
bug and exits 1 (with the traceback only under LLMKIT_DEBUG=1).
"""

from __future__ import annotations

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
