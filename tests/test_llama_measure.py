"""A GGUF measured under llama.cpp: its teacher-forced perplexity and top-1 are the transformers ones on the same
float32 weights; load time and tokens/s come from llama.cpp."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llmkit import llama_measure
from llmkit.engines import llama_cpp

pytestmark = pytest.mark.skipif(not llama_cpp.bindings_installed(), reason="llmkit[llama] not installed")

TEXT = "The capital of France is Paris. The river Seine flows through the city, past old bridges and new towers."


def test_teacher_forced_scores_match_transformers_on_the_same_weights(tiny_gguf: Path) -> None:
    import torch

    from llmkit import loading

    lm = loading.load(str(tiny_gguf), "causal-lm", device="cpu", dtype="float32")
    ids = lm.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 10
    with torch.inference_mode():
        out = lm.model(input_ids=ids, labels=ids)
    expected = math.exp(float(out.loss))
    scores = llama_measure.score_tokens(tiny_gguf, ids[0].tolist())
    assert len(scores.logprobs) == len(scores.top1) == ids.shape[1] - 1
    assert scores.perplexity == pytest.approx(expected, rel=0.01)
    argmax = out.logits[0, :-1].argmax(-1).tolist()
    assert sum(a == b for a, b in zip(argmax, scores.top1, strict=True)) / len(argmax) >= 0.9
    # the forced token is the true next one, not llama.cpp's own choice: the two differ somewhere in the text
    assert scores.top1 != ids[0, 1:].tolist()
    with pytest.raises(ValueError):
        llama_measure.score_tokens(tiny_gguf, ids[0, :1].tolist())


def test_speed_and_load_time_come_from_llama_cpp(tiny_gguf: Path) -> None:
    speed = llama_measure.measure_speed(tiny_gguf, "Tell me about Paris.", new_tokens=8)
    assert speed.load_seconds > 0 and speed.tokens_per_second > 0
    assert 1 <= speed.completion_tokens <= 8
