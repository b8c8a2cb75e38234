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
    runner = Generator(model, choice, device=device, revision=revision, allow_pickle=allow_pickle,
                       trust_remote_code=trust_remote_code, adapter=adapter, loaded=loaded, preload=False)
    yield from runner.run(ahead, settings=settings, system=system, raw=raw, on_text=on_text, lookup=lookup)


class Generator:
    """One engine, chosen and loaded once, for any number of `run` calls (generate()'s second half).

    `generate()` builds one per call; an executor that feeds batches of a long input to workers builds one per
    worker from `choice_for_count`, so the engine is the one the whole input gets (some rules count the prompts)
    and the model loads once. llama.cpp keeps its loaded model per process itself (`llama_cpp._server`'s cache), and
    gets the prompts as a stream here, so its context size is the same for every batch.

    Args:
        model: the model spec.
        choice: the engine, batch size and dtype (`engines.choose.choose_generate`).
        device / revision / allow_pickle / trust_remote_code / adapter: as for `generate()`.
        loaded: an already loaded `LoadedModel` (transformers or the loop), or None to load here.
        preload: load the loop's model now (for many calls); False lets the loop load it inside its one call and
            release the transformers weights once packed (generate()'s own single call).
    """

    def __init__(self, model: str, choice: Any, *, device: str = "auto", revision: str | None = None,
                 allow_pickle: bool = False, trust_remote_code: bool = False, adapter: str | None = None,
                 loaded: Any = None, preload: bool = True) -> None:
        from llmkit.engines import choose

        self.model, self.choice, self.device = model, choice, device
        self.load: dict[str, Any] = dict(revision=revision, allow_pickle=allow_pickle,
                                         trust_remote_code=trust_remote_code)
        self.lm = loaded
        if loaded is None and choice.engine == choose.TRANSFORMERS:
            from llmkit.engines import transformers as hf

            self.lm = hf.load_generator(model, device=device, dtype=choice.dtype, adapter=adapter, **self.load)
        elif loaded is None and choice.engine == choose.LLAMA_LOOP and preload:
            from llmkit.engines import llama_loop
            from llmkit.engines import transformers as hf

            self.lm = llama_loop.load(model) or hf.load_generator(model, device=device, dtype="float32", **self.load)

    @property
    def window(self) -> int:
        return window_of(self.choice)

    def run(self, prompts: Iterable[Any], *, settings: GenerationSettings, system: str | None = None,
            raw: bool = False, on_text: Callable[[int, str], None] | None = None,
            lookup: int = 0) -> Iterator[Generation]:
        """One `Generation` per prompt, in order, on the chosen engine."""
        from llmkit.engines import choose

        choice = self.choice
        run: dict[str, Any] = dict(settings=settings, system=system, raw=raw, batch_size=choice.batch_size,
                                   on_text=on_text, reason=choice.reason)
        if choice.engine == choose.LLAMA_CPP:
            from llmkit.engines import llama_cpp

            # a stream, never a list: the context is then sized alike for every call, and the loaded model kept
            yield from llama_cpp.generate(iter(prompts), model=self.model, lookup=lookup, **run)
            return
        if choice.engine == choose.LLAMA_LOOP:
            from llmkit.engines import llama_loop

            yield from llama_loop.generate(prompts, model=self.model, loaded=self.lm, device=self.device,
                                           **self.load, **run)
            return
        from llmkit.engines import transformers as hf

        yield from hf.generate(self.lm, prompts, **run)



def choice_for_count(model: str, prompts: int, *, settings: GenerationSettings | None = None,
                     batch_size: int | None = None, device: str = "auto", dtype: str = "auto",
                     revision: str | None = None, engine: str = "auto", adapter: str | None = None,
                     lookup: int = 0) -> Any:
    """The engine choice `generate()` makes for `prompts` prompts, for a run that hands them to `Generator`s in
    batches (some rules count the prompts: a file of 32 or more runs on the loop).

    Returns:
        A `GenerateChoice`.
    """
    from llmkit.engines import choose

    return choose.choose_generate(model, settings or GenerationSettings(), requested=engine, device=device,
                                  dtype=dtype, batch_size=batch_size, adapter=adapter, lookup=lookup,
                                  available=lambda n: min(n, prompts), revision=revision)


def window_of(choice: Any) -> int:
    """Prompts an engine reads ahead and groups by length (transformers and the loop: LENGTH_GROUP_WINDOW batches;
    llama.cpp decodes in flight what it is given): batches of this many consecutive prompts, starting at multiples
    of it, run as one long input does."""
    from llmkit.engines import transformers as hf

    return max(1, choice.batch_size) * hf.LENGTH_GROUP_WINDOW


def load_generator(
    model: str = DEFAULT_MODEL,
    *,
    engine: str = "auto",
    parallel: int = 1,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    """Load a model once to answer many prompts from many threads (what `llmkit serve` keeps per model).

    The engine is the one `generate()` picks for a single streamed prompt (engines/choose.py): llama.cpp for a GGUF
    model, whose `parallel` sequences then decode concurrent prompts together; else transformers, whose callers
    take turns. Either way `complete()` gives the answer `generate()` gives for the same prompt and settings.

    Args:
        model: alias, folder, .gguf file or hub id.
        engine: auto|transformers|llama-cpp.
        parallel: llama.cpp's parallel sequences (the most prompts decoded together).
        max_new_tokens: the longest answer that will be asked for (llama.cpp sizes its context for it).
        device / dtype / revision / allow_pickle / trust_remote_code: as for `generate`.

    Returns:
        An engine's `Generator` (`llama_cpp.Generator` or `transformers.Generator`): `complete()`, `unsupported()`,
        `check()`, and `engine`/`reason` attributes.

    Raises:
        LlmkitError: the model cannot be found or loaded, or the engine asked for cannot run it.
    """
    from llmkit.engines import choose

    if parallel < 1:
        raise UsageError("parallel sequences must be at least 1")
    options: dict[str, Any] = dict(requested=engine, device=device, dtype=dtype, concurrency=parallel,
                                   revision=revision)
    choice = choose.choose_served(model, **options)
    if choice.engine == choose.LLAMA_CPP:
        from llmkit.engines import llama_cpp

        try:
            # each sequence its own KV cells: an idle one keeps its last prompt's, which must not crowd out the rest;
            # no host-memory cache of past prompts, which would grow with every request
            return llama_cpp.Generator(model, parallel=parallel, max_new_tokens=max_new_tokens, reason=choice.reason,
                                       unified=False, keep_prompts=False)
        except llama_cpp.EngineLoadError as exc:
            if engine != "auto":
                raise
            choice = choose.choose_served(model, **options, llama_cpp_failed=exc.message.split(" (")[0])
    if choice.fallback:
        from llmkit.console import warn

        warn(choice.fallback)
    from llmkit.engines import transformers as hf

    if choice.engine == choose.LLAMA_LOOP:
        from llmkit.engines import llama_loop

        # transformers' float32 copy, packed for the loop: the loop decodes greedy requests in batches, and
        # transformers' own generate stays for what the loop leaves to it (log-probabilities, penalties)
        lm = hf.load_generator(model, device="cpu", dtype="float32", revision=revision, allow_pickle=allow_pickle,
                               trust_remote_code=trust_remote_code)
        decoder = llama_loop.NativeLlama(lm.model) if llama_loop.unsupported_model(lm.model) is None else None
        return hf.Generator(lm, reason=choice.reason, decoder=decoder, max_batch=choice.batch_size)
    lm = hf.load_generator(model, device=device, dtype=choice.dtype, revision=revision, allow_pickle=allow_pickle,
                           trust_remote_code=trust_remote_code)
    return hf.Generator(lm, reason=choice.reason)
