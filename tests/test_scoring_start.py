"""The start-of-text context that fill-mask and zero-shot scoring put before a sentence."""

from __future__ import annotations

from types import SimpleNamespace

from llmkit.scoring import start_ids


def _tok(bos: str | None, bos_id: int | None, eos: str | None, eos_id: int | None, vocab: dict[str, int]):
    names = {i: t for t, i in vocab.items()}
    return SimpleNamespace(bos_token=bos, bos_token_id=bos_id, eos_token=eos, eos_token_id=eos_id,
                           unk_token_id=vocab.get("<|endoftext|>"),  # as in SmolLM2: the separator is also unk
                           convert_tokens_to_ids=lambda t: vocab.get(t, vocab.get("<|endoftext|>")),
                           convert_ids_to_tokens=lambda i: names.get(i))


def test_a_chatml_turn_marker_is_replaced_by_the_document_separator() -> None:
    smollm2 = _tok("<|im_start|>", 1, "<|im_end|>", 2, {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2})
    assert start_ids(smollm2) == [0]
    qwen = _tok(None, None, "<|im_end|>", 151645, {"<|endoftext|>": 151643})
    assert start_ids(qwen) == [151643]


def test_a_real_bos_stays_and_without_a_separator_the_marker_stays() -> None:
    assert start_ids(_tok("<s>", 1, "</s>", 2, {})) == [1]
    assert start_ids(_tok(None, None, "<|endoftext|>", 50256, {})) == [50256]
    assert start_ids(_tok("<|im_start|>", 1, "<|im_end|>", 2, {})) == [1]
    assert start_ids(_tok(None, None, None, None, {})) == []
