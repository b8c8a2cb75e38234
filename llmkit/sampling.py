"""What both generate engines share: settings, presets, validation, result records and stop strings.

Torch-free and import-light, so the transformers engine (engines/transformers.py), the llama.cpp engine
(engines/llama_cpp.py) and the CLI's `--help` can all use it without importing each other (as mlx-lm's
`sample_utils.py` serves generate, server and evaluate alike).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from llmkit.errors import UsageError

DEFAULT_MAX_NEW_TOKENS = 128  # tokens per answer; the bundled model answers a question in ~30-80

# Named presets: a starting point that explicit flags override. `--help` prints them.
PRESETS: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "beam": {"do_sample": False, "num_beams": 4, "no_repeat_ngram_size": 3, "early_stopping": True},
    "creative": {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.05},
    "precise": {"do_sample": True, "temperature": 0.3, "top_p": 0.9, "top_k": 40},
}

SAMPLING_KNOBS = ("temperature", "top_k", "top_p", "min_p", "typical_p")


def describe_presets() -> str:
    """The presets as one line for `--help`.

    Returns:
        "greedy: do_sample=False, num_beams=1; beam: ..."
    """
    return "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for name, values in PRESETS.items())


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; `None` means the transformers default (or 'off')."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    early_stopping: bool | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def method(self) -> str:
        if self.num_beams > 1:
            return "beam-sample" if self.do_sample else "beam"
        return "sample" if self.do_sample else "greedy"


def build_settings(preset: str | None = None, sample: bool | None = None, **overrides: Any) -> GenerationSettings:
    """Settings from a preset, then explicit values (None = not given), then validation.

    Giving any sampling knob (temperature, top-k, top-p, min-p, typical-p) turns sampling on unless `sample`
    is False; `sample=True/False` always wins.

    Args:
        preset: one of PRESETS, or None.
        sample: force sampling on or off (None: decided by the knobs given).
        overrides: GenerationSettings fields; None values count as not given.

    Returns:
        The validated GenerationSettings.

    Raises:
        UsageError: an unknown preset or an impossible combination (see `validate`).
    """
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"unknown --preset {preset!r}; use one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(GenerationSettings)}
    if unknown:
        raise TypeError(f"unknown generation settings: {sorted(unknown)}")
    values.update(given)
    if sample is not None:
        values["do_sample"] = sample
    elif any(k in given for k in SAMPLING_KNOBS):
        values["do_sample"] = True
    if "stop" in values:
        values["stop"] = tuple(s for s in values["stop"] if s)
    settings = GenerationSettings(**values)
    validate(settings)
    return settings


def validate(s: GenerationSettings) -> None:
    """Reject settings that cannot work, with the flag to change.

    Raises:
        UsageError: the first impossible setting found.
    """

    def bad(message: str) -> None:
        raise UsageError(message)

    if s.max_new_tokens < 1:
        bad("--max-new-tokens must be at least 1")
    if s.num_beams < 1:
        bad("--num-beams must be at least 1")
    if s.num_return_sequences < 1:
        bad("--num-return-sequences must be at least 1")
    if not s.do_sample and s.num_return_sequences > s.num_beams:
        bad(
            f"--num-return-sequences {s.num_return_sequences} needs at least that many beams without sampling; "
            f"add --num-beams {s.num_return_sequences} or sample (--temperature/--top-p/--sample)"
        )
    if s.do_sample and s.temperature is not None and s.temperature <= 0:
        bad("--temperature must be > 0 when sampling; for deterministic output use --preset greedy")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        bad("--top-p must be in (0, 1]")
    if s.top_k is not None and s.top_k < 0:
        bad("--top-k must be >= 0 (0 turns it off)")
    if s.min_p is not None and not 0 <= s.min_p <= 1:
        bad("--min-p must be in [0, 1]")
    if s.typical_p is not None and not 0 < s.typical_p <= 1:
        bad("--typical-p must be in (0, 1]")
    if s.repetition_penalty is not None and s.repetition_penalty <= 0:
        bad("--repetition-penalty must be > 0 (1.0 is no penalty)")
    if s.no_repeat_ngram_size is not None and s.no_repeat_ngram_size < 0:
        bad("--no-repeat-ngram-size must be >= 0")
    if s.num_beams == 1 and (s.length_penalty is not None or s.early_stopping):
        bad("--length-penalty and --early-stopping only act on beam search; add --num-beams N (N > 1)")


def with_seed(settings: GenerationSettings, seed: int | None) -> GenerationSettings:
    """`settings` with `seed` set, when one is given.

    Returns:
        A copy with the seed, or `settings` itself when `seed` is None.
    """
    return replace(settings, seed=seed) if seed is not None else settings


def generation_kwargs(s: GenerationSettings) -> dict[str, Any]:
    """The keyword arguments for transformers' `model.generate`, every knob that applies spelled out.

    Settings not given are passed as their "off" value rather than left out: left out, transformers would take
    them from the checkpoint's generation_config.json (a repetition_penalty of 1.1 there would apply silently),
    while llama.cpp has them off. The same values go into each record's `settings`.

    Returns:
        A dict of generate() keyword arguments; also the base of each result's `settings` record.
    """
    kwargs: dict[str, Any] = {
        "max_new_tokens": s.max_new_tokens,
        "do_sample": s.do_sample,
        "num_beams": s.num_beams,
        "num_return_sequences": s.num_return_sequences,
        "repetition_penalty": 1.0 if s.repetition_penalty is None else s.repetition_penalty,
        "no_repeat_ngram_size": 0 if s.no_repeat_ngram_size is None else s.no_repeat_ngram_size,
    }
    if s.do_sample:
        kwargs["temperature"] = 1.0 if s.temperature is None else s.temperature
        kwargs["top_k"] = 0 if s.top_k is None else s.top_k
        kwargs["top_p"] = 1.0 if s.top_p is None else s.top_p
        kwargs["min_p"] = 0.0 if s.min_p is None else s.min_p
        kwargs["typical_p"] = 1.0 if s.typical_p is None else s.typical_p
    else:
        # Greedy/beam: no sampling knob applies (None: transformers builds no warper even if the checkpoint has one).
        kwargs.update(temperature=None, top_k=None, top_p=None, min_p=None, typical_p=None)
    if s.num_beams > 1:
        kwargs["length_penalty"] = 1.0 if s.length_penalty is None else s.length_penalty
        kwargs["early_stopping"] = False if s.early_stopping is None else s.early_stopping
    return kwargs


def stream_seed(seed: int, index: int) -> int:
    """The sampling seed of input number `index` (0-based, over the whole input) under `--seed seed`.

    Both engines give each input its own random stream with this seed, so two copies of a prompt in one batch
    sample differently and an answer does not depend on the other prompts or on --batch-size. 32 bits, as
    llama.cpp takes them.

    Returns:
        (seed + index) modulo 2**32.
    """
    return (seed + index) & 0xFFFFFFFF


def settings_record(s: GenerationSettings) -> dict[str, Any]:
    """The `settings` field of a JSON record, the same for both engines.

    Returns:
        The set generate() keyword arguments, plus `stop` and `seed` when given.
    """
    record = {k: v for k, v in generation_kwargs(s).items() if v is not None}
    if s.stop:
        record["stop"] = list(s.stop)
    if s.seed is not None:
        record["seed"] = s.seed
    return record


@dataclass(frozen=True)
class Candidate:
    """One of the n-best answers for a prompt."""

    text: str
    score: float | None
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Generation:
    """The answer for one prompt.

    Attributes:
        prompt: the prompt as given (before any chat template).
        text: the best answer, cut at a stop string.
        finish_reason: "eos" (the model ended it), "stop" (a --stop string) or "length" (--max-new-tokens).
        prompt_tokens / completion_tokens: token counts (prompt after the chat template).
        seconds: wall time of the batch that produced it; tokens_per_second = completion_tokens / seconds.
        engine: "transformers" or "llama-cpp"; engine_reason: why that engine ran (see engines/choose.py).
        candidates: the n-best list (with scores) when --num-return-sequences > 1.
        model: the model as the user named it (with a peft adapter, the adapter folder).
        base_model: the base model a peft adapter runs on; None without an adapter.
    """

    prompt: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    tokens_per_second: float
    model: str
    engine: str = "transformers"
    engine_reason: str = ""
    candidates: list[Candidate] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a step, with its log-probability under the model (before sampling).

    Attributes:
        token: the token's text.
        logprob: natural log of its probability.
        bytes: the UTF-8 bytes of `token` (a token can hold part of a character).
    """

    token: str
    logprob: float
    bytes: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """The log-probability of a generated token and the most likely alternatives at its step.

    Attributes:
        token / logprob / bytes: as in `TopLogprob`, for the token that was generated.
        top: the `top_logprobs` most likely tokens at that step, most likely first.
    """

    token: str
    logprob: float
    bytes: tuple[int, ...] = ()
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Completion:
    """One answer to one prompt from a loaded model (`complete()` of an engine's generator).

    Attributes:
        text: the answer, cut at a stop string.
        finish_reason: "eos", "stop" or "length" (as in `Generation`).
        prompt_tokens / completion_tokens: token counts (prompt after the chat template; no end-of-sequence token).
        seconds: wall time of the answer.
        logprobs: one entry per counted token when log-probabilities were asked for, else None.
        cancelled: the caller's `cancelled()` ended it early (the text is what was made until then).
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    logprobs: tuple[TokenLogprob, ...] | None = None
    cancelled: bool = False


# --- stop strings ------------------------------------------------------------------------------------------------


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found.

    Returns:
        (the text before the first stop string, True) or (text, False).
    """
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopStream:
    """Growing answer text shown as it grows, never showing (part of) a stop string.

    Holds back as many characters as the longest stop string: those may yet turn out to start one. Both
    engines feed it the whole text so far; it cuts at a stop string and hands the new visible part to `emit`.
    """

    def __init__(self, stops: tuple[str, ...], emit: Callable[[str], None] | None = None) -> None:
        self.stops = stops
        self.emit = emit
        self.hold = max((len(s) for s in stops), default=0)
        self.shown = 0
        self.stopped = False

    def update(self, text: str, *, done: bool = False) -> tuple[str, bool]:
        """Take the whole text so far; show what is safe to show.

        Args:
            text: the answer so far.
            done: the answer is complete (nothing is held back any more).

        Returns:
            (the text cut at a stop string, whether a stop string was found).
        """
        text, hit = cut_at_stop(text, self.stops)
        upto = len(text) if hit or done else max(self.shown, len(text) - self.hold)
        if not self.stopped and upto > self.shown:
            if self.emit is not None:
                self.emit(text[self.shown : upto])
            self.shown = upto
        self.stopped = self.stopped or hit
        return text, hit

    def finish(self, final_text: str) -> None:
        """Show whatever the hold-back kept, once the final (stop-trimmed) text is known."""
        if len(final_text) > self.shown and self.emit is not None:
            self.emit(final_text[self.shown :])
        self.shown = len(final_text)


def chat_messages(prompt: Any, *, system: str | None, raw: bool, has_template: bool) -> list[dict[str, str]] | None:
    """The messages to render through the chat template, or None to send `prompt` as it is.

    Args:
        prompt: a prompt string, or a conversation: a sequence of {"role", "content"} messages (OpenAI batch
            chat lines).
        system: the --system message; prepended unless the conversation has its own.
        raw: --raw (no template). A conversation cannot be sent raw.
        has_template: whether the model has a chat template.

    Raises:
        UsageError: a conversation with --raw or for a model without a chat template.
    """
    if isinstance(prompt, str):
        if raw or not has_template:
            return None
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    if raw or not has_template:
        raise UsageError(
            "chat messages need the model's chat template, and "
            + ("--raw turns it off" if raw else "this model has none; send a plain prompt (/v1/completions)")
        )
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def render_chat_template(template: str, messages: list[dict[str, str]], **tokens: str) -> str:
    """`messages` through a model's Jinja chat template with a generation prompt, as transformers'
    `apply_chat_template` renders it (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
    `strftime_now`), so every engine sees the same prompt text. `tokens`: bos_token, eos_token and the like.

    MiniJinja renders it (a Rust engine, sandboxed by construction, that Hugging Face's text-generation-inference
    uses for the same templates): importing jinja2 took 55-80 ms of CPU, the largest share of llmkit's own
    start-up before a one-prompt llama.cpp answer, against about 10 ms for minijinja
    (benchmarks/startup_generate.py). A template MiniJinja cannot compile or render goes to jinja2 in
    transformers' sandboxed environment, as before; tests/test_sampling.py pins equal output on real templates.

    Raises:
        UsageError: the template refused the conversation (its `raise_exception`).
    """
    context = dict(tokens, messages=messages, add_generation_prompt=True)
    compiled = _minijinja_chat_template(template)
    if compiled is not None:
        try:
            return compiled.render_template("chat", **context)
        except UsageError:
            raise
        except Exception:  # noqa: BLE001 - a construct MiniJinja renders otherwise: jinja2 says what is wrong
            pass
    return _jinja2_chat_template(template).render(**context)


def _refuse(message: str) -> None:
    raise UsageError(f"the model's chat template refused the prompt: {message}")


def _strftime_now(fmt: str) -> str:
    import time

    return time.strftime(fmt)


@functools.lru_cache(maxsize=8)
def _minijinja_chat_template(template: str) -> Any:
    """An environment holding the compiled template as "chat", or None where MiniJinja is missing or cannot
    compile it."""
    try:
        import minijinja
    except ImportError:
        return None
    env = minijinja.Environment(trim_blocks=True, lstrip_blocks=True)
    env.add_function("raise_exception", _refuse)  # type: ignore[attr-defined]  # (its stubs lack it)
    env.add_function("strftime_now", _strftime_now)  # type: ignore[attr-defined]
    try:
        env.add_template("chat", template)
    except Exception:  # noqa: BLE001 - syntax MiniJinja lacks: jinja2 renders it
        return None
    return env


@functools.lru_cache(maxsize=8)
def _jinja2_chat_template(template: str) -> Any:
    """The template compiled by jinja2 in transformers' environment (compiling took 9 ms, once per prompt
    before: 0.6 s of 64 prompts)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = _refuse
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)
