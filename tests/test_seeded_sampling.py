"""The per-input sampling streams of the transformers engine, on hand-made logits (no model)."""

from __future__ import annotations

import pytest
import torch

from llmkit.sampling import build_settings, stream_seed
from llmkit.seeded_sampling import make_sampler, warpers

VOCAB = 50


def _logits(rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    one = torch.randn(1, VOCAB, generator=generator)
    return one.repeat(rows, 1)  # the same distribution on every row: only the streams can tell rows apart


def _draws(sampler, rows: int, steps: int = 12) -> list[list[int]]:
    ids = torch.zeros(rows, 3, dtype=torch.long)
    out: list[list[int]] = [[] for _ in range(rows)]
    for _ in range(steps):
        scores = sampler(ids, _logits(rows))
        picked = scores.argmax(dim=-1)
        for r in range(rows):
            out[r].append(int(picked[r]))
        ids = torch.cat([ids, picked[:, None]], dim=1)
    return out


def test_stream_seed_is_seed_plus_index() -> None:
    assert [stream_seed(7, i) for i in range(3)] == [7, 8, 9]
    assert stream_seed(2**32 - 1, 1) == 0  # llama.cpp takes 32-bit seeds: both engines wrap the same way


def test_each_input_draws_from_its_own_stream() -> None:
    settings = build_settings(temperature=1.0, seed=5)
    together = _draws(make_sampler(settings, [5, 6, 7], 1, set()), 3)
    alone = [_draws(make_sampler(settings, [s], 1, set()), 1)[0] for s in (5, 6, 7)]
    assert together == alone  # a row's tokens do not depend on the other rows of its batch
    assert together[0] != together[1]  # identical logits, different streams: different samples


def test_one_stream_draws_what_the_global_generator_draws() -> None:
    # transformers' own sampling after torch.manual_seed(seed): softmax, then multinomial on the global generator.
    settings = build_settings(temperature=0.7, top_k=10, seed=3)
    ours = _draws(make_sampler(settings, [3], 1, set()), 1)[0]
    torch.manual_seed(3)
    ids = torch.zeros(1, 3, dtype=torch.long)
    theirs = []
    for _ in range(12):
        scores = _logits(1)
        for w in warpers(settings):
            scores = w(ids, scores)
        token = int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1))
        theirs.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert ours == theirs


def test_only_the_drawn_token_stays_finite() -> None:
    sampler = make_sampler(build_settings(temperature=1.0, seed=1), [1, 2], 1, set())
    scores = sampler(torch.zeros(2, 1, dtype=torch.long), _logits(2))
    assert torch.isfinite(scores).sum(dim=1).tolist() == [1, 1]


def test_warpers_follow_the_settings() -> None:
    names = [type(w).__name__ for w in warpers(build_settings(temperature=0.5, top_k=5, top_p=0.9, min_p=0.1,
                                                              typical_p=0.8))]
    assert names == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
                     "TypicalLogitsWarper"]
    assert warpers(build_settings(sample=True)) == []  # unset knobs: plain sampling from the distribution


def test_top_k_one_is_greedy_under_any_seed() -> None:
    best = int(_logits(1).argmax())
    for seed in range(4):
        assert set(_draws(make_sampler(build_settings(top_k=1, seed=seed), [seed], 1, set()), 1)[0]) == {best}


def test_logprob_sums_stop_after_end_of_sequence() -> None:
    settings = build_settings(temperature=1.0, seed=0)
    eos = set(range(VOCAB))  # every token ends the row: only the first draw counts
    sampler = make_sampler(settings, [0], 1, eos)
    _draws(sampler, 1, steps=5)
    first = torch.log_softmax(_logits(1), dim=-1)
    drawn = _draws(make_sampler(settings, [0], 1, set()), 1, steps=1)[0][0]
    assert float(sampler.logprob_sums[0]) == pytest.approx(float(first[0, drawn]), abs=1e-6)


def test_return_sequences_of_one_input_share_its_stream() -> None:
    settings = build_settings(temperature=1.0, seed=9, num_return_sequences=2)
    pair = _draws(make_sampler(settings, [9], 2, set()), 2)
    again = _draws(make_sampler(settings, [9, 10], 2, set()), 4)
    assert pair == again[:2]  # the second input's rows do not move the first input's draws
    assert pair[0] != pair[1]
