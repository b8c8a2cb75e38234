"""The `llmkit` command line: a lazy group of one module per command, and the one error boundary.

`llmkit --help` lists the commands from the table below without importing any command module; `llmkit CMD`
imports `llmkit.cli.CMD` alone. No torch or transformers import happens before a command runs.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from llmkit import __version__
from llmkit.errors import DEBUG_ENV, LlmkitError, explain

# name -> (module, the first line of its docstring). tests/test_cli_layout.py checks that the two agree.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "llmkit.cli.generate",
        "Generate text with a causal LM or an encoder-decoder model (default: the bundled SmolLM2 instruct model).",
    ),
    "fill-mask": (
        "llmkit.cli.fill_mask",
        "Fill the [MASK] in each sentence: per mask the top-k tokens, their probabilities and the filled sentence.",
    ),
    "classify": ("llmkit.cli.classify", "Label texts with a text-classification model, or zero-shot with --labels."),
    "embed": (
        "llmkit.cli.embed",
        "Embed texts as vectors (default: the bundled all-MiniLM-L6-v2), or search them with --query.",
    ),
    "finetune": (
        "llmkit.cli.finetune",
        "Fine-tune a model on a table with the transformers Trainer; the output loads in the other commands.",
    ),
    "distill": (
        "llmkit.cli.distill",
        "Distill a teacher into a smaller, faster student, and report both side by side.",
    ),
    "pretrain": (
        "llmkit.cli.pretrain",
        "Pre-train a small BERT-style encoder (ModernBERT, masked LM) or Llama-style GPT (causal LM) from nothing.",
    ),
    "plot": (
        "llmkit.cli.plot",
        "Draw training curves from finetune, distill or pretrain outputs (report.json) into a PNG, several runs overlaid.",
    ),
    "quantize": (
        "llmkit.cli.quantize",
        "Quantize a model (smaller, often faster) and report what it cost: size, load time, speed and quality.",
    ),
    "serve": (
        "llmkit.cli.serve",
        "Serve models over an OpenAI-compatible HTTP API (chat, completions, embeddings, models, health, metrics).",
    ),
    "models": (
        "llmkit.cli.models",
        "List the built-in models (installed or not), converted GGUF caches, ONNX exports and Hugging Face models.",
    ),
}


def load_command(name: str) -> Any:
    """The click command of `name`, importing its module (and only it)."""
    module = importlib.import_module(COMMANDS[name][0])
    command = typer.main.get_command(module.app)
    command.name = name
    return command


class _LazyBoundary(TyperGroup):
    """Imports a command's module only when it runs or shows its help; turns every error into one line."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:  # the group's own --help needs each command's one-line help, not the command
            from typer.core import TyperCommand

            return TyperCommand(cmd_name, help=COMMANDS[cmd_name][1])
        return load_command(cmd_name)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None and not getattr(option, "_plain_flag", False):
            # `llmkit COMMAND ...` leaves the group's own --help unset (None), and typer builds a pydantic
            # adapter to coerce that None: importing pydantic was half of `llmkit COMMAND --help`. A flag is a bool.
            process = option.process_value
            setattr(option, "process_value", lambda ctx, value: process(ctx, bool(value)))  # noqa: B010
            setattr(option, "_plain_flag", True)  # noqa: B010
        return option

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def invoke(self, ctx: Any) -> Any:
        from llmkit import signals
        from llmkit.loading import quiet_library_logs

        quiet_library_logs()  # torchao's and torch's import-time warnings, whichever path imports them first
        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        # SIGTERM and SIGHUP unwind the command as Ctrl-C does, so every `finally:` removes its temporaries.
        with signals.handled():
            try:
                return super().invoke(ctx)
            except (typer.Exit, typer.Abort, TyperException):  # typer's own usage errors and exits
                raise
            except LlmkitError as exc:
                if debug:
                    traceback.print_exc()
                _error_line(exc.message)
                raise typer.Exit(exc.exit_code) from None
            except BrokenPipeError:
                from llmkit.output import silence_stdout_after_broken_pipe

                # The reader went away (`| head -1`): stop quietly, it got what it wanted.
                silence_stdout_after_broken_pipe()
                raise typer.Exit(0) from None
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (signals.Interrupted)
                if debug:
                    traceback.print_exc()
                _error_line(signals.describe(exc))
                raise typer.Exit(signals.exit_code(exc)) from None
            except Exception as exc:  # a library failure the user can fix (errors.LIBRARY_ERRORS), or a bug
                if debug:
                    traceback.print_exc()
                error = explain(exc)
                _error_line(error.message)
                raise typer.Exit(error.exit_code) from None


def _error_line(message: str) -> None:
    from rich.markup import escape  # messages may hold brackets (`pip install 'llmkit[quant]'`)

    from llmkit.output import stderr_console

    stderr_console().print(f"[bold red]Error:[/bold red] {escape(message)}", highlight=False, markup=True)


app = typer.Typer(
    cls=_LazyBoundary,
    name="llmkit",
    help="Hugging Face pretrained models from the shell. Results go to stdout (JSON lines when piped), "
    "talk to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Hugging Face pretrained models from the shell."""


def main() -> None:
    """Console-script entry point."""
    from llmkit import threads

    threads.mark()  # start-up becomes the window that measures other processes' load (no 30 ms sleep later)
    app(prog_name="llmkit")


if __name__ == "__main__":
    main()
    sys.exit(0)
