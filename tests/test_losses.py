"""The distillation losses on hand-made logits: temperature, the T^2 factor, alpha mixing, masking."""

from __future__ import annotations

import math

import pytest
import torch

from llmkit import losses


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softmax(xs: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def test_soft_loss_matches_hand_computed_kl_with_t_squared_factor():
    student = [1.0, 0.0, -1.0]
    teacher = [3.0, 0.0, 0.0]
    for t in (1.0, 2.0, 4.0):
        expected = t * t * _kl(_softmax(teacher, t), _softmax(student, t))
        got = losses.soft_loss(torch.tensor([student]), torch.tensor([teacher]), t).item()
        assert got == pytest.approx(expected, rel=1e-5)


def test_soft_loss_is_zero_for_identical_logits_and_positive_otherwise():
    x = torch.tensor([[2.0, -1.0, 0.5]])
    assert losses.soft_loss(x, x.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.soft_loss(x, x.flip(-1), 3.0).item() > 0


def test_higher_temperature_softens_the_targets():
    # Without the T^2 factor the KL shrinks as T grows (softer distributions are closer).
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[4.0, 0.0]])
    raw = [losses.soft_loss(s, t, temp).item() / temp**2 for temp in (1.0, 2.0, 8.0)]
    assert raw[0] > raw[1] > raw[2] > 0


def test_soft_loss_ignores_masked_positions():
    student = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # [B=1, S=2, C=2]
    teacher = torch.tensor([[[1.0, 0.0], [9.0, -9.0]]])  # position 1 differs wildly: padding
    mask = torch.tensor([[1, 0]])
    assert losses.soft_loss(student, teacher, 2.0, mask).item() == pytest.approx(0.0, abs=1e-7)
    # Unmasked, the padded position would count and be averaged with the real one.
    only_pos1 = losses.soft_loss(student[:, 1:], teacher[:, 1:], 2.0).item()
    assert losses.soft_loss(student, teacher, 2.0).item() == pytest.approx(only_pos1 / 2, rel=1e-5)


def test_hard_loss_is_cross_entropy_and_skips_ignore_index():
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, losses.IGNORE_INDEX])
    expected = -math.log(_softmax([2.0, 0.0])[0])
    assert losses.hard_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    none = torch.tensor([losses.IGNORE_INDEX, losses.IGNORE_INDEX])
    assert losses.hard_loss(logits, none).item() == 0.0


def test_alpha_mixes_hard_and_soft():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 2.0, 0.0]])
    y = torch.tensor([2])
    hard = losses.hard_loss(s, y).item()
    soft = losses.soft_loss(s, t, 2.0).item()
    for alpha in (0.0, 0.3, 1.0):
        parts = losses.distillation_loss(s, t, y, alpha=alpha, temperature=2.0)
        assert parts.total.item() == pytest.approx(alpha * hard + (1 - alpha) * soft, rel=1e-5)
    # alpha 0: no labels needed (unlabeled text)
    parts = losses.distillation_loss(s, t, None, alpha=0.0, temperature=2.0)
    assert parts.hard is None and parts.total.item() == pytest.approx(soft, rel=1e-5)
    with pytest.raises(ValueError):
        losses.distillation_loss(s, t, None, alpha=0.5, temperature=2.0)


def test_intermediate_terms_are_added_with_their_weights():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    base = losses.distillation_loss(s, t, None, alpha=0.0, temperature=1.0).total.item()
    parts = losses.distillation_loss(
        s,
        t,
        None,
        alpha=0.0,
        temperature=1.0,
        hidden=torch.tensor(2.0),
        hidden_weight=0.5,
        attention=torch.tensor(4.0),
        attention_weight=0.25,
    )
    assert parts.total.item() == pytest.approx(base + 1.0 + 1.0, rel=1e-6)


def test_hidden_loss_masks_padding_and_uses_projection():
    s = torch.zeros(1, 2, 2)
    t = torch.tensor([[[1.0, 1.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 0]])
    assert losses.hidden_loss([s], [t], mask).item() == pytest.approx(1.0)
    # Width 2 -> 3 through a projection that adds 1: the error is then zero on the real token.
    t3 = torch.ones(1, 2, 3)
    proj = torch.nn.Linear(2, 3)
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.fill_(1.0)
    assert losses.hidden_loss([s], [t3], mask, [proj]).item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        losses.hidden_loss([s], [t3], mask)


def test_attention_loss_masks_padded_keys_and_queries():
    s = torch.full((1, 2, 2, 2), 0.5)
    t = s.clone()
    t[..., 1] = 0.9  # only the padded key column differs...
    t[:, :, 1, :] = 0.0  # ...and the padded query row
    mask = torch.tensor([[1, 0]])
    assert losses.attention_loss([s], [t], mask).item() == pytest.approx(0.0)
    assert losses.attention_loss([s], [t]).item() > 0
    # Different head counts compare head-averaged maps.
    one_head = torch.full((1, 1, 2, 2), 0.5)
    assert losses.attention_loss([one_head], [s]).item() == pytest.approx(0.0)


def test_layer_choice_and_mapping():
    assert losses.kept_layers(6, 3) == [0, 2, 4]
    assert losses.kept_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert losses.kept_layers(2, 1) == [0]
    assert losses.kept_layers(4, 4) == [0, 1, 2, 3]
    assert losses.hidden_layer_map(6, 3) == [0, 2, 4, 6]
    assert losses.hidden_layer_map(2, 1) == [0, 2]
    with pytest.raises(ValueError):
        losses.kept_layers(6, 7)
    with pytest.raises(ValueError):
        losses.kept_layers(6, 0)
