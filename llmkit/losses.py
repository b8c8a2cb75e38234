"""Knowledge-distillation losses: small pure functions on tensors, unit-tested on hand-made logits.

Shapes: logits are `[..., C]` (classes or vocabulary), a mask is `[...]` (1 = counts, 0 = padding or not a
target). Every loss is a mean over the positions that count, so padding never dilutes or inflates it.
torch is imported inside the functions: `llmkit --help` must not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # the label value transformers uses for "not a target" (padding, unmasked MLM tokens)


def _masked_mean(values: Any, mask: Any | None) -> Any:
    """Mean of `values` over the positions where `mask` is non-zero (plain mean without a mask)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    # clamp: an all-padding batch gives 0, not NaN
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def soft_loss(student_logits: Any, teacher_logits: Any, temperature: float, mask: Any | None = None) -> Any:
    """T^2 * KL(teacher_T || student_T), the Hinton et al. soft-target loss.

    Both distributions are softened by the temperature T; the T^2 factor keeps the gradient's size independent
    of T, so `--alpha` means the same thing at every temperature.

    Args:
        student_logits: `[..., C]` raw scores of the student.
        teacher_logits: `[..., C]` raw scores of the teacher (no gradient needed).
        temperature: T > 0.
        mask: `[...]`, 1 where a position counts; None = all positions.

    Returns:
        A scalar: the KL summed over C, averaged over the positions that count, times T^2.
    """
    import torch.nn.functional as F

    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    return _masked_mean(kl, mask) * temperature**2


def hard_loss(student_logits: Any, labels: Any) -> Any:
    """Cross-entropy against the true labels; positions labelled IGNORE_INDEX do not count.

    Args:
        student_logits: `[..., C]`.
        labels: `[...]` class ids (or IGNORE_INDEX).

    Returns:
        A scalar mean over the labelled positions (0 when none is labelled).
    """
    import torch.nn.functional as F

    flat_logits = student_logits.float().reshape(-1, student_logits.shape[-1])
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != IGNORE_INDEX).any()):
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX)


def kl_to_teacher(student_logits: Any, teacher_logits: Any, mask: Any | None = None) -> Any:
    """KL(teacher || student) at T = 1, the number that says how close the student is to its teacher."""
    return soft_loss(student_logits, teacher_logits, 1.0, mask)


def hidden_loss(
    student_hidden: list[Any],
    teacher_hidden: list[Any],
    mask: Any | None = None,
    projections: list[Any] | None = None,
) -> Any:
    """Mean squared error between paired hidden states, averaged over the pairs.

    Args:
        student_hidden: `[B, S, Hs]` tensors, one per matched student layer.
        teacher_hidden: `[B, S, Ht]` tensors, the teacher layers they are matched to (same length).
        mask: `[B, S]`, 1 on real tokens.
        projections: one callable per pair mapping Hs -> Ht (a learned `nn.Linear` when widths differ).

    Returns:
        A scalar.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError("student and teacher hidden-state lists must pair up")
    total = None
    for i, (s, t) in enumerate(zip(student_hidden, teacher_hidden, strict=True)):
        if projections is not None and projections[i] is not None:
            s = projections[i](s)
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"hidden widths differ ({s.shape[-1]} vs {t.shape[-1]}); pass a projection")
        term = _masked_mean(((s.float() - t.float()) ** 2).mean(dim=-1), mask)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no hidden states to match")
    return total / len(student_hidden)


def attention_loss(student_attn: list[Any], teacher_attn: list[Any], mask: Any | None = None) -> Any:
    """Mean squared error between paired attention maps, averaged over the pairs.

    Maps are `[B, heads, S, S]`; when the head counts differ, both sides are averaged over heads first.
    A (query, key) cell counts only when both tokens are real (mask `[B, S]`).
    """
    if len(student_attn) != len(teacher_attn):
        raise ValueError("student and teacher attention lists must pair up")
    total = None
    for s, t in zip(student_attn, teacher_attn, strict=True):
        s, t = s.float(), t.float()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
        cell = ((s - t) ** 2).mean(dim=1)  # [B, S, S]
        cell_mask = None
        if mask is not None:
            m = mask.float()
            cell_mask = m[:, :, None] * m[:, None, :]
        term = _masked_mean(cell, cell_mask)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no attention maps to match")
    return total / len(student_attn)


@dataclass(frozen=True)
class LossParts:
    """The distillation loss and its parts (tensors; `total` carries the gradient)."""

    total: Any
    hard: Any | None
    soft: Any
    hidden: Any | None = None
    attention: Any | None = None


def distillation_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any | None,
    *,
    alpha: float,
    temperature: float,
    mask: Any | None = None,
    hidden: Any | None = None,
    hidden_weight: float = 0.0,
    attention: Any | None = None,
    attention_weight: float = 0.0,
) -> LossParts:
    """alpha * CE(labels) + (1 - alpha) * T^2 KL(teacher_T || student_T) [+ weighted hidden/attention terms].

    Args:
        student_logits, teacher_logits: `[..., C]`.
        labels: `[...]` class ids with IGNORE_INDEX for positions that are not targets; may be None when
            alpha is 0 (distilling from unlabeled text).
        alpha: weight of the hard-label loss, in [0, 1].
        temperature: softening temperature T > 0.
        mask: `[...]` positions that count for the soft loss (None: all).
        hidden, attention: already computed intermediate-matching losses (see `hidden_loss`/`attention_loss`).
        hidden_weight, attention_weight: their weights (added on top of the mix).

    Returns:
        LossParts with the total and each part.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    soft = soft_loss(student_logits, teacher_logits, temperature, mask)
    hard = None
    total = (1.0 - alpha) * soft
    if alpha > 0:
        if labels is None:
            raise ValueError("alpha > 0 needs labels")
        hard = hard_loss(student_logits, labels)
        total = total + alpha * hard
    if hidden is not None and hidden_weight > 0:
        total = total + hidden_weight * hidden
    if attention is not None and attention_weight > 0:
        total = total + attention_weight * attention
    return LossParts(total=total, hard=hard, soft=soft, hidden=hidden, attention=attention)


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher layers a layer-dropped student keeps: every k-th, from the first (DistilBERT's rule).

    6 -> 3 keeps [0, 2, 4]; 12 -> 6 keeps [0, 2, 4, 6, 8, 10]; uneven ratios spread the picks evenly.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student layers must be in 1..{teacher_layers}")
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def hidden_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """For each student hidden state (embeddings, then each layer output), the teacher state it matches.

    Uniform mapping (TinyBERT): student output j <-> teacher output j * L / N, so embeddings meet embeddings
    and the last layer meets the last layer. Returns N + 1 indices into the teacher's `hidden_states` tuple.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student layers must be in 1..{teacher_layers}")
    return [j * teacher_layers // student_layers for j in range(student_layers + 1)]
