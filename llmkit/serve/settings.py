"""What one `llmkit serve` process is told: its models, address, key and limits, with their defaults.

Torch-free and import-light: `llmkit serve --help` shows these defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"  # this machine only: --host 0.0.0.0 (with --api-key) opens it to the network
DEFAULT_PORT = 8000
API_KEY_ENV = "LLMKIT_API_KEY"
# Requests generated at once. llama.cpp decodes this many sequences together (its parallel slots), so 16 clients
# share the weights' reads; transformers models take turns. More waiting requests than MAX_QUEUE get 429.
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_MAX_QUEUE = 64
# The longest answer a request may ask for (a request without max_tokens gets llmkit generate's default, 128).
# llama.cpp's KV cache is sized for MAX_CONCURRENCY answers this long.
DEFAULT_MAX_TOKENS = 1024
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024  # a request body larger than this gets 413 before it is read
DEFAULT_DRAIN_SECONDS = 60.0  # SIGTERM: in-flight requests get this long to finish before they are cut
MAX_CHOICES = 8  # n: answers per request
MAX_TOP_LOGPROBS = 20  # OpenAI's own limit for top_logprobs
RETRY_AFTER_SECONDS = 1  # Retry-After of a 429 (queue full) or a 503 (model still loading)


@dataclass(frozen=True)
class ModelArg:
    """One `-m`: the name requests use (`model` in the body) and the model spec llmkit loads.

    `-m NAME=SPEC` names it; a bare `-m SPEC` is its own name.
    """

    name: str
    spec: str

    @staticmethod
    def parse(text: str) -> ModelArg:
        """`NAME=SPEC` or `SPEC` (a spec holding `=` after a slash is a spec, not a name)."""
        name, sep, spec = text.partition("=")
        if sep and name and spec and "/" not in name and os.sep not in name:
            return ModelArg(name.strip(), spec.strip())
        return ModelArg(text.strip(), text.strip())


@dataclass(frozen=True)
class ServeSettings:
    """Everything a server needs to start (see `llmkit serve --help` for each).

    Attributes:
        models: the `-m` models, in order (the first answers requests that name no model).
        host / port: where to listen (port 0: any free port, printed at start).
        api_key: the key every route but /health asks for (None: none asked).
        allowed_origins: browser origins allowed by CORS (empty: no CORS headers at all).
        max_concurrency / max_queue: requests generated at once / waiting beyond them (more: 429).
        max_tokens: the most tokens one answer may ask for.
        max_body_bytes: the largest request body (more: 413).
        drain_seconds: how long SIGTERM waits for in-flight requests.
        engine / device / dtype: as for `llmkit generate`, for every model.
    """

    models: tuple[ModelArg, ...]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    engine: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
