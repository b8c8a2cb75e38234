"""One random stream per input for sampling on the transformers engine.

transformers samples a whole batch from one global generator, so under `--seed` a prompt's output would depend
on the other prompts in its batch and on `--batch-size`, and two copies of one prompt in a batch would share a
stream. Here input number i (its position in the whole input, not in the batch) samples from its own
`torch.Generator` seeded with `sampling.stream_seed(seed, i)` (seed + i), the llama.cpp engine's rule too.
Without `--seed`, `generate()` takes one random base seed per run in its place.

How: `generate()` runs transformers' greedy loop with this logits processor last. It applies the same warpers as
transformers' sampling (temperature, top-k, top-p, min-p, typical-p, in transformers' order and with its own
classes), draws each input's next token from that input's generator, and returns scores where only the drawn
token is finite, which the greedy step then picks. For one prompt (input 0) the draw is the one transformers'
own sampling makes after `torch.manual_seed(seed)`, so parity with plain `model.generate` holds.
"""

from __future__ import annotations

from typing import Any


def warpers(settings: Any) -> list[Any]:
    """transformers' sampling warpers for `settings`, in the order and under the conditions transformers uses.

    Args:
        settings: `GenerationSettings` with do_sample set (None knobs mean off).

    Returns:
        A list of transformers LogitsProcessor objects (possibly empty).
    """
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    found: list[Any] = []
    if settings.temperature is not None and settings.temperature != 1.0:
        found.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        found.append(TopKLogitsWarper(top_k=settings.top_k))
    if settings.top_p is not None and settings.top_p < 1.0:
        found.append(TopPLogitsWarper(top_p=settings.top_p))
    if settings.min_p:
        found.append(MinPLogitsWarper(min_p=settings.min_p))
    if settings.typical_p is not None and settings.typical_p < 1.0:
        found.append(TypicalLogitsWarper(mass=settings.typical_p))
    return found


def make_sampler(settings: Any, seeds: list[int], per_input: int, eos_ids: set[int]) -> Any:
    """A logits processor that samples row by row, each input from its own generator (see the module docstring).

    Args:
        settings: the sampling `GenerationSettings`.
        seeds: one seed per input of the batch, in batch order (`sampling.stream_seed`).
        per_input: rows per input (--num-return-sequences); an input's rows draw from its one generator.
        eos_ids: end-of-sequence ids, to stop adding log-probabilities once a row has ended.

    Returns:
        The processor; after generation its `logprob_sums` holds, per row, the sum of the log-probabilities of
        the drawn tokens under the warped distribution (the n-best scores of sampling).
    """
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.warpers = warpers(settings)
            self.generators = []
            for seed in seeds:
                generator = torch.Generator(device="cpu")
                generator.manual_seed(seed)
                self.generators.append(generator)
            self.logprob_sums = torch.zeros(len(seeds) * per_input, dtype=torch.float64)
            self.done = torch.zeros(len(seeds) * per_input, dtype=torch.bool)
            self.calls = 0
            self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long) if eos_ids else None

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if self.calls and self.eos is not None:
                self.done |= torch.isin(input_ids[:, -1].cpu(), self.eos)
            self.calls += 1
            for warper in self.warpers:
                scores = warper(input_ids, scores)
            # softmax as transformers computes it, so one prompt draws exactly what plain sampling draws
            probs = torch.softmax(scores, dim=-1).cpu()
            logprobs = torch.log_softmax(scores.float(), dim=-1).cpu()
            drawn = torch.empty(probs.shape[0], dtype=torch.long)
            for i, generator in enumerate(self.generators):
                rows = slice(i * per_input, (i + 1) * per_input)
                drawn[rows] = torch.multinomial(probs[rows], num_samples=1, generator=generator).squeeze(1)
            picked = logprobs.gather(1, drawn[:, None]).squeeze(1).double()
            self.logprob_sums += torch.where(self.done, torch.zeros_like(picked), picked)
            out = torch.full_like(scores, float("-inf"))
            out.scatter_(1, drawn[:, None].to(scores.device), 0.0)
            return out

    return SeededSampler()
