"""`llmkit generate`: text generation with causal LMs and encoder-decoder models.

The task: validate the call, ask the chooser which engine runs (engines/choose.py: llama.cpp for GGUF models,
transformers, or llmkit's float32 Llama loop for a file of prompts), call that one engine, and yield its
`Generation` records, one per prompt in input order. How each engine prepares, runs and post-processes a batch
lives in its module under llmkit/engines/.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from llmkit.errors import UsageError
from llmkit.sampling import (  # noqa: F401  (re-exported: the settings API has always been importable from here)
    DEFAULT_MAX_NEW_TOKENS,
    PRESETS,
    SAMPLING_KNOBS,
    Candidate,
    Generation,
    GenerationSettings,
    StopStream,
    build_settings,
    chat_messages,
    cut_at_stop,
    describe_presets,
    generation_kwargs,
    settings_record,
    stream_seed,
    validate,
    with_seed,
)

DEFAULT_MODEL = "smollm2-135m-instruct"
# The batch-size rules live with the chooser (their measurements beside them); named here as they always were.
from llmkit.engines.choose import (  # noqa: E402,F401  (re-exported)
    DEFAULT_BATCH_SIZE,
    FILE_BATCH_SIZE,
    FILE_MAX_GGUF_BYTES,
    FILE_PROMPTS,
)


class _Lookahead:
    """The prompts, with the first few read ahead when a rule of the chooser needs to count them."""

    def __init__(self, prompts: Iterable[Any]) -> None:
        self._rest = iter(prompts)
        self._head: list[Any] = []
        self._all_read = False

    def available(self, n: int) -> int:
        """How many prompts there are, up to `n` (reads that many ahead)."""
        if len(self._head) < n and not self._all_read:
            wanted = n - len(self._head)
            read = list(itertools.islice(self._rest, wanted))
            self._head.extend(read)
            self._all_read = len(read) < wanted
        return min(n, len(self._head))

    def known(self) -> list[Any] | None:
        """Every prompt, when reading ahead has reached the end of them; else None."""
        return self._head if self._all_read else None

    def __iter__(self) -> Iterator[Any]:
        return itertools.chain(self._head, self._rest)


def generate(
    prompts: Iterable[str],
    *,
    model: str = DEFAULT_MODEL,
    settings: GenerationSettings | None = None,
    system: str | None = None,
    raw: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    on_text: Callable[[int, str], None] | None = None,
    loaded: Any = None,
    engine: str = "auto",
    adapter: str | None = None,
    lookup: int = 0,
) -> Iterator[Generation]:
    """Generate an answer for each prompt, yielding results in input order as soon as they are ready.

    Args:
        prompts: the prompts (any iterable; read lazily, `batch_size * LENGTH_GROUP_WINDOW` at a time).
        model: alias, folder, .gguf file or hub id.
        settings: decoding settings (`build_settings`); default greedy.
        system: system message for chat models.
        raw: send the prompt as is, without the chat template.
        batch_size: prompts per forward pass; 1 also enables streaming through `on_text`. None: DEFAULT_BATCH_SIZE
            (on llama.cpp no more than there are prompts), or FILE_BATCH_SIZE on llmkit's Llama loop where
            --engine auto moves a file of prompts there.
        on_text: called with (prompt index, text delta) as tokens are produced (batch size 1 only).
        loaded: an already loaded `LoadedModel` (reuse across calls; skips loading).
        lookup: prompt-lookup decoding on the llama.cpp engine: draft up to this many tokens copied from the
            context (0: off). It pays where answers copy the prompt (rewrite, extract) and weights have batched
            kernels (q8_0); see docs/concepts/engines.md ("Prompt lookup").
        engine: auto|transformers|llama-cpp (auto: llama.cpp for GGUF models when its bindings are installed
            and it supports every setting; see `engines.choose.choose_generate`).
        adapter: a peft adapter folder (LoRA, prompt or prefix tuning) to run on `model` unmerged; it needs
            the transformers engine.

    Returns:
        An iterator of `Generation`, one per prompt, in input order.
    """
    from llmkit.engines import choose

    settings = settings or GenerationSettings()
    if batch_size is not None and batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if lookup < 0:
        raise UsageError("--lookup must be 0 (off) or a number of draft tokens, e.g. 8")
    ahead = _Lookahead(prompts)
    options: dict[str, Any] = dict(requested=engine, device=device, dtype=dtype, batch_size=batch_size,
                                   adapter=adapter, loaded=loaded, lookup=lookup, streaming=on_text is not None,
                                   available=ahead.available, revision=revision)
    choice = choose.choose_generate(model, settings, **options)
    if choice.engine == choose.LLAMA_CPP:
        from llmkit.engines import llama_cpp

        try:  # llama.cpp loads the file before it reads a prompt: a refusal comes before any result
            known = ahead.known()  # all read ahead: llama.cpp's context is fitted to them
            yield from llama_cpp.generate(ahead if known is None else known, model=model, settings=settings, system=system, raw=raw,
                                          batch_size=choice.batch_size, on_text=on_text, reason=choice.reason,
                                          lookup=lookup)
            return
        except llama_cpp.EngineLoadError as exc:
            if engine != "auto":
                raise
            choice = choose.choose_generate(model, settings, **options, llama_cpp_failed=exc.message.split(" (")[0])
    if choice.fallback:
        from llmkit.console import warn

        warn(choice.fallback)
    load: dict[str, Any] = dict(revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    run: dict[str, Any] = dict(settings=settings, system=system, raw=raw, batch_size=choice.batch_size,
                               on_text=on_text, reason=choice.reason)
    if choice.engine == choose.LLAMA_LOOP:
        from llmkit.engines import llama_loop

        yield from llama_loop.generate(ahead, model=model, loaded=loaded, device=device, **load, **run)
        return
    from llmkit.engines import transformers as hf

    lm = loaded or hf.load_generator(model, device=device, dtype=choice.dtype, adapter=adapter, **load)
    yield from hf.generate(lm, ahead, **run)
