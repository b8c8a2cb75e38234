"""Engines: the libraries (or llmkit's own loops) that run a model's forward passes for a task.

One module per engine (transformers, llama.cpp, ONNX Runtime, llmkit's float32 Llama loop), this small shared
protocol, and `choose.py`, the one place that holds every `--engine auto` rule with its measured reason. Task
modules (generate.py, classify.py, fill_mask.py, embed.py) ask the chooser for a `Choice`, load that engine once
and call it; an engine never imports a task module (what both need lives below both: sampling.py, tokens.py).

Importing this package is torch-free and cheap: `llmkit --help` and the choosers run without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

NATIVE_ENV = "LLMKIT_NATIVE"  # "0" turns llmkit's own model loops off: transformers runs instead
# Folders whose weights a plain single-file engine cannot take as they are (an adapter on a base, sharded weights).
NOT_NATIVE_FILES = ("adapter_config.json", "model.safetensors.index.json")


def native_enabled() -> bool:
    """False when LLMKIT_NATIVE turns llmkit's own forward passes off."""
    return os.environ.get(NATIVE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Choice:
    """The engine a run uses and why; `reason` goes into every record of the run (one line, user-facing).

    Attributes:
        engine: the engine's name, as `--engine` spells it.
        reason: why it was chosen (the auto rule that fired, or "asked for with --engine X").
        fallback: set when auto wanted another engine and could not use it: what went wrong, said once on stderr.
    """

    engine: str
    reason: str
    fallback: str | None = None


class Engine(Protocol):
    """What every engine module offers a task, whatever the task.

    `unsupported` answers before anything loads (config files and settings only), so the chooser can decide
    without importing the engine's library; `load` builds the engine's handle for one model once per run; the
    task then calls the handle's task-specific methods (e.g. `logits(batch)` for encoders, `generate(...)` for
    decoders), which take and return plain Python / numpy values.
    """

    name: ClassVar[str]

    def unsupported(self, spec: str, **settings: Any) -> str | None:
        """Why this engine cannot run `spec` with these settings (one line), or None when it can."""
        ...

    def load(self, spec: str, **options: Any) -> Any:
        """Load the model once for a run; raises an `LlmkitError` subclass with a one-line message."""
        ...
