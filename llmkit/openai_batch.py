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

This module is torch-free and knows nothing of models: it parses lines, merges settings and formats outputs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from llmkit.errors import EXIT_BATCH_LINES_FAILED, LlmkitError

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
SUPPORTED_URLS = (CHAT_URL, COMPLETIONS_URL)
REQUIRED_FIELDS = ("custom_id", "method", "url", "body")

# body field -> llmkit GenerationSettings field
SETTING_FIELDS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "n": "num_return_sequences",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
}
IGNORED_FIELDS = ("model", "user", "metadata", "store", "service_tier")
# Fields accepted only with a value that changes nothing.
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "stream": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "stream_options": (None,),
}
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


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


def _messages(body: dict[str, Any], line: int) -> tuple[dict[str, str], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Bad("invalid_request", f"line {line}: body.messages must be a non-empty list of {{role, content}}")
    out = []
    for number, message in enumerate(messages):
        where = f"line {line}: body.messages[{number}]"
        if not isinstance(message, dict):
            raise _Bad("invalid_request", f"{where} must be an object with role and content")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise _Bad("unsupported_parameter", f"{where}: role {role!r}; llmkit takes system, developer, user and "
                       "assistant messages")
        if message.get("tool_calls") or message.get("function_call"):
            raise _Bad("unsupported_parameter", f"{where}: tool calls are not supported")
        out.append({"role": CHAT_ROLES[role], "content": _content(message.get("content"), where)})
    return tuple(out)


def _content(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of text parts (joined); images and audio are refused."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _Bad("unsupported_parameter", f"{where}: content part {kind!r}; llmkit takes text only")
        return "".join(texts)
    raise _Bad("invalid_request", f"{where}: content must be a string or a list of text parts")


def _prompt(body: dict[str, Any], line: int) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise _Bad("unsupported_parameter", f"line {line}: body.prompt holds {len(prompt)} items; give one prompt "
                   "(a string) per line")
    if not isinstance(prompt, str):
        raise _Bad("invalid_request", f"line {line}: body.prompt must be a string")
    return prompt


def _number(body: dict[str, Any], key: str, line: int, *, integer: bool = False) -> Any:
    value = body[key]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise _Bad("invalid_request", f"line {line}: body.{key} must be {'a whole number' if integer else 'a number'}")
    return value


def _settings(body: dict[str, Any], line: int, *, known: Sequence[str]) -> dict[str, Any]:
    """This line's generation settings (llmkit names), checked; unknown or unusable fields are refused."""
    for key, value in body.items():
        if key in SETTING_FIELDS or key in IGNORED_FIELDS or key in known:
            continue
        if key in NO_OP_VALUES:
            if value in NO_OP_VALUES[key]:
                continue
            raise _Bad("unsupported_parameter", f"line {line}: body.{key}={json.dumps(value)} is not supported by "
                       "llmkit; drop it")
        raise _Bad("unsupported_parameter", f"line {line}: body.{key} is not supported by llmkit (supported: "
                   f"{', '.join(SETTING_FIELDS)})")
    out: dict[str, Any] = {}
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            value = _number(body, key, line, integer=True)
            if value < 1:
                raise _Bad("invalid_request", f"line {line}: body.{key} must be at least 1")
            out["max_new_tokens"] = value
    if body.get("temperature") is not None:
        value = _number(body, "temperature", line)
        if value < 0:
            raise _Bad("invalid_request", f"line {line}: body.temperature must be >= 0 (0 is greedy)")
        if value == 0:
            out["do_sample"] = False  # OpenAI's temperature 0: deterministic, the most likely tokens
        else:
            out["temperature"] = float(value)
            out["do_sample"] = True
    if body.get("top_p") is not None:
        value = _number(body, "top_p", line)
        if not 0 < value <= 1:
            raise _Bad("invalid_request", f"line {line}: body.top_p must be in (0, 1]")
        out["top_p"] = float(value)
    if body.get("top_k") is not None:
        value = _number(body, "top_k", line, integer=True)
        if value < -1:
            raise _Bad("invalid_request", f"line {line}: body.top_k must be -1 or 0 (off) or a positive count")
        out["top_k"] = max(value, 0)  # vLLM's -1 and llmkit's 0 both mean "off"
    if body.get("seed") is not None:
        out["seed"] = _number(body, "seed", line, integer=True)
    if body.get("stop") is not None:
        stop = body["stop"]
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _Bad("invalid_request", f"line {line}: body.stop must be a string or a list of strings")
        out["stop"] = tuple(s for s in stop if s)
    if body.get("n") is not None:
        value = _number(body, "n", line, integer=True)
        if value < 1:
            raise _Bad("invalid_request", f"line {line}: body.n must be at least 1")
        out["num_return_sequences"] = value
    if body.get("min_p") is not None:
        value = _number(body, "min_p", line)
        if not 0 <= value <= 1:
            raise _Bad("invalid_request", f"line {line}: body.min_p must be in [0, 1]")
        out["min_p"] = float(value)
    if body.get("repetition_penalty") is not None:
        value = _number(body, "repetition_penalty", line)
        if value <= 0:
            raise _Bad("invalid_request", f"line {line}: body.repetition_penalty must be > 0 (1 is no penalty)")
        out["repetition_penalty"] = float(value)
    return out


def merge_settings(flags: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """The settings one line runs with: the command's flags, then the line's own values on top.

    Args:
        flags: the command's settings as `GenerationSettings` field values (e.g. `dataclasses.asdict(s)`).
        line: `BatchRequest.settings`.

    Returns:
        The merged field values. A line that turns sampling off (temperature 0) also drops the flags' sampling
        knobs; a line that asks for several answers (n > 1) without sampling is left for validation to refuse
        (greedy decoding has one answer; use a temperature, as OpenAI's n does).
    """
    merged = dict(flags)
    if line.get("do_sample") is False:
        for knob in ("temperature", "top_k", "top_p", "min_p", "typical_p"):
            merged[knob] = None
    merged.update(line)
    return merged


@dataclass(frozen=True)
class Answer:
    """What one choice of a generation needs for the output: its text and why it ended.

    Attributes:
        text: the generated text.
        finish_reason: llmkit's reason (`eos`, `stop`, `length`).
        completion_tokens: tokens generated for this choice.
    """

    text: str
    finish_reason: str
    completion_tokens: int


# --- writing ---------------------------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


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
    completion_tokens = sum(a.completion_tokens for a in answers)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    created = int(time.time()) if created is None else created
    if request.is_chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": a.text}, "logprobs": None,
             "finish_reason": FINISH_REASONS.get(a.finish_reason, a.finish_reason)}
            for i, a in enumerate(answers)
        ]
        return {"id": new_id("chatcmpl-"), "object": "chat.completion", "created": created, "model": model,
                "choices": choices, "usage": usage}
    choices = [
        {"index": i, "text": a.text, "logprobs": None,
         "finish_reason": FINISH_REASONS.get(a.finish_reason, a.finish_reason)}
        for i, a in enumerate(answers)
    ]
    return {"id": new_id("cmpl-"), "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage}


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


# Flag names in llmkit's settings messages -> the body fields a batch line uses for them.
_BODY_NAMES = {
    "--max-new-tokens": "max_tokens",
    "--num-return-sequences": "n",
    "--temperature": "temperature",
    "--top-p": "top_p",
    "--top-k": "top_k",
    "--min-p": "min_p",
    "--repetition-penalty": "repetition_penalty",
}


def check_settings(merged: dict[str, Any]) -> str | None:
    """None when merged settings can run, else why not, in the batch line's own field names.

    Args:
        merged: `merge_settings` output (GenerationSettings field values).
    """
    from llmkit.sampling import GenerationSettings, validate

    try:
        validate(GenerationSettings(**merged))
    except LlmkitError as exc:
        message = exc.message
        for flag, name in _BODY_NAMES.items():
            message = message.replace(flag, name)
        if "n " in message and "beams" in message:
            message = "n > 1 needs sampling: give the line a temperature above 0 (greedy decoding has one answer)"
        return message
    except TypeError as exc:
        return str(exc)
    return None


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
