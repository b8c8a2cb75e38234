"""The served models: each `-m` loaded once, on the engine the chooser picks, and found by the name a request gives.

Loading runs in a background thread after the server starts listening, so /health can say 503 "loading" until
every model is ready (what orchestrators wait for) and a request for a model still loading gets 503 with
Retry-After. What a model can answer follows from its head (tasks.py): a causal LM answers chat (when it has a
chat template) and completions, an encoder-decoder completions, a classifier /v1/classify and a masked LM
/v1/fill-mask (as `llmkit classify` and `llmkit fill-mask` run them, ONNX Runtime included), and an encoder with no
head embeddings, through `llmkit embed`'s Embedder.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.serve.settings import ModelArg, ServeSettings

CHAT, COMPLETIONS, EMBEDDINGS = "chat.completions", "completions", "embeddings"
CLASSIFY, FILL_MASK = "classify", "fill-mask"


@dataclass
class ServedModel:
    """One loaded model and what it answers.

    Attributes:
        name: what requests call it (`model` in the body; `id` in /v1/models).
        spec: the model spec llmkit loaded.
        endpoints: the API endpoints it answers (CHAT, COMPLETIONS, EMBEDDINGS, CLASSIFY, FILL_MASK).
        engine / reason: the engine that runs it, and why (engines/choose.py).
        generator: the engine's loaded handle (`complete()`), for text generation.
        embedder: `llmkit embed`'s Embedder, for an encoder (one request at a time: `lock`).
        encoder / choice: a classifier or masked LM loaded for `classify` / `fill_mask`, and its engine choice.
        created: when it finished loading (Unix time).
    """

    name: str
    spec: str
    endpoints: tuple[str, ...]
    engine: str
    reason: str
    generator: Any = None
    embedder: Any = None
    encoder: Any = None
    choice: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self) -> dict[str, Any]:
        """Its /v1/models entry: OpenAI's Model object, plus what llmkit knows of it."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "llmkit",
                "llmkit": {"model": self.spec, "engine": self.engine, "engine_reason": self.reason,
                           "endpoints": list(self.endpoints)}}


def load_model(arg: ModelArg, settings: ServeSettings) -> ServedModel:
    """Load one `-m` model for serving.

    Raises:
        LlmkitError: it cannot be found or loaded, or llmkit serves nothing for its kind of model.
    """
    from llmkit import generate, loading
    from llmkit.tasks import CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM, SEQUENCE_CLASSIFICATION

    head = loading.detect_task(arg.spec)
    if head in (SEQUENCE_CLASSIFICATION, MASKED_LM):
        return _load_head(arg, settings, head)
    if head not in (CAUSAL_LM, SEQ2SEQ_LM):
        return _load_encoder(arg, settings)
    generator = generate.load_generator(arg.spec, engine=settings.engine, parallel=settings.max_concurrency,
                                        max_new_tokens=settings.max_tokens, device=settings.device,
                                        dtype=settings.dtype)
    endpoints = (COMPLETIONS,) if head == SEQ2SEQ_LM else (CHAT, COMPLETIONS)
    return ServedModel(arg.name, arg.spec, endpoints, generator.engine, generator.reason, generator)


def _load_head(arg: ModelArg, settings: ServeSettings, head: str) -> ServedModel:
    """A classifier (/v1/classify) or a masked LM (/v1/fill-mask), loaded as those commands load it."""
    from llmkit.errors import UsageError
    from llmkit.tasks import MASKED_LM

    if settings.engine == "llama-cpp":
        raise UsageError(f"{arg.spec} is an encoder, which llama.cpp does not run here; leave --engine auto")
    engine = "auto" if settings.engine == "auto" else "transformers"
    options: dict[str, Any] = dict(engine=engine, device=settings.device, dtype=settings.dtype)
    if head == MASKED_LM:
        from llmkit.fill_mask import load_model as load_fill_mask_model

        loaded, choice = load_fill_mask_model(arg.spec, **options)
        endpoint = FILL_MASK
    else:
        from llmkit.classify import load_model as load_classifier

        loaded, choice = load_classifier(arg.spec, **options)
        endpoint = CLASSIFY
    return ServedModel(arg.name, arg.spec, (endpoint,), choice.engine, choice.reason, encoder=loaded, choice=choice)


def _load_encoder(arg: ModelArg, settings: ServeSettings) -> ServedModel:
    """An encoder, served for /v1/embeddings as `llmkit embed` runs it."""
    from llmkit.embed import Embedder
    from llmkit.errors import UsageError

    if settings.engine == "llama-cpp":
        raise UsageError(f"{arg.spec} is an encoder, which llama.cpp does not run here; leave --engine auto")
    embedder = Embedder(arg.spec, engine=settings.engine, device=settings.device, dtype=settings.dtype)
    return ServedModel(arg.name, arg.spec, (EMBEDDINGS,), embedder.choice.engine, embedder.choice.reason,
                       embedder=embedder)


class Registry:
    """The models by name, filled by `load_all` (in a background thread) while the server already answers.

    Attributes:
        error: the error that stopped loading, if one did (the server then stops with it).
    """

    def __init__(self, args: tuple[ModelArg, ...]) -> None:
        self.args = args
        self.models: dict[str, ServedModel] = {}
        self.error: LlmkitError | None = None
        self.loaded = threading.Event()  # set when loading ended, well or not
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """Every model is loaded."""
        return self.loaded.is_set() and self.error is None

    def load_all(self, settings: ServeSettings, on_loaded: Any = None) -> None:
        """Load every model in order; the first failure is kept in `error` and stops the rest."""
        try:
            for arg in self.args:
                model = load_model(arg, settings)
                with self._lock:
                    self.models[arg.name] = model
                if on_loaded is not None:
                    on_loaded(model)
        except LlmkitError as exc:
            self.error = exc
        except Exception as exc:  # an unexpected library failure: still one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.error = LlmkitError(f"loading failed: {type(exc).__name__}: {first}")
        finally:
            self.loaded.set()

    def names(self) -> list[str]:
        """Every model's name, loaded or not, in `-m` order."""
        return [a.name for a in self.args]

    def get(self, name: str) -> ServedModel | None:
        """The loaded model called `name`, or None (unknown, or still loading)."""
        with self._lock:
            return self.models.get(name)

    def cards(self) -> list[dict[str, Any]]:
        """The /v1/models entries of the loaded models, in `-m` order."""
        with self._lock:
            return [self.models[a.name].card() for a in self.args if a.name in self.models]
