"""Token-level helpers that tasks and engines share (below both, so no engine imports a task module)."""

from __future__ import annotations

from pathlib import Path
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


class EncoderTokenizer:
    """The slice of a transformers fast tokenizer that classify and fill-mask use, over the same `tokenizers`
    pipeline transformers built (saved at export time), with the call conventions of transformers 5's
    `TokenizersBackend`: truncation set per call with the tokenizer's truncation side, token type ids only when
    the tokenizer names them as a model input, transformers' decode clean-up where it applies.

    Args:
        path: the saved tokenizer.json.
        settings: what was recorded about the transformers tokenizer (see engines/onnx_export.tokenizer_settings).
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tok.encode_special_tokens = bool(settings.get("split_special_tokens", False))
        self.settings = settings
        self.model_input_names = list(settings.get("model_input_names") or ["input_ids", "attention_mask"])
        self.model_max_length = int(settings.get("model_max_length") or int(1e30))
        self.padding_side = str(settings.get("padding_side") or "right")
        self.truncation_side = str(settings.get("truncation_side") or "right")
        self.pad_token_id = settings.get("pad_token_id")
        self.pad_token_type_id = int(settings.get("pad_token_type_id") or 0)
        self.mask_token = settings.get("mask_token")
        self.mask_token_id = settings.get("mask_token_id")
        self.unk_token_id = settings.get("unk_token_id")
        self.clean_up = bool(settings.get("clean_up_tokenization_spaces", False))

    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str | None] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_attention_mask: bool | None = None,
    ) -> dict[str, Any]:
        """{"input_ids": ..., and "token_type_ids" when the tokenizer names them} for one text (lists of ints)
        or a list of texts (lists of lists), as transformers' tokenizer call returns them."""
        del return_attention_mask  # the padding step builds the mask
        many = isinstance(text, list)
        texts = text if many else [text]
        pairs = text_pair if isinstance(text_pair, list) else [text_pair] * len(texts)
        # transformers treats an empty second text of a single call as none
        inputs = [t if not p else (t, p) for t, p in zip(texts, pairs, strict=True)]
        limit = int(max_length if max_length is not None else self.model_max_length)
        truncation = truncation if limit < 1_000_000_000 else None  # no real limit (transformers' 1e30): no cut
        if truncation:
            strategy = "longest_first" if truncation is True else str(truncation)
            self._tok.enable_truncation(limit, stride=0, strategy=strategy, direction=self.truncation_side)
        try:
            encodings = self._tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            if truncation:
                self._tok.no_truncation()
        out: dict[str, Any] = {"input_ids": [e.ids for e in encodings]}
        if "token_type_ids" in self.model_input_names:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        return out if many else {k: v[0] for k, v in out.items()}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Token ids -> text, as transformers' `decode` (its clean-up of spaces before punctuation included)."""
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def get_vocab(self) -> dict[str, int]:
        return dict(self._tok.get_vocab(with_added_tokens=True))

    def special_ids(self) -> set[int]:
        """Ids of the special tokens ([CLS], [SEP], <pad>, ...: those `decode` skips with skip_special_tokens)."""
        return {i for i, token in self._tok.get_added_tokens_decoder().items() if token.special}
