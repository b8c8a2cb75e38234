"""/v1/chat/completions and /v1/completions: an OpenAI body in, one engine call per choice, JSON or SSE out.

The body is read by openai_api.py (the reader `generate` uses for batch files), so a field llmkit cannot honour is
refused with 400 and the field's name, never dropped. Each of the `n` choices is one `complete()` call on the
model's loaded generator, made from a worker thread: llama.cpp decodes the calls of concurrent requests together in
its parallel sequences, llmkit's Llama loop (a GGUF model served with --max-concurrency 16 or more) runs the greedy
calls waiting when it comes free as one batch, transformers takes them in turn. Text and log-probabilities come back through callbacks,
which hand them to the event loop; a stream sends each piece as it comes, as OpenAI's `chat.completion.chunk` /
`text_completion` events. A client that goes away sets the run's cancel flag, and the engine stops at its next
token.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any

from llmkit.openai_api import (
    Answer,
    BodyError,
    chat_logprobs,
    completion_body,
    completion_logprobs,
    finish_reason,
    merge_settings,
    new_id,
    number,
    parse_messages,
    parse_prompt,
    parse_settings,
    settings_problem,
)
from llmkit.sampling import DEFAULT_MAX_NEW_TOKENS, Completion, GenerationSettings, TokenLogprob
from llmkit.serve.settings import MAX_CHOICES, MAX_TOP_LOGPROBS

# Fields the server honours beyond the generation settings (the batch reader accepts them only as no-ops).
CHAT_FIELDS = ("stream", "stream_options", "logprobs", "top_logprobs")
COMPLETIONS_FIELDS = ("stream", "stream_options", "logprobs")
DISCONNECT_POLL_SECONDS = 0.25  # how often a request waiting on the engine checks that its client is still there


@dataclass(frozen=True)
class GenerationRequest:
    """A checked chat or completions request.

    Attributes:
        is_chat: /v1/chat/completions (messages through the chat template) or /v1/completions (a raw prompt).
        prompt: the messages (chat) or the prompt text.
        settings: the decoding settings of each choice (`num_return_sequences` 1: choices run one call each).
        n: choices asked for; with a seed, choice j samples from `stream_seed(seed, j)`.
        stream: answer as server-sent events.
        include_usage: stream a last chunk with the token counts (`stream_options.include_usage`).
        logprobs: alternatives per token when log-probabilities were asked for (0 for the chosen token only);
            None: none.
    """

    is_chat: bool
    prompt: Any
    settings: GenerationSettings
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None


def parse_request(body: dict[str, Any], *, is_chat: bool, max_tokens: int) -> GenerationRequest:
    """Check a request body and turn it into a `GenerationRequest`.

    Args:
        body: the parsed JSON body.
        is_chat: the chat endpoint (else completions).
        max_tokens: the server's limit on `max_tokens` (a body without one gets `DEFAULT_MAX_NEW_TOKENS`, as
            `llmkit generate` does, within this limit).

    Raises:
        BodyError: the first field that is missing, out of range or not supported (its name in `param`).
    """
    prompt: Any = tuple(parse_messages(body)) if is_chat else parse_prompt(body)
    values = parse_settings(body, known=("messages",) if is_chat else ("prompt",),
                            accepted=CHAT_FIELDS if is_chat else COMPLETIONS_FIELDS)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BodyError("invalid_request", "stream must be true or false", "stream")
    include_usage = _stream_options(body.get("stream_options"), bool(stream))
    logprobs = _chat_logprobs(body) if is_chat else _completion_logprobs(body)
    # No max_tokens: llmkit generate's default answer length (within the server's limit), so that the same
    # request gives the same answer as `llmkit generate` with the same settings.
    default = GenerationSettings(max_new_tokens=min(DEFAULT_MAX_NEW_TOKENS, max_tokens))
    merged = merge_settings(asdict(default), values)
    problem = settings_problem(merged)
    if problem is not None:
        raise BodyError("invalid_request", problem[0], problem[1])
    if merged["max_new_tokens"] > max_tokens:
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        raise BodyError("invalid_request", f"{field} {merged['max_new_tokens']} is more than this server allows "
                        f"({max_tokens}, its --max-tokens)", field)
    n = merged["num_return_sequences"]
    if n > MAX_CHOICES:
        raise BodyError("invalid_request", f"n {n} is more than this server allows ({MAX_CHOICES})", "n")
    settings = GenerationSettings(**dict(merged, num_return_sequences=1))
    return GenerationRequest(is_chat, prompt, settings, n, bool(stream), include_usage, logprobs)


def _stream_options(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise BodyError("invalid_request", "stream_options is only for stream: true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise BodyError("unsupported_parameter", f"stream_options={json.dumps(options)} is not supported by llmkit "
                        "(it takes include_usage)", "stream_options")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise BodyError("invalid_request", "stream_options.include_usage must be true or false", "stream_options")
    return usage


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat: `logprobs: true` asks for them, `top_logprobs` (0-20) for alternatives."""
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise BodyError("invalid_request", "logprobs must be true or false", "logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        top = number(body, "top_logprobs", integer=True)
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise BodyError("invalid_request", f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "top_logprobs")
        if top and not wanted:
            raise BodyError("invalid_request", "top_logprobs needs logprobs: true", "top_logprobs")
    return (top or 0) if wanted else None


def _completion_logprobs(body: dict[str, Any]) -> int | None:
    """Completions: `logprobs: N` asks for them with N alternatives (0-20; OpenAI allows up to 5)."""
    if body.get("logprobs") is None:
        return None
    top = number(body, "logprobs", integer=True)
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise BodyError("invalid_request", f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "logprobs")
    return top


class Run:
    """One request's choices on the engine: `n` calls in worker threads, their events queued for the event loop.

    Events are tuples (kind, choice, value): ("text", j, delta), ("logprob", j, TokenLogprob), ("done", j,
    Completion) and ("error", j, exception). `cancel()` ends every choice at its next token.
    """

    def __init__(self, generator: Any, request: GenerationRequest, pool: Executor,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._loop = loop
        self._generator = generator
        self.pending = request.n
        for choice in range(request.n):
            pool.submit(self._work, choice)

    def cancel(self) -> None:
        """Stop every choice at its next token (the client went away)."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def _emit(self, kind: str, choice: int, value: Any) -> None:
        self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, choice, value))

    def _work(self, choice: int) -> None:
        request = self.request
        stream = request.stream
        try:
            done = self._generator.complete(
                request.prompt, request.settings, raw=not request.is_chat, index=choice,
                on_text=(lambda delta: self._emit("text", choice, delta)) if stream else None,
                on_logprob=(lambda entry: self._emit("logprob", choice, entry))
                if stream and request.logprobs is not None else None,
                cancelled=self._stop.is_set, logprobs=request.logprobs,
            )
            self._emit("done", choice, done)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which answers with it
            self._emit("error", choice, exc)

    async def next_event(self, disconnected: Callable[[], Any]) -> tuple[str, int, Any]:
        """The next event; cancels the run (and raises `ClientGone`) when the client has gone meanwhile."""
        while True:
            try:
                return await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await disconnected():
                    self.cancel()
                    raise ClientGone from None


class ClientGone(Exception):
    """The client closed its connection before its answer was complete."""


async def collect(run: Run, disconnected: Callable[[], Any]) -> list[Completion]:
    """Every choice's `Completion`, in choice order (a non-streaming answer).

    Raises:
        ClientGone: the client left (the run is cancelled).
        Exception: the first choice's failure (the others are cancelled).
    """
    done: dict[int, Completion] = {}
    while len(done) < run.request.n:
        kind, choice, value = await run.next_event(disconnected)
        if kind == "error":
            run.cancel()
            raise value
        if kind == "done":
            done[choice] = value
    return [done[j] for j in range(run.request.n)]


def answers_body(request: GenerationRequest, completions: list[Completion], *, model: str) -> dict[str, Any]:
    """The whole `chat.completion` / `text_completion` object for finished choices."""
    answers = []
    for done in completions:
        logprobs = None
        if done.logprobs is not None:
            logprobs = chat_logprobs(done.logprobs) if request.is_chat else completion_logprobs(done.logprobs)
        answers.append(Answer(done.text, done.finish_reason, done.completion_tokens, logprobs))
    return completion_body(request.is_chat, answers, prompt_tokens=completions[0].prompt_tokens, model=model)


class _ChoiceStream:
    """What one choice has streamed so far: text length, and the log-probabilities not yet sent.

    A token's entry goes out with the first text chunk that reaches into its text (entries can come before their
    text, from llama.cpp, or after it, from transformers; stop strings hold text back), the rest with the last.
    """

    def __init__(self) -> None:
        self.sent_chars = 0
        self.covered_chars = 0
        self.sent_entries = 0
        self.waiting: list[TokenLogprob] = []

    def take(self, delta: str) -> tuple[list[TokenLogprob], int]:
        """(entries to send with `delta`, the text offset of the first of them)."""
        self.sent_chars += len(delta)
        offset, out = self.covered_chars, []
        while self.waiting and self.covered_chars < self.sent_chars:
            entry = self.waiting.pop(0)
            out.append(entry)
            self.covered_chars += len(entry.token)
        self.sent_entries += len(out)
        return out, offset

    def rest(self, done: Completion) -> tuple[list[TokenLogprob], int]:
        """The entries still unsent, up to the answer's counted tokens."""
        out = self.waiting[: max(0, done.completion_tokens - self.sent_entries)]
        self.waiting = []
        return out, self.covered_chars


class EventStream:
    """The server-sent events of one streamed request (OpenAI's chunk objects, then `data: [DONE]`)."""

    def __init__(self, request: GenerationRequest, model: str) -> None:
        self.request = request
        self.model = model
        self.id = new_id("chatcmpl-" if request.is_chat else "cmpl-")
        self.created = int(time.time())
        self.choices = [_ChoiceStream() for _ in range(request.n)]

    @staticmethod
    def event(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        obj: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk" if self.request.is_chat
                               else "text_completion", "created": self.created, "model": self.model,
                               "choices": choices}
        if usage is not None:
            obj["usage"] = usage
        return self.event(obj)

    def _choice(self, index: int, text: str | None, entries: list[TokenLogprob], offset: int,
                finish: str | None, role: bool = False) -> dict[str, Any]:
        logprobs = None
        if self.request.logprobs is not None and (entries or finish is None):
            logprobs = chat_logprobs(entries) if self.request.is_chat else completion_logprobs(entries, offset)
        if self.request.is_chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}

    def opening(self) -> list[str]:
        """Chat streams start each choice with the assistant's role (as OpenAI's do)."""
        if not self.request.is_chat:
            return []
        return [self._chunk([self._choice(j, "", [], 0, None, role=True)]) for j in range(self.request.n)]

    def logprob(self, choice: int, entry: TokenLogprob) -> None:
        self.choices[choice].waiting.append(entry)

    def text(self, choice: int, delta: str) -> str:
        entries, offset = self.choices[choice].take(delta)
        return self._chunk([self._choice(choice, delta, entries, offset, None)])

    def done(self, choice: int, completion: Completion) -> str:
        entries, offset = self.choices[choice].rest(completion)
        text = None if self.request.is_chat else ""
        return self._chunk([self._choice(choice, text, entries, offset, finish_reason(completion.finish_reason))])

    def usage(self, completions: list[Completion]) -> str:
        prompt = completions[0].prompt_tokens if completions else 0
        made = sum(c.completion_tokens for c in completions)
        return self._chunk([], {"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made})

    def closing(self) -> str:
        return "data: [DONE]\n\n"


async def stream_events(run: Run, stream: EventStream, first: tuple[str, int, Any],
                        disconnected: Callable[[], Any], error_event: Callable[[BaseException], dict[str, Any]],
                        on_text: Callable[[], None] | None = None,
                        on_finish: Callable[[list[Completion]], None] | None = None) -> AsyncIterator[str]:
    """The SSE text of a streamed run, starting from its first event (already taken, before the headers went out).

    An error after the stream began is sent as an `error` event (the `openai` client raises it) and ends the
    stream. Leaving the generator early (the client went away) cancels the run. `on_text()` is called at the
    first text, `on_finish(completions)` when every choice is done.
    """
    finished: dict[int, Completion] = {}
    try:
        for line in stream.opening():
            yield line
        event = first
        while True:
            kind, choice, value = event
            if kind == "text":
                if on_text is not None:
                    on_text()
                    on_text = None
                yield stream.text(choice, value)
            elif kind == "logprob":
                stream.logprob(choice, value)
            elif kind == "done":
                finished[choice] = value
                yield stream.done(choice, value)
            elif kind == "error":
                run.cancel()
                yield EventStream.event(error_event(value))
                return
            if len(finished) == run.request.n:
                break
            event = await run.next_event(disconnected)
        completions = [finished[j] for j in range(run.request.n)]
        if on_finish is not None:
            on_finish(completions)
        if run.request.include_usage:
            yield stream.usage(completions)
        yield stream.closing()
    finally:
        run.cancel()  # a no-op when every choice is done; else the client left mid-stream


def usage_of(completions: list[Completion]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of a request's finished choices."""
    return (completions[0].prompt_tokens if completions else 0), sum(c.completion_tokens for c in completions)

