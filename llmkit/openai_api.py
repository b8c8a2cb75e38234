"""OpenAI request bodies in, OpenAI response objects out: the one reader and writer of that format.

Two users share it: `generate` on OpenAI batch files (openai_batch.py, one body per line) and `llmkit serve`
(serve/, one body per HTTP request). What a body may hold is decided here once, so a field the batch reader
refuses is refused by the server too, with the same words:

- generation settings, mapped to llmkit's `GenerationSettings` names (SETTING_FIELDS): `max_tokens` (or
  `max_completion_tokens`), `temperature` (0 means greedy), `top_p`, `top_k`, `seed`, `stop`, `n`, and vLLM's
  extra `min_p` and `repetition_penalty`;
- fields with no effect on the answer (IGNORED_FIELDS: `model`, `user`, `metadata`, `store`, `service_tier`);
- fields accepted only with a value that changes nothing (NO_OP_VALUES: `tools: []`, `logprobs: false`, ...);
  the caller may take some of them over (`accepted`: the server honours `stream` and `logprobs`);
- anything else is refused (`unsupported_parameter`), never dropped silently.

No temperature means greedy decoding (llmkit's default, as in `llmkit generate`); a temperature above 0 samples,
and so does `top_p` < 1, `top_k` > 0 or `min_p` > 0 given without one (at temperature 1, OpenAI's default).

Errors are `BodyError(code, message, param)`; `where` prefixes each message ("body." in batch lines, nothing in
the server) and `param` names the field, as OpenAI's error object does.

Torch-free and model-free: parsing, settings and formatting only.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmkit.errors import LlmkitError

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"

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


class BodyError(Exception):
    """A request body that cannot be run.

    Attributes:
        code: `invalid_request` (a value that cannot work) or `unsupported_parameter` (a field llmkit does not
            honour).
        message: what is wrong and what to do.
        param: the field at fault (OpenAI's `error.param`), or None.
    """

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


# --- reading -----------------------------------------------------------------------------------------------------


def parse_messages(body: dict[str, Any], where: str = "") -> tuple[dict[str, str], ...]:
    """`body.messages` as {"role", "content"} pairs with plain-text content (developer -> system).

    Raises:
        BodyError: no messages, a role llmkit does not take, tool calls, or non-text content.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BodyError("invalid_request", f"{where}messages must be a non-empty list of {{role, content}}",
                        "messages")
    out = []
    for number, message in enumerate(messages):
        at = f"{where}messages[{number}]"
        if not isinstance(message, dict):
            raise BodyError("invalid_request", f"{at} must be an object with role and content", "messages")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise BodyError("unsupported_parameter", f"{at}: role {role!r}; llmkit takes system, developer, user "
                            "and assistant messages", "messages")
        if message.get("tool_calls") or message.get("function_call"):
            raise BodyError("unsupported_parameter", f"{at}: tool calls are not supported", "messages")
        out.append({"role": CHAT_ROLES[role], "content": _content(message.get("content"), at)})
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
                raise BodyError("unsupported_parameter", f"{where}: content part {kind!r}; llmkit takes text only",
                                "messages")
        return "".join(texts)
    raise BodyError("invalid_request", f"{where}: content must be a string or a list of text parts", "messages")


def parse_prompt(body: dict[str, Any], where: str = "") -> str:
    """`body.prompt` as one string (a one-item list is taken as its item).

    Raises:
        BodyError: no prompt, or several prompts in one body.
    """
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise BodyError("unsupported_parameter", f"{where}prompt holds {len(prompt)} items; give one prompt "
                        "(a string) per request", "prompt")
    if not isinstance(prompt, str):
        raise BodyError("invalid_request", f"{where}prompt must be a string", "prompt")
    return prompt


def number(body: dict[str, Any], key: str, where: str = "", *, integer: bool = False) -> Any:
    """`body[key]` checked to be a number (a whole number with `integer`); booleans are not numbers.

    Raises:
        BodyError: naming the field.
    """
    value = body[key]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise BodyError("invalid_request", f"{where}{key} must be {'a whole number' if integer else 'a number'}", key)
    return value


def parse_settings(body: dict[str, Any], where: str = "", *, known: Sequence[str] = (),
                   accepted: Sequence[str] = ()) -> dict[str, Any]:
    """The body's generation settings in llmkit's names, checked; unknown or unusable fields are refused.

    Args:
        body: the request body.
        where: prefix of every message ("body." for batch lines).
        known: fields the caller reads itself (`messages`, `prompt`).
        accepted: NO_OP_VALUES fields the caller honours with any value (the server: `stream`, `logprobs`, ...).

    Returns:
        `GenerationSettings` field names -> values, only for the fields given.

    Raises:
        BodyError: the first field that is unknown, unsupported or out of range.
    """
    for key, value in body.items():
        if key in SETTING_FIELDS or key in IGNORED_FIELDS or key in known or key in accepted:
            continue
        if key in NO_OP_VALUES:
            if value in NO_OP_VALUES[key]:
                continue
            raise BodyError("unsupported_parameter", f"{where}{key}={json.dumps(value)} is not supported by "
                            "llmkit; drop it", key)
        raise BodyError("unsupported_parameter", f"{where}{key} is not supported by llmkit (supported: "
                        f"{', '.join(SETTING_FIELDS)})", key)
    out: dict[str, Any] = {}

    def bad(key: str, message: str) -> BodyError:
        return BodyError("invalid_request", f"{where}{key} {message}", key)

    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            value = number(body, key, where, integer=True)
            if value < 1:
                raise bad(key, "must be at least 1")
            out["max_new_tokens"] = value
    if body.get("temperature") is not None:
        value = number(body, "temperature", where)
        if value < 0:
            raise bad("temperature", "must be >= 0 (0 is greedy)")
        if value == 0:
            out["do_sample"] = False  # OpenAI's temperature 0: deterministic, the most likely tokens
        else:
            out["temperature"] = float(value)
            out["do_sample"] = True
    if body.get("top_p") is not None:
        value = number(body, "top_p", where)
        if not 0 < value <= 1:
            raise bad("top_p", "must be in (0, 1]")
        out["top_p"] = float(value)
    if body.get("top_k") is not None:
        value = number(body, "top_k", where, integer=True)
        if value < -1:
            raise bad("top_k", "must be -1 or 0 (off) or a positive count")
        out["top_k"] = max(value, 0)  # vLLM's -1 and llmkit's 0 both mean "off"
    if body.get("seed") is not None:
        out["seed"] = number(body, "seed", where, integer=True)
    if body.get("stop") is not None:
        stop = body["stop"]
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad("stop", "must be a string or a list of strings")
        out["stop"] = tuple(s for s in stop if s)
    if body.get("n") is not None:
        value = number(body, "n", where, integer=True)
        if value < 1:
            raise bad("n", "must be at least 1")
        out["num_return_sequences"] = value
    if body.get("min_p") is not None:
        value = number(body, "min_p", where)
        if not 0 <= value <= 1:
            raise bad("min_p", "must be in [0, 1]")
        out["min_p"] = float(value)
    if body.get("repetition_penalty") is not None:
        value = number(body, "repetition_penalty", where)
        if value <= 0:
            raise bad("repetition_penalty", "must be > 0 (1 is no penalty)")
        out["repetition_penalty"] = float(value)
    # A sampling knob without a temperature samples (at temperature 1, OpenAI's default), as `llmkit generate
    # --top-p 0.9` does: under llmkit's greedy default it would otherwise change nothing, silently.
    if "do_sample" not in out and (out.get("top_p", 1.0) < 1 or out.get("top_k", 0) > 0 or out.get("min_p", 0.0) > 0):
        out["do_sample"] = True
    return out


def merge_settings(flags: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """The settings one request runs with: the defaults (a command's flags), then the request's own values on top.

    Args:
        flags: the defaults as `GenerationSettings` field values (e.g. `dataclasses.asdict(s)`).
        line: `parse_settings` output.

    Returns:
        The merged field values. A request that turns sampling off (temperature 0) also drops the defaults'
        sampling knobs; one that asks for several answers (n > 1) without sampling is left for validation to
        refuse (greedy decoding has one answer; use a temperature, as OpenAI's n does).
    """
    merged = dict(flags)
    if line.get("do_sample") is False:
        for knob in ("temperature", "top_k", "top_p", "min_p", "typical_p"):
            merged[knob] = None
    merged.update(line)
    return merged


# Flag names in llmkit's settings messages -> the body fields a request uses for them.
_BODY_NAMES = {
    "--max-new-tokens": "max_tokens",
    "--num-return-sequences": "n",
    "--temperature": "temperature",
    "--top-p": "top_p",
    "--top-k": "top_k",
    "--min-p": "min_p",
    "--repetition-penalty": "repetition_penalty",
}


def settings_problem(merged: dict[str, Any]) -> tuple[str, str | None] | None:
    """None when merged settings can run, else (why not in the body's own field names, the field at fault).

    Args:
        merged: `merge_settings` output (GenerationSettings field values).
    """
    from llmkit.sampling import GenerationSettings, validate

    try:
        validate(GenerationSettings(**merged))
    except LlmkitError as exc:
        message, param = exc.message, None
        for flag, name in _BODY_NAMES.items():
            if flag in message:
                param = param or name
            message = message.replace(flag, name)
        if "n " in message and "beams" in message:
            return "n > 1 needs sampling: give a temperature above 0 (greedy decoding has one answer)", "n"
        return message, param
    except TypeError as exc:
        return str(exc), None
    return None


# --- writing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one choice of a generation needs for the output: its text and why it ended.

    Attributes:
        text: the generated text.
        finish_reason: llmkit's reason (`eos`, `stop`, `length`).
        completion_tokens: tokens generated for this choice.
        logprobs: the choice's OpenAI `logprobs` object (`chat_logprobs` / `completion_logprobs`), or None.
    """

    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: dict[str, Any] | None = None


def new_id(prefix: str) -> str:
    """A fresh id such as `chatcmpl-<24 hex digits>`."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def finish_reason(reason: str | None) -> str | None:
    """llmkit's finish reason (eos|stop|length) in OpenAI's words (stop|length); None stays None."""
    return None if reason is None else FINISH_REASONS.get(reason, reason)


def completion_body(
    is_chat: bool,
    answers: Sequence[Answer],
    *,
    prompt_tokens: int,
    model: str,
    created: int | None = None,
    new_id: Callable[[str], str] = new_id,
) -> dict[str, Any]:
    """The `chat.completion` or `text_completion` object for one request.

    Args:
        is_chat: a /v1/chat/completions request (else /v1/completions).
        answers: one `Answer` per choice (n of them).
        prompt_tokens: tokens in the prompt as the model saw it (after the chat template).
        model: the model that answered.
        created: Unix time; default now.
        new_id: makes an id from a prefix (tests pass a deterministic one).
    """
    completion_tokens = sum(a.completion_tokens for a in answers)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    created = int(time.time()) if created is None else created
    if is_chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": a.text}, "logprobs": a.logprobs,
             "finish_reason": finish_reason(a.finish_reason)}
            for i, a in enumerate(answers)
        ]
        return {"id": new_id("chatcmpl-"), "object": "chat.completion", "created": created, "model": model,
                "choices": choices, "usage": usage}
    choices = [
        {"index": i, "text": a.text, "logprobs": a.logprobs, "finish_reason": finish_reason(a.finish_reason)}
        for i, a in enumerate(answers)
    ]
    return {"id": new_id("cmpl-"), "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage}


def chat_logprobs(entries: Sequence[Any]) -> dict[str, Any]:
    """A chat choice's `logprobs` object from `sampling.TokenLogprob` entries: {"content": [...]}."""
    return {"content": [
        {"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes),
         "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in e.top]}
        for e in entries
    ]}


def completion_logprobs(entries: Sequence[Any], offset: int = 0) -> dict[str, Any]:
    """A /v1/completions choice's legacy `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset.

    Args:
        entries: `sampling.TokenLogprob` entries.
        offset: the text offset of the first entry (characters already sent, when streaming).
    """
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries], "text_offset": offsets}


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}} (what its clients parse)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
