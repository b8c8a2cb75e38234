"""Likelihood scoring shared by fill-mask and classify: log P(continuation | context) under a causal LM,
and the longest input a model accepts.

fill-mask ranks whole filled sentences by their likelihood and zero-shot classify ranks labels as the answer;
both are "score these token sequences" in batches, so they share this one implementation.
"""

from __future__ import annotations

from typing import Any

DEFAULT_SCORING_BATCH = 16  # sequences per forward pass; the logits of a 50k vocabulary dominate memory
_HUGE = 1_000_000  # tokenizers without a real limit report model_max_length as ~1e30


def max_input_tokens(model: Any, tokenizer: Any) -> int:
    """The longest input (in tokens) the model accepts: the tokenizer's limit, capped by position embeddings."""
    limits = []
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _HUGE:
        limits.append(limit)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models offset positions by padding_idx + 1.
        offset = 2 if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        limits.append(positions - offset)
    return min(limits) if limits else 512


def continuation_logprobs(
    model: Any,
    pairs: list[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    device: str,
    batch_size: int = DEFAULT_SCORING_BATCH,
) -> list[float]:
    """Sum of log P(continuation tokens | context tokens) for each (context, continuation) pair.

    Args:
        model: a causal LM.
        pairs: (context ids, continuation ids); the context must hold at least one token.
        pad_id: id used for right padding (masked out by the attention mask).
        device: where the model lives.
        batch_size: sequences per forward pass (grouped by length to cut padding).

    Returns:
        One float per pair, in the order given.
    """
    import torch

    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    scores: list[float] = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(chunk):
            context, continuation = pairs[i]
            if not continuation:
                continue
            # Position t predicts token t+1: the continuation's tokens are predicted from len(context)-1 on.
            first = len(context) - 1
            rows = logits[row, first : first + len(continuation)].float().log_softmax(-1)
            target = torch.tensor(continuation, device=rows.device).unsqueeze(-1)
            scores[i] = float(rows.gather(-1, target).sum())
    return scores


CHAT_TURN_MARKERS = ("<|im_start|>", "<|im_end|>")  # ChatML: open/close a chat turn, not a document
DOCUMENT_SEPARATOR = "<|endoftext|>"  # what ChatML-family models (SmolLM2, Qwen) saw between pretraining documents


def start_ids(tokenizer: Any) -> list[int]:
    """A start-of-text context for scoring a sentence from its first token (BOS, else EOS, as lm-eval does).

    A ChatML model's BOS/EOS opens or closes a chat turn, after which the model expects a role name, not text:
    SmolLM2 then continues "Berlin is the capital of" with " the", " a", " Egypt" (Germany at -7.4), and with its
    document separator <|endoftext|> in front with " Germany" (-0.9). That separator is used when it exists.

    Returns:
        [token id], or [] when the tokenizer has neither BOS nor EOS.
    """
    for token, token_id in ((tokenizer.bos_token, tokenizer.bos_token_id), (tokenizer.eos_token, tokenizer.eos_token_id)):
        if token_id is None:
            continue
        if token in CHAT_TURN_MARKERS:
            # in the vocabulary (SmolLM2 also calls it its unk token, so an unk check would wrongly refuse it)
            separator = tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
            if isinstance(separator, int) and tokenizer.convert_ids_to_tokens(separator) == DOCUMENT_SEPARATOR:
                return [separator]
        return [int(token_id)]
    return []
