"""SIGTERM and SIGHUP handled as Ctrl-C is: an exception that unwinds the command, so its cleanup runs.

`timeout`, `kill`, systemd, Kubernetes, Slurm and the multi-process launchers (torchrun, `accelerate launch`) stop
a program with SIGTERM; a closed terminal sends SIGHUP. Python's default for both is to die on the spot, which
skips every `finally:` and leaves temporaries behind. Inside `handled()`, SIGINT, SIGTERM and SIGHUP raise
`Interrupted` in the main thread instead: a `KeyboardInterrupt`, so `except Exception` in library code does not
swallow it, and whatever already cleans up after Ctrl-C cleans up after the other two alike. The command line's
error boundary (llmkit/cli) turns it into one `Error: interrupted (SIGTERM)` line and the shell's convention for
a process stopped by a signal, 128 + its number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP).

Where stopping at an arbitrary bytecode would leave state that cannot be saved (a training step half applied),
`deferred()` holds the signal: `pending()` says one came, the code stops at its next safe point (training.py
saves a checkpoint there), and the block's end raises `Interrupted`. A long-running server passes `on_signal`
to `handled()` to be called instead (to drain), not interrupted.

Only the first signal counts: later ones are ignored while the first one's cleanup runs (a launcher's SIGTERM
often follows the terminal's SIGINT by milliseconds). SIGKILL cannot be caught; the next run for the same
output, or `llmkit models --clean`, removes what it left (see tempnames.py).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from llmkit.errors import EXIT_INTERRUPTED

# The signals that ask a program to stop and can be caught (SIGHUP does not exist on Windows).
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_received: int | None = None  # the first stop signal since `handled()` was entered
_deferring = 0  # depth of `deferred()` blocks
_callback: Callable[[int], None] | None = None


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (SIGINT, SIGTERM or SIGHUP); unwinds the program as Ctrl-C does.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def name(self) -> str:
        return signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """"SIGTERM" for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(exc: BaseException) -> int:
    """The exit code for an interruption: 128 + the signal (a plain KeyboardInterrupt is Ctrl-C: 130)."""
    return exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED


def describe(exc: BaseException) -> str:
    """"interrupted (SIGTERM)": what the error line says for an interruption."""
    name = exc.name if isinstance(exc, Interrupted) else "SIGINT"
    return f"interrupted ({name})"


def pending() -> int | None:
    """The stop signal received so far (inside `handled()`), or None."""
    return _received


def _handler(signum: int, frame: Any) -> None:
    global _received
    if _received is not None:
        return  # already stopping: let the first signal's cleanup finish
    _received = signum
    if _callback is not None:
        _callback(signum)
    elif not _deferring:
        raise Interrupted(signum)


@contextmanager
def handled(on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise `Interrupted` (or call `on_signal(signum)` instead).

    The previous handlers come back when the block ends. A signal the parent set to be ignored stays ignored
    (`nohup` ignores SIGHUP; a shell ignores SIGINT for its background jobs), as Python itself does for SIGINT.
    Outside the main thread (where Python cannot install handlers) the block runs unchanged.

    Args:
        on_signal: called with the signal's number instead of raising (a server that drains before it stops).
    """
    global _received, _callback
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    previous = {sig: handler for sig, handler in previous.items() if handler is not signal.SIG_IGN}
    saved = (_received, _callback)
    _received, _callback = None, on_signal
    try:
        for sig in previous:
            signal.signal(sig, _handler)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _received, _callback = saved


@contextmanager
def deferred() -> Iterator[None]:
    """Hold stop signals during the block: `pending()` says one came; the block's end raises `Interrupted`.

    For code with safe points to stop at (a training loop between steps), or main-thread waits inside a native
    library that would swallow the exception (llama.cpp's callbacks). Nested blocks raise at the outer end.
    Signals run on the main thread, so off it the block changes nothing. Without `handled()` around it (a Python
    caller that installed no handlers), signals keep their usual effect.

    Raises:
        Interrupted: a stop signal arrived during the block (raised when the block ends normally).
    """
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = _received  # a signal already being handled (this block runs in its cleanup) is not raised again
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _received is not None and before is None and not _deferring and _callback is None:
        raise Interrupted(_received)
