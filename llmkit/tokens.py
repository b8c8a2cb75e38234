"""Token-level helpers that tasks and engines share (below both, so no engine imports a task module)."""

from __future__ import annotations

from typing import Any


def pad_batch(features: list[dict[str, list[int]]], tok: Any, *, arrays: str = "torch") -> dict[str, Any]:
    """Token lists -> padded arrays plus attention mask, as `tok.pad` makes them but built directly (the
    tokenizer's `pad` goes through Python per row and warns that it is the slow path for fast tokenizers).

    Args:
        features: per input, "input_ids" and optionally "token_type_ids" (lists of ints).
        tok: the tokenizer (pad token id, pad side).
        arrays: "torch" (tensors) or "numpy".

    Returns:
        "input_ids", "attention_mask" (and "token_type_ids" when given) as int64 arrays [batch, longest].
    """
    import numpy as np

    longest = max(len(f["input_ids"]) for f in features)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    left = getattr(tok, "padding_side", "right") == "left"
    fill = {"input_ids": pad_id, "token_type_ids": getattr(tok, "pad_token_type_id", 0), "attention_mask": 0}
    keys = [k for k in features[0] if k in fill and k != "attention_mask"]
    out = {k: np.full((len(features), longest), fill[k], dtype=np.int64) for k in [*keys, "attention_mask"]}
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        where = slice(longest - n, longest) if left else slice(0, n)
        for k in keys:
            out[k][row, where] = f[k]
        out["attention_mask"][row, where] = 1
    if arrays == "numpy":
        return out
    import torch

    return {k: torch.from_numpy(v) for k, v in out.items()}
