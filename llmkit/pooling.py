"""Sentence embeddings from token vectors, in numpy: pooling, Dense layers and L2 normalisation.

The same arithmetic as sentence-transformers' `Pooling`, `Dense` and `Normalize` modules, applied to the last
hidden states an engine returns (float32 [batch, seq, hidden] with the attention mask), so any engine that gives
hidden states (transformers, ONNX Runtime) gets identical sentence vectors. `sentence_modules.py` reads which
steps a model folder asks for; this module only computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# sentence-transformers' names, in the order it concatenates several modes.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's floor on the norm
MASK_FLOOR = 1e-9  # sentence-transformers' clamp on the token count (an all-masked row gives zeros, not NaN)


def _first_real(mask: np.ndarray) -> np.ndarray:
    """Per row, the position of the first unmasked token (0 with right padding; after the pads with left)."""
    return mask.argmax(axis=1)


def _last_real(mask: np.ndarray) -> np.ndarray:
    """Per row, the position of the last unmasked token (the last position when the row is all masked)."""
    seq = mask.shape[1]
    flipped = mask[:, ::-1]
    last = seq - 1 - flipped.argmax(axis=1)
    return np.where(flipped.max(axis=1) == 0, seq - 1, last)


def exclude_prefix(mask: np.ndarray, prefix_tokens: int) -> np.ndarray:
    """A copy of `mask` with each row's first `prefix_tokens` real tokens masked (pooling without the prompt).

    Args:
        mask: attention mask [batch, seq] of 0/1.
        prefix_tokens: tokens of the prompt at the start of each input (after any left padding).
    """
    out = mask.copy()
    if prefix_tokens <= 0:
        return out
    start = _first_real(mask)
    positions = np.arange(mask.shape[1])[None, :]
    out[positions < (start + prefix_tokens)[:, None]] = 0
    return out


def pool(
    hidden: np.ndarray,
    mask: np.ndarray,
    modes: str | Sequence[str] = "mean",
    *,
    pooling_mask: np.ndarray | None = None,
) -> np.ndarray:
    """One vector per input from its token vectors.

    Args:
        hidden: last hidden states [batch, seq, hidden], float32.
        mask: attention mask [batch, seq] (1 for tokens, 0 for padding), as the model saw it.
        modes: one of POOLING_MODES, or several (their vectors are concatenated in the order given).
        pooling_mask: the tokens to pool over when it differs from `mask` (the prompt excluded); weighted mean
            positions still count from the first real token of `mask`.

    Returns:
        float32 [batch, hidden * len(modes)].
    """
    names = (modes,) if isinstance(modes, str) else tuple(modes)
    unknown = [m for m in names if m not in POOLING_MODES]
    if unknown:
        raise ValueError(f"unknown pooling mode {unknown[0]!r}; use one of {', '.join(POOLING_MODES)}")
    hidden = np.asarray(hidden, dtype=np.float32)
    mask = np.asarray(mask)
    use = np.asarray(pooling_mask if pooling_mask is not None else mask).astype(np.float32)
    parts = []
    for name in names:
        if name == "cls":
            parts.append(hidden[np.arange(len(hidden)), _first_real(use)])
        elif name == "max":
            parts.append(np.where(use[:, :, None] > 0, hidden, -np.inf).max(axis=1))
        elif name in ("mean", "mean_sqrt_len_tokens"):
            total = np.einsum("bsh,bs->bh", hidden, use)
            count = np.maximum(use.sum(axis=1, keepdims=True), MASK_FLOOR)
            parts.append(total / (count if name == "mean" else np.sqrt(count)))
        elif name == "weightedmean":
            # position weights 1, 2, 3, ... from the first real token (left padding does not shift them)
            weights = np.arange(1, hidden.shape[1] + 1, dtype=np.float32)[None, :] - _first_real(mask)[:, None]
            weighted = use * weights
            total = np.einsum("bsh,bs->bh", hidden, weighted)
            parts.append(total / np.maximum(weighted.sum(axis=1, keepdims=True), MASK_FLOOR))
        else:  # lasttoken
            last = _last_real(use)
            rows = np.arange(len(hidden))
            parts.append(hidden[rows, last] * use[rows, last][:, None])
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), as `torch.nn.functional.normalize`."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, NORMALIZE_EPS)).astype(np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU, torch.nn.GELU's default; Dense outputs are small, so math.erf per value will do."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "gelu": _gelu,
}


def activation_name(spec: str | None) -> str | None:
    """`torch.nn.modules.activation.Tanh` (sentence-transformers' config) -> "tanh"; None when not supported."""
    if spec is None:
        return "tanh"  # Dense's default when the config names none
    name = spec.rsplit(".", 1)[-1].lower()
    return name if name in ACTIVATIONS else None


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers `Dense` module: activation(x @ weight.T + bias) (+ a residual projection).

    Attributes:
        weight: [out, in] float32.
        bias: [out] or None.
        activation: a key of ACTIVATIONS.
        residual: None (no residual), "identity" (x added) or an [out, in] projection of x.
    """

    weight: np.ndarray
    bias: np.ndarray | None = None
    activation: str = "tanh"
    residual: np.ndarray | str | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        y = ACTIVATIONS[self.activation](y)
        if isinstance(self.residual, str):
            y = y + x
        elif self.residual is not None:
            y = y + x @ self.residual.T
        return np.asarray(y, dtype=np.float32)


@dataclass(frozen=True)
class Head:
    """Everything between the encoder's last hidden states and the sentence vector.

    Attributes:
        pooling: the pooling mode(s).
        dense: Dense layers applied after pooling, in order.
        normalize: L2-normalise the result.
        include_prompt: pool over the prompt's tokens too (False: they are masked out, as INSTRUCTOR does).
    """

    pooling: tuple[str, ...] = ("mean",)
    dense: tuple[DenseLayer, ...] = field(default_factory=tuple)
    normalize: bool = False
    include_prompt: bool = True

    @property
    def pooling_name(self) -> str:
        return "+".join(self.pooling)

    def __call__(self, hidden: np.ndarray, mask: np.ndarray, *, prefix_tokens: int = 0) -> np.ndarray:
        """Sentence vectors [batch, dim] from hidden states [batch, seq, hidden] and the attention mask."""
        pooling_mask = exclude_prefix(mask, prefix_tokens) if prefix_tokens and not self.include_prompt else None
        vectors = pool(hidden, mask, self.pooling, pooling_mask=pooling_mask)
        for layer in self.dense:
            vectors = layer(vectors)
        return normalize(vectors) if self.normalize else vectors
