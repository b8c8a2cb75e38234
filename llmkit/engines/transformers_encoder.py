"""The transformers engine for encoder feature extraction: token ids in, last hidden states out, as numpy.

`load_encoder()` returns a handle with the same small surface the ONNX Runtime engine's feature-extraction export
offers (`hidden_states(batch)` for numpy int64 inputs -> float32 [batch, seq, hidden], plus the tokenizer), so a
task such as `embed` does its pooling in numpy and does not care which engine ran. torch and transformers are
imported only inside `load_encoder`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

NAME = "transformers"


@dataclass
class TransformersEncoder:
    """A loaded encoder (or a decoder's / encoder-decoder's encoder stack) on its device.

    Attributes:
        model: the torch module whose output has `last_hidden_state`.
        tokenizer: the transformers tokenizer (its fast backend tokenizes; `embed` uses that).
        device: where the model lives.
        inputs: the forward arguments the model takes (token_type_ids is dropped for models without them).
        max_positions: the model's position limit, if its config has one.
    """

    model: Any
    tokenizer: Any
    device: str
    inputs: frozenset[str]
    max_positions: int | None = None
    name: str = NAME

    def hidden_states(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Last hidden states for one padded batch.

        Args:
            batch: int64 arrays [batch, seq]: input_ids, attention_mask and token_type_ids (dropped when the
                model does not take them).

        Returns:
            float32 [batch, seq, hidden].
        """
        import torch

        feed = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items() if k in self.inputs}
        with torch.inference_mode():
            out = self.model(**feed)
        return out.last_hidden_state.float().cpu().numpy()


def load_encoder(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> TransformersEncoder:
    """Load `spec` (alias, folder, hub id) as a bare encoder through `loading.load(task="base")`.

    An encoder-decoder model (T5) keeps its encoder only, as sentence-transformers does for T5 encoders.

    Raises:
        LlmkitError subclasses from `loading.load` (one line each).
    """
    from llmkit import loading

    loaded = loading.load(spec, "base", device=device, dtype=dtype, revision=revision, allow_pickle=allow_pickle,
                          trust_remote_code=trust_remote_code)
    model = loaded.model
    if str(loaded.device) == "cpu":
        from llmkit.threads import use_free_cores

        use_free_cores()  # torch's threads wait on each other at every operator when other work holds the cores
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    accepted = frozenset(inspect.signature(model.forward).parameters)
    inputs = frozenset(k for k in ("input_ids", "attention_mask", "token_type_ids") if k in accepted)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    return TransformersEncoder(model, loaded.tokenizer, loaded.device, inputs,
                               int(max_positions) if isinstance(max_positions, int) else None)
