"""stderr talk (progress, warnings, errors): below every module that reads or writes data, so all may use it.

stdout is data and lives in output.py; this module only talks to the person at the terminal.
"""

from __future__ import annotations

from typing import Any

_stderr: Any = None


def stderr_console() -> Any:
    """The rich console for progress, warnings and errors."""
    global _stderr
    if _stderr is None:
        from rich.console import Console

        _stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    return _stderr


def warn(message: str) -> None:
    """One warning line on stderr (the message is plain text: `llmkit[plot]` stays as written)."""
    from rich.markup import escape

    stderr_console().print(f"[yellow]Warning:[/yellow] {escape(message)}", markup=True, highlight=False)


def info(message: str) -> None:
    """One progress/status line on stderr, dimmed."""
    stderr_console().print(message, markup=False, highlight=False, style="dim")
