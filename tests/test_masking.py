"""llmkit.masking on hand-made tensors: BERT's 80/10/10 rule, keyed repeatable masks, the collator."""

from __future__ import annotations

import torch

from llmkit.masking import (
    IGNORE_INDEX,
    BlockCollator,
    Masking,
    mask_block,
    mask_seed,
    mask_tokens,
    mask_validation,
)

CLS, SEP, MASK = 2, 3, 4
MASKING = Masking(mask_id=MASK, vocab_size=100, probability=0.15, special_ids=frozenset({0, 1, CLS, SEP, MASK}), seed=7)


def _block(length: int = 64) -> list[int]:
    return [CLS, *range(10, 10 + length - 2), SEP]


def test_masking_follows_berts_rule_over_many_tokens() -> None:
    ids = torch.tensor(_block(4002))
    inputs, labels = mask_tokens(ids, MASKING, torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    assert labels[0] == labels[-1] == IGNORE_INDEX  # special tokens are never chosen
    assert torch.equal(labels[chosen], ids[chosen])  # labels hold the original ids, the rest is ignored
    share = chosen.float().mean().item()
    assert 0.13 < share < 0.17
    as_mask = (inputs[chosen] == MASK).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert 0.75 < as_mask < 0.85 and 0.06 < kept < 0.14  # 80% [MASK], ~10% unchanged, ~10% random
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes


def test_a_block_always_scores_at_least_one_token() -> None:
    few = Masking(MASK, 100, 0.0001, frozenset({CLS, SEP}), seed=1)
    for index in range(20):
        _, labels = mask_block([CLS, 11, 12, 13, SEP], few, epoch=0, index=index)
        assert (labels != IGNORE_INDEX).sum().item() >= 1
    _, labels = mask_block([CLS, SEP], few, epoch=0, index=0)
    assert (labels == IGNORE_INDEX).all()  # nothing to choose


def test_masks_are_keyed_by_seed_epoch_and_block() -> None:
    block = _block()
    first = mask_block(block, MASKING, epoch=0, index=3)
    assert all(torch.equal(a, b) for a, b in zip(first, mask_block(block, MASKING, epoch=0, index=3), strict=True))
    assert not torch.equal(first[1], mask_block(block, MASKING, epoch=1, index=3)[1])  # each epoch masks anew
    assert not torch.equal(first[1], mask_block(block, MASKING, epoch=0, index=4)[1])
    assert mask_seed(7, 0, 3) == mask_seed(7, 0, 3) != mask_seed(8, 0, 3)


def test_validation_is_masked_once_and_passes_through_the_collator() -> None:
    blocks = [_block(32) for _ in range(4)]
    fixed = mask_validation(blocks, MASKING)
    assert fixed == mask_validation(blocks, MASKING)
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(fixed["input_ids"], fixed["labels"], strict=True)]
    batch = BlockCollator(MASKING)(rows)
    assert torch.equal(batch["labels"], torch.tensor(fixed["labels"]))
    assert torch.equal(batch["input_ids"], torch.tensor(fixed["input_ids"]))


def test_collator_masks_training_rows_by_index_and_epoch() -> None:
    collator = BlockCollator(MASKING)
    rows = [{"input_ids": _block(32), "index": 5}, {"input_ids": _block(32), "index": 9}]
    batch = collator(rows)
    assert set(batch) == {"input_ids", "labels"}  # `index` is not a model input
    assert torch.equal(batch["labels"][1], mask_block(_block(32), MASKING, epoch=0, index=9)[1])
    collator.epoch = 2
    assert torch.equal(collator(rows)["labels"][0], mask_block(_block(32), MASKING, epoch=2, index=5)[1])
    causal = BlockCollator()([{"input_ids": [5, 6, 7], "index": 0}, {"input_ids": [8, 9, 10], "index": 1}])
    assert torch.equal(causal["labels"], causal["input_ids"]) and causal["labels"] is not causal["input_ids"]


def test_masked_lm_loss_weighs_every_masked_token_of_a_step_alike() -> None:
    from llmkit.masking import masked_lm_loss

    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 6, 11, generator=generator), torch.randn(2, 6, 11, generator=generator)]
    labels = [torch.full((2, 6), IGNORE_INDEX), torch.full((2, 6), IGNORE_INDEX)]
    labels[0][0, 1] = 3  # one masked token in the first batch, four in the second
    labels[1][0, :2], labels[1][1, 3:5] = torch.tensor([4, 5]), torch.tensor([6, 7])
    total = sum(int((lab != IGNORE_INDEX).sum()) for lab in labels)
    step = sum(masked_lm_loss({"logits": lg}, lab, num_items_in_batch=torch.tensor(total))
               for lg, lab in zip(logits, labels, strict=True))  # fmt: skip
    flat_logits = torch.cat([lg.reshape(-1, 11) for lg in logits])
    flat_labels = torch.cat([lab.reshape(-1) for lab in labels])
    expected = torch.nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX)
    assert torch.allclose(step, expected)
    mean_of_means = sum(masked_lm_loss({"logits": lg}, lab) for lg, lab in zip(logits, labels, strict=True)) / 2
    assert not torch.allclose(mean_of_means, expected)  # what a per-batch mean would have trained on
