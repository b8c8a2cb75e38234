"""Blocks to training batches: causal-LM labels, and BERT's masking drawn from the block, not the global RNG.

Masks depend only on (seed, epoch, block index). transformers' `DataCollatorForLanguageModeling` draws from
torch's global generator, and the Trainer fetches the first batch after `--resume` before it restores the saved
generator state, so a resumed masked-LM run masked that batch differently from an uninterrupted one (seen here:
weights 4e-4 apart after 6 steps). Keyed masks make a resumed run, and a run on any number of processes, mask
every block exactly as a single uninterrupted run does, while each epoch still masks a block anew (RoBERTa's
dynamic masking).

torch is imported inside functions; `mask_tokens` is a pure function, tested on hand-made tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # label the loss skips
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # BERT: of the chosen tokens, 80% become [MASK], 10% a random token, 10% stay
VALIDATION_EPOCH = -1  # the key of the validation set's one fixed masking


@dataclass(frozen=True)
class Masking:
    """How masked-LM blocks are masked.

    Attributes:
        mask_id: the [MASK] token id.
        vocab_size: random replacements are drawn from 0..vocab_size-1.
        probability: share of (non-special) tokens chosen for prediction.
        special_ids: ids never chosen ([CLS], [SEP], [PAD], ...).
        seed: the run's seed.
    """

    mask_id: int
    vocab_size: int
    probability: float
    special_ids: frozenset[int]
    seed: int


def mask_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of one block's masks in one epoch (ints hash the same in every process and run)."""
    return hash((seed, epoch, index)) % 2**63


def mask_tokens(input_ids: Any, masking: Masking, generator: Any) -> tuple[Any, Any]:
    """BERT's 80/10/10 masking of one block.

    Args:
        input_ids: 1-D LongTensor.
        masking: the settings.
        generator: a seeded `torch.Generator`; the only source of randomness.

    Returns:
        (inputs, labels): inputs with the chosen tokens replaced; labels holding the original id at chosen
        positions and IGNORE_INDEX elsewhere. At least one token is chosen when the block has a non-special one,
        so every block contributes to the loss.
    """
    import torch

    special = torch.tensor([int(t) in masking.special_ids for t in input_ids.tolist()], dtype=torch.bool)
    probability = torch.full(input_ids.shape, masking.probability)
    probability[special] = 0.0
    chosen = torch.bernoulli(probability, generator=generator).bool()
    candidates = (~special).nonzero().flatten()
    if not chosen.any() and len(candidates):
        chosen[candidates[torch.randint(len(candidates), (1,), generator=generator)]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, MASK_SHARE), generator=generator).bool() & chosen
    inputs[to_mask] = masking.mask_id
    share = RANDOM_SHARE / (1 - MASK_SHARE)  # of the chosen tokens not masked, half get a random token
    to_random = torch.bernoulli(torch.full(input_ids.shape, share), generator=generator).bool() & chosen & ~to_mask
    inputs[to_random] = torch.randint(masking.vocab_size, input_ids.shape, generator=generator)[to_random]
    return inputs, labels


def mask_block(block: Any, masking: Masking, epoch: int, index: int) -> tuple[Any, Any]:
    """`mask_tokens` for block `index` in `epoch`, with its own keyed generator."""
    import torch

    generator = torch.Generator().manual_seed(mask_seed(masking.seed, epoch, index))
    return mask_tokens(torch.as_tensor(block, dtype=torch.long), masking, generator)


def mask_validation(blocks: list[list[int]], masking: Masking) -> dict[str, list[list[int]]]:
    """The validation blocks masked once, so every evaluation scores the same tokens."""
    inputs, labels = [], []
    for index, block in enumerate(blocks):
        masked, label = mask_block(block, masking, VALIDATION_EPOCH, index)
        inputs.append(masked.tolist())
        labels.append(label.tolist())
    return {"input_ids": inputs, "labels": labels}


def masked_lm_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """The Trainer's `compute_loss_func` for masked LM: transformers' `ForMaskedLMLoss`, a sum over the masked
    tokens divided by their count in the whole step (all processes, all accumulated batches).

    BERT's own head takes a mean per batch, so a step's batches (or processes) with fewer masked tokens would
    weigh as much as the others; with this the loss and the gradient are the same for 1 process x 8 blocks and
    2 x 4, or 4 x 2 with gradient accumulation. Without a count (evaluation) it is the batch's mean.
    """
    from transformers.loss.loss_utils import ForMaskedLMLoss

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    return ForMaskedLMLoss(logits, labels, logits.size(-1), num_items_in_batch=num_items_in_batch)


class BlockCollator:
    """Batches of equal-length blocks.

    Rows carrying `labels` (the pre-masked validation set) are stacked as they are. Otherwise causal LM: labels
    are the inputs (the model shifts them); masked LM: each row is masked by `mask_block` with its `index`
    column and the current `epoch` (set by `EpochCallback`).
    """

    def __init__(self, masking: Masking | None = None) -> None:
        self.masking = masking
        self.epoch = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        inputs = torch.stack([torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples])
        if "labels" in examples[0]:
            return {"input_ids": inputs, "labels": torch.stack([torch.as_tensor(e["labels"]) for e in examples])}
        if self.masking is None:
            return {"input_ids": inputs, "labels": inputs.clone()}
        masked = [
            mask_block(row, self.masking, self.epoch, int(e["index"]))
            for row, e in zip(inputs, examples, strict=True)
        ]
        return {"input_ids": torch.stack([m for m, _ in masked]), "labels": torch.stack([lab for _, lab in masked])}


class EpochCallback:
    """A Trainer callback that tells a `BlockCollator` which epoch begins (a resumed run included)."""

    @staticmethod
    def create(collator: BlockCollator) -> Any:
        from transformers import TrainerCallback

        class _Epoch(TrainerCallback):  # type: ignore[misc]
            def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                collator.epoch = int(state.epoch or 0)

        return _Epoch()
