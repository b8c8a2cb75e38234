"""The llama.cpp engine behind `llmkit generate --engine auto|llama-cpp`.

llama.cpp runs a GGUF file directly (no torch, no transformers import, no de-quantized copy), which on a CPU is
several times faster than transformers. The bindings are `xllamacpp` (the optional extra `llmkit[llama]`): a
prebuilt CPU wheel that installs in seconds and wraps llama.cpp's own server loop, so many prompts share one
model through its parallel sequences (continuous batching).

Results are the same `Generation` records as the transformers engine: the prompt goes through the same chat
template (rendered with jinja2 the way transformers renders it), stop strings cut the text the same way, and the
finish reason and token counts follow the same rules (the end-of-sequence token is not counted).

What it cannot run is said here (`bindings_installed`, `gguf_for`, `unsupported_settings`, `bindings_have_gpu`);
when auto prefers it is engines/choose.py's rule. `generate()` runs it.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit import signals
from llmkit.errors import LlmkitError, MissingDependencyError, UsageError
from llmkit.sampling import Generation, GenerationSettings, StopStream, stream_seed
from llmkit.sampling import settings_record as settings_record  # the one record both engines write

if TYPE_CHECKING:
    from concurrent.futures import Future

NAME = "llama-cpp"
BINDINGS_MODULE = "xllamacpp"
INSTALL_HINT = 'pip install "llmkit[llama]" (or: make install-llama)'
LOOKUP_MATCH = 3  # --lookup: tokens that must match earlier context before its continuation is drafted
DEFAULT_CONTEXT = 4096  # least tokens of KV cache shared by all parallel sequences (prompt + answer); capped by the model
PROMPT_ALLOWANCE = 512  # prompt tokens each parallel sequence is given room for, on top of --max-new-tokens
PROMPT_SLACK = 8  # tokens a prompt may take beyond its UTF-8 length: BOS, a leading space (SentencePiece)
CONTEXT_STEP = 256  # a context fitted to known prompts is rounded up to this (llama.cpp pads its KV cache so)
GGUF_INFO_CACHE_VERSION = "1"  # bump when GGUFInfo's fields change
from llmkit.threads import THREADS_ENV, pick_threads  # noqa: E402,F401  (one thread rule for torch and llama.cpp)

# transformers' order: repetition penalty, then temperature, top-k, top-p, min-p, typical-p. llama.cpp's default
# applies temperature last, which changes what top-p/min-p keep; this order makes the knobs mean the same thing.
SAMPLER_ORDER = ("penalties", "temperature", "top_k", "top_p", "min_p", "typ_p")
# Settings that only the transformers engine has (beam search and n-best lists, n-gram blocking).
UNSUPPORTED = {
    "num_beams": "beam search (--num-beams > 1)",
    "num_return_sequences": "n-best lists (--num-return-sequences > 1)",
    "no_repeat_ngram_size": "--no-repeat-ngram-size",
    "length_penalty": "--length-penalty",
    "early_stopping": "--early-stopping",
}


class EngineLoadError(LlmkitError):
    """llama.cpp refused the file (e.g. a tokenizer it does not know); `--engine auto` falls back to transformers."""


# --- what it can run ---------------------------------------------------------------------------------------------


def bindings_installed() -> bool:
    """True when the llama.cpp bindings can be imported (checked without importing them)."""
    return importlib.util.find_spec(BINDINGS_MODULE) is not None


def unsupported_settings(settings: GenerationSettings) -> list[str]:
    """The requested settings that llama.cpp cannot honour, as flag descriptions (empty: all supported)."""
    found = []
    if settings.num_beams > 1:
        found.append(UNSUPPORTED["num_beams"])
    if settings.num_return_sequences > 1:
        found.append(UNSUPPORTED["num_return_sequences"])
    if settings.no_repeat_ngram_size:
        found.append(UNSUPPORTED["no_repeat_ngram_size"])
    if settings.length_penalty is not None:
        found.append(UNSUPPORTED["length_penalty"])
    if settings.early_stopping:
        found.append(UNSUPPORTED["early_stopping"])
    return found


def gguf_for(model_spec: str) -> Path | None:
    """The GGUF file llama.cpp would run for `model_spec`, or None when there is none.

    This is the seam for converted models: a transformers folder that has been exported to GGUF (the quantize
    command's job) will be found here once that export exists; for now only GGUF sources qualify.
    """
    from llmkit.loading import resolve

    source = resolve(model_spec)
    return Path(source.location) if source.kind == "gguf" else None


def bindings_have_gpu() -> bool:
    """Whether the installed llama.cpp build has a GPU backend (CUDA, Metal, Vulkan, ...)."""
    import xllamacpp

    try:
        devices = xllamacpp.get_device_info()
    except Exception:  # an old wheel without device listing: assume the CPU build
        return False
    # ggml device types: 0 CPU, 1 GPU, 2 integrated GPU, 3 accelerator (BLAS and the like, still the CPU)
    return any(int(d.get("type", 0)) in (1, 2) for d in devices)


# --- the GGUF header: chat template and special tokens -----------------------------------------------------------

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Only these keys are decoded; the rest of the header (vocabularies, merges) is skipped by length.
_WANTED = (
    "general.architecture",
    "tokenizer.chat_template",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
)


@dataclass(frozen=True)
class GGUFInfo:
    """What the engine needs from a GGUF header (read in pure Python, without gguf's slow full parse)."""

    architecture: str
    context_length: int | None
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos: bool


def read_gguf_values(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    """The values of `keys` (and of every `*.context_length`) in a GGUF file's header; other keys are skipped.

    Pure Python over a memory map: gguf's GGUFReader builds an object per vocabulary entry and takes seconds.

    Raises:
        UsageError: the file is not a GGUF file (or not one this reader knows).
    """
    wanted = set(keys)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise UsageError(f"{path} is not a GGUF file (bad magic); give a .gguf model")
        (version,) = struct.unpack_from("<I", buf, 4)
        if version < 2:
            raise UsageError(f"{path} is GGUF version {version}; re-export it with a current llama.cpp")
        (kv_count,) = struct.unpack_from("<Q", buf, 16)
        pos = 24
        values: dict[str, Any] = {}

        def string(at: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", buf, at)
            return buf[at + 8 : at + 8 + n].decode("utf-8", errors="replace"), at + 8 + n

        def value(kind: int, at: int, keep: bool) -> tuple[Any, int]:
            if kind in _SCALAR:
                fmt = _SCALAR[kind]
                return (struct.unpack_from(fmt, buf, at)[0] if keep else None), at + struct.calcsize(fmt)
            if kind == _STRING:
                if keep:
                    return string(at)
                (n,) = struct.unpack_from("<Q", buf, at)
                return None, at + 8 + n
            if kind == _ARRAY:
                item_kind, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                if item_kind in _SCALAR:
                    size = struct.calcsize(_SCALAR[item_kind])
                    items = list(struct.unpack_from(f"<{count}{_SCALAR[item_kind][1]}", buf, at)) if keep else None
                    return items, at + count * size
                out = []
                for _ in range(count):
                    item, at = value(item_kind, at, keep)
                    out.append(item)
                return (out if keep else None), at
            raise UsageError(f"{path}: unknown GGUF value type {kind}; the file may be damaged")

        for _ in range(kv_count):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            keep = key in wanted or key.endswith(".context_length")
            found, pos = value(kind, pos + 4, keep)
            if keep:
                values[key] = found
    return values


def read_gguf_info(path: Path) -> GGUFInfo:
    """The architecture, context length, chat template and BOS/EOS strings of a GGUF model.

    Cached as a small JSON file under $LLMKIT_HOME (keyed by path, size and mtime): walking a 49k-token vocabulary
    in Python takes 0.1-0.3 s, a real share of a one-prompt run that llama.cpp finishes in about two seconds.

    Raises:
        UsageError: the file is not a GGUF file.
    """
    import dataclasses
    import hashlib
    import json

    from llmkit import tempnames
    from llmkit.fsutil import llmkit_home

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{GGUF_INFO_CACHE_VERSION}"
    cache = llmkit_home() / "gguf-info" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        return GGUFInfo(**json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        pass
    info = _read_gguf_info(path)
    try:  # written under a temporary name (tempnames' rule), then renamed: a reader never sees half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempnames.replacing(cache, suffix=".tmp", journal=tempnames.journal_dir()) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(info)), encoding="utf-8")
    except OSError:  # a read-only home only costs the next run the same 0.1-0.3 s
        pass
    return info


def _read_gguf_info(path: Path) -> GGUFInfo:
    values = read_gguf_values(path, _WANTED)
    tokens = values.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str | None:
        index = values.get(key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    arch = str(values.get("general.architecture", ""))
    return GGUFInfo(
        architecture=arch,
        context_length=values.get(f"{arch}.context_length"),
        chat_template=values.get("tokenizer.chat_template"),
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        add_bos=bool(values.get("tokenizer.ggml.add_bos_token", False)),
    )


def render_chat(info: GGUFInfo, prompt: Any, *, system: str | None, raw: bool) -> str:
    """The prompt text, through the model's chat template unless `raw` (as transformers' apply_chat_template).

    `prompt` is a string or a conversation (see `sampling.chat_messages`).
    """
    from llmkit.sampling import chat_messages

    messages = chat_messages(prompt, system=system, raw=raw, has_template=bool(info.chat_template))
    if messages is None:
        return prompt
    assert info.chat_template is not None
    from llmkit.sampling import render_chat_template

    text = render_chat_template(info.chat_template, messages, bos_token=info.bos_token or "",
                                eos_token=info.eos_token or "")
    # llama.cpp adds BOS itself when the model asks for it; a template that writes it too would double it.
    if info.add_bos and info.bos_token and text.startswith(info.bos_token):
        text = text[len(info.bos_token) :]
    return text


# --- the llama.cpp runtime ---------------------------------------------------------------------------------------

_SERVERS: dict[tuple[str, int, int, int], Any] = {}
_SERVERS_LOCK = threading.Lock()


def _server(gguf: Path, *, parallel: int, context: int, lookup: int = 0) -> Any:
    """A loaded llama.cpp model with `parallel` sequences, kept for reuse by later calls in this process.

    `lookup` > 0 turns on prompt-lookup decoding: llama.cpp's NGRAM_SIMPLE speculation drafts up to `lookup`
    tokens that followed the last LOOKUP_MATCH tokens earlier in the context, and verifies them in one batch.
    """
    key = (str(gguf), parallel, context, lookup)
    with _SERVERS_LOCK:
        if key in _SERVERS:
            return _SERVERS[key]
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_ctx = context
        params.n_parallel = parallel
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = pick_threads()
        params.kv_unified = True  # one KV pool for all sequences: a long prompt is not capped at n_ctx / parallel
        params.warmup = False  # the warm-up decode costs more than it saves for one command's run
        # llama.cpp's default "fit" pass loads the model a first time to size the context to device memory; the
        # context is set above, so that pass only costs start-up (Server() took half the time without it, 3 runs
        # alternating, benchmarks/startup_generate.py, 2026-11-28, load average 16).
        params.fit_params = False
        if lookup > 0:
            spec = params.speculative
            spec.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
            # llama.cpp's defaults (match 12 tokens) almost never fire on a short prompt; 3 is the usual choice
            spec.ngram_simple.size_n = LOOKUP_MATCH
            spec.ngram_simple.size_m = lookup
            spec.draft.n_max, spec.draft.n_min = lookup, 0
        # The bindings run llama.cpp's server loop, which also answers on a random port of 127.0.0.1: a random
        # API key keeps other local users out of it. Its logs stay off stderr unless debugging.
        params.api_keys = [secrets.token_hex(16)]
        params.verbosity = 3 if os.environ.get("LLMKIT_DEBUG", "") not in ("", "0") else -1
        try:
            server = xllamacpp.Server(params)
        except Exception as exc:
            raise EngineLoadError(f"llama.cpp could not load {gguf.name} ({exc}); try --engine transformers") from exc
        _SERVERS.clear()  # one model at a time: a new configuration releases the old one
        _SERVERS[key] = server
        return server


def load_fresh(gguf: Path, *, context: int, parallel: int = 1) -> tuple[Any, float]:
    """Load `gguf` anew (any kept model released first) and time it: for measuring, where a kept model would
    make the load look free.

    Returns:
        (the loaded server, which later `generate()` calls with the same settings reuse; seconds the load took).
    """
    with _SERVERS_LOCK:
        _SERVERS.clear()
    started = time.perf_counter()
    server = _server(gguf, parallel=parallel, context=context)
    return server, time.perf_counter() - started


def request_params(settings: GenerationSettings, *, context: int) -> dict[str, Any]:
    """The llama.cpp request for `settings`: each knob mapped 1:1, unset sampling knobs switched off.

    Greedy decoding is temperature 0 (llama.cpp then takes the most likely token after the penalties).
    Stop strings are handled by llmkit (see `generate`), so that a stop and an end-of-sequence stay apart.
    """
    req: dict[str, Any] = {
        "max_tokens": settings.max_new_tokens,
        "samplers": list(SAMPLER_ORDER),
        "repeat_penalty": 1.0 if settings.repetition_penalty is None else settings.repetition_penalty,
        # transformers penalises every token in the context, prompt included
        "repeat_last_n": context,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "dry_multiplier": 0.0,
        "xtc_probability": 0.0,
        "top_n_sigma": -1.0,
        "mirostat": 0,
        # Every prompt is computed whole: reusing the KV of an earlier prompt's shared prefix changes how the
        # rest is batched, and with it the last digits of the logits, so a greedy answer would depend on the
        # prompt before it (0 of 5 BBC summaries repeated word for word with the cache on, 5 of 5 without). One
        # rule at every batch size also keeps batch 1 and parallel sequences in step (with the cache on only in
        # parallel, the tiny model's answers parted under load). It costs 14-19% on 64 short questions
        # (benchmarks/README.md).
        "cache_prompt": False,
    }
    if settings.do_sample:
        req.update(
            temperature=1.0 if settings.temperature is None else settings.temperature,
            top_k=0 if settings.top_k is None else settings.top_k,
            top_p=1.0 if settings.top_p is None else settings.top_p,
            min_p=0.0 if settings.min_p is None else settings.min_p,
            typical_p=1.0 if settings.typical_p is None else settings.typical_p,
        )
    else:
        req.update(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0)
    if settings.seed is not None:
        req["seed"] = settings.seed & 0xFFFFFFFF
    return req


def context_size(parallel: int, max_new_tokens: int, model_context: int | None,
                 longest_prompt: int | None = None) -> int:
    """Tokens of KV cache for `parallel` sequences that each may write `max_new_tokens` after their prompt.

    The pool is shared (kv_unified), so one long prompt can borrow room the others do not use; it is sized so
    that every sequence can write its whole answer after a prompt of up to PROMPT_ALLOWANCE tokens. Where every
    prompt is known (`longest_prompt`), the pool is cut to what they need when that is less: a smaller pool
    starts faster (llama.cpp allocates and clears all of it; benchmarks/startup_generate.py).

    Args:
        parallel: sequences decoded together (--batch-size).
        max_new_tokens: the longest answer asked for.
        model_context: the model's trained context (`<arch>.context_length`), or None if the file has none.
        longest_prompt: the UTF-8 length of the longest prompt text of the run (after the chat template), when
            all of them are known; it bounds the prompt's tokens (every token of a byte-level or byte-fallback
            vocabulary covers at least one byte; PROMPT_SLACK adds the BOS and a leading space).

    Returns:
        At least DEFAULT_CONTEXT (capped by the model's context), and parallel x (answer + prompt allowance);
        or, with `longest_prompt`, parallel x (that bound + answer) rounded up to CONTEXT_STEP where smaller.
    """
    floor = min(DEFAULT_CONTEXT, model_context) if model_context else DEFAULT_CONTEXT
    per_sequence = max_new_tokens + PROMPT_ALLOWANCE
    if model_context:
        per_sequence = min(per_sequence, model_context)
    usual = max(floor, parallel * per_sequence)
    if longest_prompt is None:
        return usual
    needed = longest_prompt + PROMPT_SLACK + max_new_tokens
    if model_context:
        needed = min(needed, model_context)
    fitted = -(-parallel * needed // CONTEXT_STEP) * CONTEXT_STEP
    return min(usual, fitted)


def _context_full(index: int, done: int, wanted: int, context: int, parallel: int) -> UsageError:
    shared = f", shared by {parallel} parallel sequences" if parallel > 1 else ""
    return UsageError(
        f"prompt {index + 1}: llama.cpp's context ({context} tokens{shared}) filled after {done} of the {wanted} "
        f"new tokens asked for; lower --max-new-tokens{' or --batch-size' if parallel > 1 else ''}, shorten the "
        "prompt, or use --engine transformers"
    )


@dataclass
class _Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    drafted: int = 0  # --lookup: tokens llama.cpp drafted from the context, and how many of them it kept
    accepted: int = 0


def _complete(
    server: Any,
    index: int,
    text: str,
    request: dict[str, Any],
    stops: tuple[str, ...],
    on_text: Callable[[str], None] | None,
    context: int = 0,
    parallel: int = 1,
    cancel: threading.Event | None = None,
) -> _Answer:
    """One prompt through llama.cpp, streamed: stop strings are checked on the text as it grows.

    Args:
        cancel: once set, the generation ends at its next token (the caller was stopped: Ctrl-C, SIGTERM).

    Raises:
        UsageError: the prompt or its answer did not fit llama.cpp's context (never a silently short answer).
        KeyboardInterrupt: a stop signal arrived while tokens streamed (signals.Interrupted for SIGTERM/SIGHUP).
    """
    view = StopStream(stops, on_text)  # never shows text that may turn out to be a stop string
    state: dict[str, Any] = {"text": "", "chunks": 0, "finish": None, "usage": None, "timings": None, "error": None}
    raised: list[BaseException] = []

    def on_chunk(chunk: dict[str, Any]) -> bool:
        if (cancel is not None and cancel.is_set()) or signals.pending() is not None:
            return True  # stopped: end the generation at this token
        try:
            return take(chunk)
        except BaseException as exc:
            raised.append(exc)
            return True

    def take(chunk: dict[str, Any]) -> bool:
        if "error" in chunk:
            state["error"] = chunk["error"]
            return True
        state["timings"] = chunk.get("timings") or state["timings"]
        state["usage"] = chunk.get("usage") or state["usage"]
        choice = (chunk.get("choices") or [{}])[0]
        if choice.get("finish_reason") is None:
            state["chunks"] += 1  # one chunk per sampled token
        ended = choice.get("finish_reason")
        state["text"], hit = view.update(state["text"] + (choice.get("text") or ""), done=bool(ended or state["finish"]))
        if hit:
            state["finish"] = "stop"
        elif ended:
            state["finish"] = "length" if ended == "length" else "eos"
        return state["finish"] == "stop"  # True ends the generation at once

    body = dict(request, prompt=text, stream=True, timings_per_token=True, stream_options={"include_usage": True})
    started = time.perf_counter()
    # On the main thread, a stop signal's handler would run inside this callback or xllamacpp's wrapper around
    # it, whose C++ frames swallow the exception (with a traceback on stderr) and generate on. So the signal is
    # only recorded meanwhile: the callback ends the generation at the next token and the block's end raises.
    with signals.deferred():
        server.handle_completions(body, on_chunk)
    seconds = time.perf_counter() - started
    if raised:
        raise raised[0]
    stopped_by = signals.pending()
    if stopped_by is not None:  # a worker thread: the main thread is unwinding; this answer is cut short
        raise signals.Interrupted(stopped_by)
    if state["error"] is not None:
        error = state["error"]
        message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        if isinstance(error, dict) and error.get("type") == "exceed_context_size_error":
            raise UsageError(
                f"prompt {index + 1} needs {error.get('n_prompt_tokens')} tokens of context but llama.cpp has "
                f"{error.get('n_ctx')}; shorten it or use --engine transformers"
            )
        if "context size has been exceeded" in message.lower():  # the shared pool ran out mid-answer
            raise _context_full(index, state["chunks"], request["max_tokens"], context, parallel)
        raise LlmkitError(f"llama.cpp failed on prompt {index + 1}: {message}")
    timings = state["timings"] or {}
    usage = state["usage"] or {}
    prompt_tokens = int(usage.get("prompt_tokens") or (timings.get("cache_n", 0) + timings.get("prompt_n", 0)))
    finish = state["finish"] or "eos"
    if finish == "stop":
        completion = state["chunks"]
    else:
        completion = int(usage.get("completion_tokens", state["chunks"]))
        if finish == "eos" and completion > 0:
            completion -= 1  # llama.cpp counts the end-of-sequence token; transformers does not
    if finish == "length" and completion < request["max_tokens"]:
        # llama.cpp ends a sequence whose context is full with "length": not the length that was asked for
        raise _context_full(index, completion, request["max_tokens"], context, parallel)
    return _Answer(state["text"], finish, prompt_tokens, completion, seconds,
                   int(timings.get("draft_n") or 0), int(timings.get("draft_n_accepted") or 0))


def generate(
    prompts: Iterable[str],
    *,
    model: str,
    settings: GenerationSettings,
    system: str | None = None,
    raw: bool = False,
    batch_size: int = 8,
    on_text: Callable[[int, str], None] | None = None,
    reason: str = "",
    gguf: Path | None = None,
    context: int | None = None,
    lookup: int = 0,
) -> Iterator[Generation]:
    """Generate with llama.cpp, yielding `Generation` records in input order as soon as each is ready.

    Args:
        prompts: the prompts (read lazily, a few batches ahead; a list or tuple: all known, and the context is
            fitted to the longest).
        model: the model spec, as recorded in each result.
        settings: `GenerationSettings` (greedy or sampling; see `unsupported_settings` for what is not here).
        system: system message for chat models.
        raw: send the prompt as is, without the chat template.
        batch_size: how many prompts llama.cpp decodes together (its parallel sequences); 1 streams `on_text`.
        on_text: called with (prompt index, text delta) as tokens arrive (batch size 1 only).
        reason: why this engine runs, for the record.
        gguf: the GGUF file (default: resolved from `model`).
        context: KV cache tokens shared by the sequences (default: `context_size`, fitted to the prompts when
            they are all known).
        lookup: prompt-lookup decoding, up to this many drafted tokens per step (0: off; see `_server`).

    Returns:
        An iterator of `Generation` with engine="llama-cpp".
    """
    if not bindings_installed():
        raise MissingDependencyError(f"the llama.cpp engine needs its bindings; install them: {INSTALL_HINT}")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    gguf = gguf or gguf_for(model)
    if gguf is None:
        raise UsageError(f"{model} is not a GGUF model; use --engine transformers")
    info = read_gguf_info(gguf)
    if info.context_length and settings.max_new_tokens >= info.context_length:
        raise UsageError(
            f"--max-new-tokens {settings.max_new_tokens} does not fit {model}'s context of {info.context_length} "
            f"tokens (prompt and answer together); ask for fewer than {info.context_length}"
        )

    def prepare(index: int, prompt: str) -> str:
        text = render_chat(info, prompt, system=system, raw=raw)
        if not text:
            raise UsageError(f"prompt {index + 1} is empty after tokenization; give some text")
        return text

    texts: list[str] | None = None
    if isinstance(prompts, Sequence):  # every prompt is known: the context can be fitted to the longest
        texts = [prepare(index, prompt) for index, prompt in enumerate(prompts)]
    if context is None:
        longest = max((len(t.encode("utf-8")) for t in texts), default=0) if texts is not None else None
        context = context_size(batch_size, settings.max_new_tokens, info.context_length, longest)
    server = _server(gguf, parallel=batch_size, context=context, lookup=lookup)
    request = request_params(settings, context=context)

    def request_for(index: int) -> dict[str, Any]:
        # each input samples from its own stream (the transformers engine's rule too: sampling.stream_seed)
        return request if settings.seed is None else dict(request, seed=stream_seed(settings.seed, index))
    record = settings_record(settings)
    if lookup:
        record = dict(record, lookup=lookup)

    def rendered() -> Iterator[tuple[int, str, str]]:
        """(index, prompt, prompt text) in input order, rendering the prompts not rendered above."""
        for index, prompt in enumerate(prompts):
            yield index, prompt, texts[index] if texts is not None else prepare(index, prompt)

    def result(prompt: str, answer: _Answer) -> Generation:
        return Generation(
            prompt=prompt,
            text=answer.text,
            finish_reason=answer.finish_reason,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            seconds=round(answer.seconds, 4),
            tokens_per_second=round(answer.completion_tokens / answer.seconds, 2) if answer.seconds > 0 else 0.0,
            model=model,
            engine="llama-cpp",
            engine_reason=reason,
            settings=record,
        )

    if batch_size == 1:
        for index, prompt, text in rendered():
            delta = (lambda d, i=index: on_text(i, d)) if on_text is not None else None
            yield result(prompt, _complete(server, index, text, request_for(index), settings.stop, delta, context, 1))
        return

    # Many prompts: one request per prompt, `batch_size` in flight; llama.cpp decodes the in-flight ones
    # together (continuous batching), and results come out in input order.
    from concurrent.futures import ThreadPoolExecutor  # here: 10-20 ms of a one-prompt start-up

    window = 2 * batch_size
    cancel = threading.Event()  # set when this generator stops early (an error, Ctrl-C, SIGTERM, SIGHUP)
    with ThreadPoolExecutor(max_workers=batch_size, thread_name_prefix="llmkit-llama") as pool:
        pending: list[tuple[str, Future[_Answer]]] = []
        try:
            for index, prompt, text in rendered():
                pending.append((prompt, pool.submit(_complete, server, index, text, request_for(index), settings.stop,
                                                    None, context, batch_size, cancel)))
                while len(pending) >= window or (pending and pending[0][1].done()):
                    first_prompt, future = pending.pop(0)
                    yield result(first_prompt, future.result())
            for first_prompt, future in pending:
                yield result(first_prompt, future.result())
        finally:
            # The pool's exit waits for the requests in flight: each ends at its next token instead of its last.
            cancel.set()
            for _, future in pending:
                future.cancel()
