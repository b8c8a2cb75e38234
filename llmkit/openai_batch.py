"""Batch files in the OpenAI Batch API format: request lines in, one output object per line out, in order.

The format that OpenAI's Batch API, `vllm run-batch` and LiteLLM accept, so one file moves between llmkit on a
laptop and a GPU fleet unchanged. Each input line is

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "...", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20}}

(`/v1/completions` lines carry `body.prompt` instead of `messages`). Each output line is

    {"id": "batch_req_...", "custom_id": "q1",
     "response": {"status_code": 200, "request_id": "req_...", "body": {<chat.completion or text_completion>}},
     "error": null}

and a line that cannot be run gets `"response": null` and `"error": {"code": ..., "message": ...}`, as the
OpenAI spec's `BatchRequestOutput` allows (its `error` is a nullable object with `code` and `message`).
Sources read (2026-11-28): the `BatchRequestOutput` schema of OpenAI's OpenAPI spec 2.3.0 as quoted by the
`openai-struct` crate (docs.rs, models/batch_request_output.rs), and vLLM's
`vllm/entrypoints/openai/run_batch.py` (`BatchRequestInput`, `BatchResponseData`, `BatchRequestOutput`). vLLM
differs on failed lines: it writes `response: {"status_code": 400, "request_id": ..., "body": null}` and `error`
as a bare string; readers that test `error != null` work on both.

Settings in a line's body override the command's flags for that line only: `max_tokens` (or
`max_completion_tokens`), `temperature` (0 means greedy), `top_p`, `top_k`, `seed`, `stop`, `n`, and vLLM's
extra `min_p` and `repetition_penalty`. Fields with no effect on the answer (`model`, `user`, `metadata`,
`store`, `service_tier`) are ignored; a field llmkit cannot honour (`tools`, `logprobs: true`, a non-zero
`presence_penalty`, ...) makes that line fail with code `unsupported_parameter` instead of being dropped silently.

Exit status of a batch run: 0 when every line was answered, `EXIT_BATCH_LINES_FAILED` (6) when the output
is complete but some lines carry an error; 1-5 keep their meaning (the whole run failed; see errors.py).

The bodies themselves are read and the response objects written by openai_api.py, which `llmkit serve` shares:
a field refused here is refused by the server with the same words. This module adds what is batch-file only (the
line envelope, line numbers in messages, grouping, output lines). It is torch-free and knows nothing of models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from llmkit.errors import EXIT_BATCH_LINES_FAILED, LlmkitError
from llmkit.openai_api import (  # noqa: F401  (the batch reader's names, as they always were)
    CHAT_ROLES,
    CHAT_URL,
    COMPLETIONS_URL,
    FINISH_REASONS,
    IGNORED_FIELDS,
    NO_OP_VALUES,
    SETTING_FIELDS,
    Answer,
    BodyError,
    completion_body,
    merge_settings,
    new_id,
    parse_messages,
    parse_prompt,
    parse_settings,
    settings_problem,
)

SUPPORTED_URLS = (CHAT_URL, COMPLETIONS_URL)
REQUIRED_FIELDS = ("custom_id", "method", "url", "body")


class BatchLinesFailedError(LlmkitError):
    """Some lines of a batch could not be run; the output still has one line per input (exit 6)."""

    exit_code = EXIT_BATCH_LINES_FAILED


@dataclass(frozen=True)
class BatchRequest:
    """One runnable line.

    Attributes:
        index: 0-based position among the file's request lines (blank lines are not requests).
        line: 1-based line number in the file.
        custom_id: the caller's id, copied to the output.
        url: CHAT_URL or COMPLETIONS_URL.
        messages: chat messages as {"role", "content"} with plain-text content (chat lines).
        prompt: the prompt text (completions lines).
        settings: llmkit `GenerationSettings` field names -> this line's values (merged over the flags).
        model: `body.model` as given, or None.
    """

    index: int
    line: int
    custom_id: str
    url: str
    messages: tuple[dict[str, str], ...] = ()
    prompt: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    model: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.url == CHAT_URL


@dataclass(frozen=True)
class BatchLineError:
    """One line that cannot be run, and why.

    Attributes:
        index / line: as in `BatchRequest`.
        custom_id: the line's custom_id when it could be read, else None.
        code: a short machine-readable reason (`invalid_json`, `invalid_request`, `unsupported_url`,
            `unsupported_method`, `unsupported_parameter`, `generation_failed`).
        message: what is wrong and what to do.
    """

    index: int
    line: int
    custom_id: str | None
    code: str
    message: str


class _Bad(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- reading -----------------------------------------------------------------------------------------------------


def is_batch_line(obj: Any) -> bool:
    """Whether a parsed JSON line looks like an OpenAI batch request (has custom_id, method, url and body)."""
    return isinstance(obj, dict) and all(key in obj for key in REQUIRED_FIELDS)


def sniff(path: Path) -> bool:
    """Whether `path` is a batch file: a .jsonl/.ndjson file whose first non-blank line is a batch request.

    Args:
        path: the input file.

    Returns:
        True for a batch file; False for anything else (including unreadable or non-JSON first lines).
    """
    if Path(path).suffix.lower() not in (".jsonl", ".ndjson") or not Path(path).is_file():
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for raw in handle:
                if raw.strip():
                    return is_batch_line(json.loads(raw))
    except (OSError, ValueError):
        return False
    return False


def read_batch(stream: Iterable[str]) -> Iterator[BatchRequest | BatchLineError]:
    """Parse a batch file line by line (lazily); blank lines are skipped, every other line yields one item.

    Args:
        stream: the file's lines (an open file, or a list of strings).

    Returns:
        An iterator of `BatchRequest` (runnable) or `BatchLineError` (answered with an error), in file order.
    """
    index = 0
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        yield parse_line(raw, line=number, index=index)
        index += 1


def parse_line(raw: str, *, line: int, index: int) -> BatchRequest | BatchLineError:
    """One batch line -> a `BatchRequest`, or a `BatchLineError` saying what is wrong with it.

    Args:
        raw: the line's text.
        line: its 1-based line number (for messages).
        index: its 0-based position among request lines.
    """
    custom_id: str | None = None
    try:
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise _Bad("invalid_json", f"line {line}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(obj, dict):
            raise _Bad("invalid_request", f"line {line}: expected a JSON object with {', '.join(REQUIRED_FIELDS)}")
        if isinstance(obj.get("custom_id"), str):
            custom_id = obj["custom_id"]
        missing = [key for key in REQUIRED_FIELDS if key not in obj]
        if missing:
            raise _Bad("invalid_request", f"line {line}: missing {', '.join(missing)}; every line needs "
                       f"{', '.join(REQUIRED_FIELDS)}")
        if not isinstance(obj["custom_id"], str) or not obj["custom_id"]:
            raise _Bad("invalid_request", f"line {line}: custom_id must be a non-empty string")
        if not isinstance(obj["method"], str) or obj["method"].upper() != "POST":
            raise _Bad("unsupported_method", f"line {line}: method {obj['method']!r}; batch lines are POST requests")
        url = obj["url"]
        if url not in SUPPORTED_URLS:
            what = "embeddings are not generated by llmkit" if url == "/v1/embeddings" else f"url {url!r} is unknown"
            raise _Bad("unsupported_url", f"line {line}: {what}; llmkit generate answers {' and '.join(SUPPORTED_URLS)}"
                       " lines")
        body = obj["body"]
        if not isinstance(body, dict):
            raise _Bad("invalid_request", f"line {line}: body must be a JSON object")
        messages: tuple[dict[str, str], ...] = ()
        prompt: str | None = None
        if url == CHAT_URL:
            messages = _messages(body, line)
        else:
            prompt = _prompt(body, line)
        settings = _settings(body, line, known=("messages",) if url == CHAT_URL else ("prompt",))
        model = body.get("model") if isinstance(body.get("model"), str) else None
        return BatchRequest(index=index, line=line, custom_id=obj["custom_id"], url=url, messages=messages,
                            prompt=prompt, settings=settings, model=model)
    except _Bad as bad:
        return BatchLineError(index=index, line=line, custom_id=custom_id, code=bad.code, message=bad.message)


def _body_part(read: Callable[[], Any], line: int) -> Any:
    """Run a shared body reader (openai_api), its error prefixed with the line number."""
    try:
        return read()
    except BodyError as exc:
        raise _Bad(exc.code, f"line {line}: {exc.message}") from None


def _messages(body: dict[str, Any], line: int) -> tuple[dict[str, str], ...]:
    return _body_part(lambda: parse_messages(body, "body."), line)


def _prompt(body: dict[str, Any], line: int) -> str:
    return _body_part(lambda: parse_prompt(body, "body."), line)


def _settings(body: dict[str, Any], line: int, *, known: Sequence[str]) -> dict[str, Any]:
    """This line's generation settings (llmkit names), checked; unknown or unusable fields are refused."""
    return _body_part(lambda: parse_settings(body, "body.", known=known), line)


# --- writing ---------------------------------------------------------------------------------------------------


_new_id = new_id


def response_body(
    request: BatchRequest,
    answers: Sequence[Answer],
    *,
    prompt_tokens: int,
    model: str,
    created: int | None = None,
    new_id: Callable[[str], str] = _new_id,
) -> dict[str, Any]:
    """The `chat.completion` (chat lines) or `text_completion` (completions lines) object for a request.

    Args:
        request: the line.
        answers: one `Answer` per choice (n of them).
        prompt_tokens: tokens in the prompt as the model saw it (after the chat template).
        model: the model that answered (llmkit's model spec).
        created: Unix time; default now.
        new_id: makes an id from a prefix (tests pass a deterministic one).
    """
    return completion_body(request.is_chat, answers, prompt_tokens=prompt_tokens, model=model, created=created,
                           new_id=new_id)


def success_output(custom_id: str, body: dict[str, Any], *, new_id: Callable[[str], str] = _new_id) -> dict[str, Any]:
    """The output line for an answered request (status 200, `error` null)."""
    return {"id": new_id("batch_req_"), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": new_id("req_"), "body": body}, "error": None}


def error_output(
    custom_id: str | None, code: str, message: str, *, new_id: Callable[[str], str] = _new_id
) -> dict[str, Any]:
    """The output line for a request that could not be run: `response` null, `error` {code, message}."""
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def line_error_output(error: BatchLineError, *, new_id: Callable[[str], str] = _new_id) -> dict[str, Any]:
    """`error_output` for a line that failed to parse."""
    return error_output(error.custom_id, error.code, error.message, new_id=new_id)


def failed_lines(outputs: Iterable[dict[str, Any]]) -> list[int]:
    """0-based positions of the output lines that carry an error."""
    return [i for i, out in enumerate(outputs) if out.get("error") is not None]


def raise_if_failed(failed: Sequence[int], total: int) -> None:
    """After writing every output line: exit 6 (`BatchLinesFailedError`) naming the failed lines, if any.

    Args:
        failed: 0-based positions of failed lines (`failed_lines`).
        total: number of request lines.
    """
    if not failed:
        return
    shown = ", ".join(str(i + 1) for i in failed[:10]) + (" ..." if len(failed) > 10 else "")
    raise BatchLinesFailedError(
        f"{len(failed)} of {total} batch requests failed (request {shown}); their output lines carry "
        "\"error\" with a code and message"
    )


def write_lines(outputs: Iterable[dict[str, Any]], stream: TextIO) -> int:
    """Write output objects as JSON lines; returns how many."""
    count = 0
    for out in outputs:
        stream.write(json.dumps(out, ensure_ascii=False) + "\n")
        count += 1
    return count


# --- running ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the engine answered for one request: its choices and the prompt's token count."""

    answers: tuple[Answer, ...]
    prompt_tokens: int


DEFAULT_GROUP_SIZE = 32  # requests handed to the engine at once (it batches within)


def _group_key(request: BatchRequest, settings: dict[str, Any]) -> tuple[Any, ...]:
    return (request.is_chat, json.dumps(settings, sort_keys=True, default=str))


def answer_batch(
    items: Iterable[BatchRequest | BatchLineError],
    run: Callable[[list[BatchRequest], dict[str, Any]], Iterable[Reply]],
    *,
    flags: dict[str, Any],
    check: Callable[[dict[str, Any]], str | None],
    model: str,
    group_size: int = DEFAULT_GROUP_SIZE,
    new_id: Callable[[str], str] = _new_id,
) -> Iterator[dict[str, Any]]:
    """One output object per input item, in input order, running the engine on groups of alike requests.

    Consecutive requests of one kind (chat or completions) with the same merged settings go to `run` together,
    so the engine can batch them; a request with its own `seed` runs alone, so its seed covers exactly its own
    answer (and gives the same answer however the file is batched or sharded).

    Args:
        items: `read_batch` output.
        run: the engine: (requests, merged settings) -> one `Reply` per request, in order. An `LlmkitError`
            from it fails the group's requests one by one (each retried alone, so one bad request does not
            take its neighbours down).
        flags: the command's settings (GenerationSettings field values) that lines override.
        check: merged settings -> None when usable, else the reason (e.g. `generate.build_settings`'s message).
        model: the model name written into each response body.
        group_size: most requests per `run` call.
        new_id: id maker (tests pass a deterministic one).

    Returns:
        An iterator of output objects (`success_output` / `error_output`), one per item.
    """
    pending: list[tuple[BatchRequest, dict[str, Any]]] = []
    created = int(time.time())

    def flush() -> Iterator[dict[str, Any]]:
        if not pending:
            return
        group = list(pending)
        pending.clear()
        settings = group[0][1]
        requests = [request for request, _ in group]
        try:
            replies = list(run(requests, settings))
        except LlmkitError as exc:
            if len(requests) == 1:
                yield error_output(requests[0].custom_id, "generation_failed", exc.message, new_id=new_id)
                return
            for request, alone in group:
                pending.append((request, alone))
                yield from flush()
            return
        if len(replies) != len(requests):
            raise RuntimeError(f"the engine answered {len(replies)} of {len(requests)} requests")
        for request, reply in zip(requests, replies, strict=True):
            body = response_body(request, reply.answers, prompt_tokens=reply.prompt_tokens, model=model,
                                 created=created, new_id=new_id)
            yield success_output(request.custom_id, body, new_id=new_id)

    for item in items:
        if isinstance(item, BatchLineError):
            yield from flush()
            yield line_error_output(item, new_id=new_id)
            continue
        settings = merge_settings(flags, item.settings)
        problem = check(settings)
        if problem is not None:
            yield from flush()
            yield error_output(item.custom_id, "invalid_request", f"line {item.line}: {problem}", new_id=new_id)
            continue
        if pending and (_group_key(pending[0][0], pending[0][1]) != _group_key(item, settings)
                        or len(pending) >= group_size):
            yield from flush()
        pending.append((item, settings))
        if "seed" in item.settings:
            yield from flush()
    yield from flush()


def check_settings(merged: dict[str, Any]) -> str | None:
    """None when merged settings can run, else why not, in the batch line's own field names.

    Args:
        merged: `merge_settings` output (GenerationSettings field values).
    """
    problem = settings_problem(merged)
    return None if problem is None else problem[0]


def generate_runner(
    *,
    model: str,
    engine: str = "auto",
    system: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Callable[[list[BatchRequest], dict[str, Any]], list[Reply]]:
    """The engine for `answer_batch`: llmkit's `generate()` on a group of alike requests.

    Chat lines go through the model's chat template (with `system` when the conversation has no system
    message); completions lines are sent as they are, as OpenAI's /v1/completions does. The transformers model
    is loaded once and reused by every group; llama.cpp keeps its own loaded model between calls.

    Args:
        model / engine / system / batch_size / device / dtype / revision / allow_pickle / trust_remote_code:
            as for `generate.generate`.

    Returns:
        A callable (requests, merged settings) -> one `Reply` per request.
    """
    from llmkit import generate as gen
    from llmkit.engines import choose

    cache: dict[str, Any] = {}

    def run(requests: list[BatchRequest], merged: dict[str, Any]) -> list[Reply]:
        settings = gen.GenerationSettings(**merged)
        # one loaded model serves every group of the file: its dtype is chosen for batches of several requests
        choice = choose.choose_generate(model, settings, requested=engine, device=device, dtype=dtype,
                                        batch_size=batch_size, revision=revision, available=lambda n: n)
        loaded = None
        if choice.engine != choose.LLAMA_CPP:
            if "lm" not in cache:
                from llmkit.engines import transformers as hf

                # the dtype generate() would choose: float32 for batches of several requests on a CPU
                cache["lm"] = hf.load_generator(model, device=device, dtype=choice.dtype, revision=revision,
                                                allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
            loaded = cache["lm"]
        chat = requests[0].is_chat
        prompts: list[Any] = [list(r.messages) if chat else r.prompt for r in requests]
        replies = []
        for result in gen.generate(prompts, model=model, settings=settings, system=system if chat else None,
                                   raw=not chat, batch_size=batch_size, device=device, dtype=dtype,
                                   revision=revision, allow_pickle=allow_pickle,
                                   trust_remote_code=trust_remote_code, loaded=loaded, engine=engine):
            if result.candidates:
                answers = tuple(Answer(c.text, c.finish_reason, c.completion_tokens) for c in result.candidates)
            else:
                answers = (Answer(result.text, result.finish_reason, result.completion_tokens),)
            replies.append(Reply(answers=answers, prompt_tokens=result.prompt_tokens))
        return replies

    return run
