"""Measure a GGUF file where it runs: load time, tokens/s and perplexity through llama.cpp itself.

A `.gguf` loaded back through transformers is de-quantized to float and runs at float speed, so its speed says
nothing about the file. Here llama.cpp (the `xllamacpp` bindings behind `generate --engine llama-cpp`) loads it
and generates, the same greedy prompt the transformers measurement uses.

The bindings' server has no prompt log-probabilities (its `echo` is ignored), so perplexity is taken by teacher
forcing: one request per position, the prompt being the text so far as token ids and the next true token forced
with a logit bias. llama.cpp reports the log-probability of the sampled token from the raw logits (before the
bias), and its prompt cache holds the text so far, so each request decodes one new token. The result is the
perplexity and top-1 choices as llama.cpp computes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError, MissingDependencyError

FORCE_BIAS = 1000.0  # logit bias that makes the true next token the sampled one


@dataclass(frozen=True)
class LlamaSpeed:
    """Load time and greedy generation speed of one GGUF file under llama.cpp."""

    load_seconds: float
    tokens_per_second: float
    completion_tokens: int


@dataclass(frozen=True)
class LlamaScores:
    """Per-position results of teacher forcing a token sequence through llama.cpp."""

    logprobs: list[float]  # log p(ids[i] | ids[:i]) for i = 1..n-1
    top1: list[int]  # llama.cpp's most likely token at each of those positions

    @property
    def perplexity(self) -> float:
        """exp of the mean negative log-likelihood (the transformers definition, over the same positions)."""
        return math.exp(-sum(self.logprobs) / len(self.logprobs))


def _fresh_server(gguf: Path, context: int) -> tuple[Any, float]:
    """A newly loaded llama.cpp model (one sequence) and the seconds the load took."""
    from llmkit.engines import llama_cpp

    if not llama_cpp.bindings_installed():
        raise MissingDependencyError(
            f"measuring a .gguf under llama.cpp needs its bindings; install them: {llama_cpp.INSTALL_HINT}"
        )
    return llama_cpp.load_fresh(gguf, context=context)


def measure_speed(gguf: Path, prompt: str, *, new_tokens: int, context: int = 2048) -> LlamaSpeed:
    """Load `gguf` in llama.cpp (timed), warm up, then time one greedy generation of `prompt`.

    Args:
        gguf: the .gguf file.
        prompt: the prompt (through the file's chat template, as `llmkit generate` sends it).
        new_tokens: the most tokens to generate.
        context: KV cache tokens.

    Returns:
        LlamaSpeed: load seconds and tokens/s as `llmkit generate` reports them (completion tokens over the
        request's wall time, prompt included).

    Raises:
        MissingDependencyError: no bindings (exit 4).
    """
    from llmkit.engines import llama_cpp
    from llmkit.sampling import build_settings

    _, load_seconds = _fresh_server(gguf, context)

    def run(tokens: int) -> Any:
        settings = build_settings("greedy", max_new_tokens=tokens)
        return next(llama_cpp.generate([prompt], model=str(gguf), settings=settings, gguf=gguf, context=context))

    run(4)  # warm-up: first-use allocations and page faults of the mapped file
    result = run(new_tokens)
    return LlamaSpeed(round(load_seconds, 3), result.tokens_per_second, result.completion_tokens)


def score_tokens(gguf: Path, ids: Sequence[int], *, context: int | None = None) -> LlamaScores:
    """Teacher-force `ids` through llama.cpp: the log-probability of each next token and llama.cpp's top-1.

    Args:
        gguf: the .gguf file.
        ids: token ids of the text (the file's vocabulary; e.g. from the original model's tokenizer).
        context: KV cache tokens (default: enough for `ids`).

    Returns:
        LlamaScores for positions 1..len(ids)-1.

    Raises:
        MissingDependencyError: no bindings (exit 4).
        LlmkitError: llama.cpp refused a request.
    """
    ids = [int(i) for i in ids]
    if len(ids) < 2:
        raise ValueError("score_tokens needs at least two tokens")
    server, _ = _fresh_server(gguf, context or len(ids) + 16)
    logprobs: list[float] = []
    top1: list[int] = []
    replies: list[dict[str, Any]] = []

    def collect(reply: dict[str, Any]) -> bool:
        replies.append(reply)
        return False  # False: do not cancel

    for i in range(1, len(ids)):
        body = {
            "prompt": ids[:i],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 1,
            "logit_bias": [[ids[i], FORCE_BIAS]],
            "cache_prompt": True,
            "stream": False,
        }
        replies.clear()
        server.handle_completions(body, collect)
        reply = replies[-1] if replies else {}
        if "error" in reply or not reply.get("choices"):
            raise LlmkitError(f"llama.cpp did not score position {i}: {reply.get('error', reply)}")
        entry = reply["choices"][0]["logprobs"]["content"][0]
        if entry["id"] != ids[i]:  # the bias did not force it: the numbers would be of another token
            raise LlmkitError(f"llama.cpp sampled token {entry['id']} where {ids[i]} was forced (position {i})")
        logprobs.append(float(entry["logprob"]))
        top1.append(int(entry["top_logprobs"][0]["id"]))
    return LlamaScores(logprobs, top1)
