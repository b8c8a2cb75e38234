"""The transformers engine: the reference for every architecture, and the one that runs on GPUs.

Generation (`load_generator`, `generate`): preprocess (chat template, left-padded batches grouped by length) ->
`model.generate` -> postprocess (stop strings, finish reason, n-best scores), one `Generation` per prompt in input
order. llmkit's float32 Llama loop (llama_loop.py) runs through the same batches, passing its own `decoder` for
`model.generate`'s greedy steps.

transformers itself is imported inside the functions, only where a run needs it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from llmkit.errors import UsageError
from llmkit.sampling import (
    Candidate,
    Generation,
    GenerationSettings,
    StopStream,
    chat_messages,
    cut_at_stop,
    generation_kwargs,
    settings_record,
    stream_seed,
)

NAME = "transformers"
LENGTH_GROUP_WINDOW = 4  # batches read ahead and sorted by length to cut padding


# --- generation --------------------------------------------------------------------------------------------------


def load_generator(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    adapter: str | None = None,
) -> Any:
    """Load a causal LM or an encoder-decoder for `generate` (low precision where --dtype auto allows it).

    Returns:
        A `loading.LoadedModel`.
    """
    from llmkit import loading

    return loading.load(model, "text-generation", device=device, dtype=dtype, revision=revision,
                        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, low_precision=True,
                        adapter=adapter)


def format_prompt(tokenizer: Any, prompt: Any, *, system: str | None, raw: bool) -> str:
    """Apply the chat template (with the optional system message) unless `raw` or the model has none.

    `prompt` is a string, or a conversation (a sequence of {"role", "content"} messages; see `chat_messages`).
    """
    messages = chat_messages(prompt, system=system, raw=raw, has_template=bool(getattr(tokenizer, "chat_template", None)))
    if messages is None:
        return prompt
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class _TextStream:
    """A transformers streamer (batch size 1) that hands decoded text deltas to a callback, through StopStream."""

    def __init__(self, tokenizer: Any, callback: Callable[[str], None], stops: tuple[str, ...], skip: int) -> None:
        self.tokenizer = tokenizer
        self.view = StopStream(stops, callback)
        self.skip_prompt_calls = skip  # the first put() carries the prompt (decoder-only) or the start token
        self.ids: list[int] = []

    def put(self, value: Any) -> None:
        if self.skip_prompt_calls:
            self.skip_prompt_calls -= 1
            return
        self.ids.extend(int(v) for v in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        self.view.update(text)

    def end(self) -> None:
        pass

    def finish(self, final_text: str) -> None:
        """Show whatever the hold-back kept, once the final (stop-trimmed) text is known."""
        self.view.finish(final_text)


@dataclass
class _Prepared:
    index: int
    prompt: str
    ids: list[int]


def _length_grouped(items: list[_Prepared], batch_size: int) -> list[list[_Prepared]]:
    """Batches of similar length (less padding), run in the order of their earliest input so the first results
    can be printed as soon as possible."""
    ordered = sorted(items, key=lambda p: len(p.ids))
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return sorted(batches, key=lambda batch: min(p.index for p in batch))


def generate(
    lm: Any,
    prompts: Iterable[Any],
    *,
    settings: GenerationSettings,
    system: str | None = None,
    raw: bool = False,
    batch_size: int = 8,
    on_text: Callable[[int, str], None] | None = None,
    reason: str = "",
    decoder: Any = None,
) -> Iterator[Generation]:
    """Generate an answer for each prompt with a loaded model, yielding results in input order as they are ready.

    Args:
        lm: a `loading.LoadedModel` (from `load_generator`, or llama_loop's).
        prompts: strings or conversations, read lazily `batch_size * LENGTH_GROUP_WINDOW` at a time.
        settings / system / raw / batch_size / on_text: as for `llmkit.generate.generate`.
        reason: why this engine runs, for the records.
        decoder: llmkit's Llama loop (`llama_loop.NativeLlama`) to take the place of `model.generate` for greedy
            steps and per-input sampling; None: transformers' own generate.

    Returns:
        An iterator of `Generation` with engine="transformers".
    """
    import torch

    from llmkit import loading
    from llmkit.adapters import generation_inputs
    from llmkit.threads import use_free_cores

    # torch's threads as llama.cpp's (threads.py): one per free core, or LLMKIT_THREADS. With torch's default of
    # one per core, 8 prompts x 16 tokens on the loop took 104 s wall (25.5 s CPU) at load average 15 on 2
    # cores, against 26 s (5.5 s CPU) with the one free thread (2026-12-07).
    use_free_cores()
    net, tok = lm.model, lm.tokenizer
    window = batch_size * LENGTH_GROUP_WINDOW if batch_size > 1 else 1
    encoder_decoder = bool(getattr(net.config, "is_encoder_decoder", False))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    # Decoder-only models continue from the last position, so pad on the left; encoders do not care.
    tok.padding_side = "right" if encoder_decoder else "left"
    eos = _eos_ids(net, tok)
    gen_kwargs = generation_kwargs(settings)
    gen_kwargs["pad_token_id"] = tok.pad_token_id
    want_scores = settings.num_return_sequences > 1
    if want_scores:
        gen_kwargs.update(output_scores=True, return_dict_in_generate=True)
    record = settings_record(settings)
    if settings.seed is not None:
        loading.set_seed(settings.seed)
    # Sampling: each input draws from its own stream (seed + its index), so its answer does not depend on the rest
    # of its batch; transformers' greedy step (or llmkit's loop) then takes the drawn token (seeded_sampling.py).
    per_input_streams = settings.do_sample and settings.num_beams == 1
    # Without --seed the streams start from one random base: the same draws as transformers' own sampling in
    # distribution, and the same (faster) loop as seeded runs.
    stream_base = settings.seed if settings.seed is not None else random.SystemRandom().getrandbits(31)
    if per_input_streams:
        for knob in ("temperature", "top_k", "top_p", "min_p", "typical_p"):
            gen_kwargs[knob] = None
        # greedy generate() refuses num_return_sequences > 1: the rows are repeated by hand instead (run_batch)
        gen_kwargs.update(do_sample=False, num_return_sequences=1)
    # Templated prompts carry their own special tokens; raw prompts get the tokenizer's usual ones.
    add_special = raw or not getattr(tok, "chat_template", None) or encoder_decoder

    def prepare(index: int, prompt: Any) -> _Prepared:
        if encoder_decoder and not isinstance(prompt, str):
            raise UsageError("encoder-decoder models take a plain prompt, not chat messages (/v1/completions lines)")
        text = prompt if encoder_decoder else format_prompt(tok, prompt, system=system, raw=raw)
        ids = tok(text, add_special_tokens=add_special)["input_ids"]
        if not ids:
            raise UsageError(f"prompt {index + 1} is empty after tokenization; give some text")
        return _Prepared(index, prompt, ids)

    def run_batch(batch: list[_Prepared]) -> list[Generation]:
        padded = tok.pad({"input_ids": [p.ids for p in batch]}, return_tensors="pt").to(lm.device)
        streamer = None
        if on_text is not None and len(batch) == 1 and settings.num_beams == 1 and settings.num_return_sequences == 1:
            index = batch[0].index
            streamer = _TextStream(tok, lambda delta: on_text(index, delta), settings.stop, skip=1)
        extra: dict[str, Any] = {}
        sampler = None
        if per_input_streams:
            from llmkit.seeded_sampling import make_sampler

            n = settings.num_return_sequences
            sampler = make_sampler(settings, [stream_seed(stream_base, p.index) for p in batch], n, eos)
            if n > 1:  # the layout transformers' own expansion has: input b's rows are b*n .. b*n+n-1
                padded = {k: v.repeat_interleave(n, dim=0) for k, v in padded.items()}
        # After the per-input expansion above: a prompt/prefix adapter's virtual tokens go in as embeddings or a
        # starting KV cache (adapters.py); then the output holds only the new tokens.
        inputs = generation_inputs(net, padded["input_ids"], padded["attention_mask"])
        prompt_len = padded["input_ids"].shape[1] if inputs.echoes_prompt else 0
        # llmkit's loop takes plain callables; transformers' generate wants its list types (importing transformers
        # only then: 1-2 s of start-up).
        own_loop = decoder is not None and inputs.echoes_prompt and inputs.model is net
        if settings.stop:
            start = 1 if encoder_decoder else prompt_len
            extra["stopping_criteria"] = _stop_criteria(tok, settings.stop, start, for_transformers=not own_loop)
        if sampler is not None and not own_loop:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList([sampler])
        started = time.perf_counter()
        with torch.inference_mode():
            if own_loop:
                out = decoder.greedy(
                    padded["input_ids"], padded["attention_mask"], max_new_tokens=settings.max_new_tokens, eos=eos,
                    pad_token_id=tok.pad_token_id, stopping_criteria=extra.get("stopping_criteria"),
                    streamer=streamer, logits_processor=sampler,
                )
            else:
                out = inputs.model.generate(**inputs.kwargs, **gen_kwargs, **extra, streamer=streamer)
        seconds = time.perf_counter() - started
        sequences = out.sequences if want_scores else out
        scores: list[float] | None
        if want_scores and sampler is not None:
            scores = [float(x) for x in sampler.logprob_sums]  # the processed scores only keep the drawn token
        else:
            scores = _sequence_scores(inputs.model, out, settings) if want_scores else None
        # Encoder-decoders start their output with the decoder start token; decoders repeat the prompt first.
        new_tokens = sequences[:, 1:] if encoder_decoder else sequences[:, prompt_len:]
        results = []
        n = settings.num_return_sequences
        for b, item in enumerate(batch):
            candidates = []
            for j in range(n):
                row = new_tokens[b * n + j].tolist()
                candidates.append(_postprocess(tok, row, eos, settings, scores[b * n + j] if scores else None))
            best = candidates[0]
            if streamer is not None:
                streamer.finish(best.text)
            results.append(
                Generation(
                    prompt=item.prompt,
                    text=best.text,
                    finish_reason=best.finish_reason,
                    prompt_tokens=len(item.ids),
                    completion_tokens=best.completion_tokens,
                    seconds=round(seconds, 4),
                    tokens_per_second=round(best.completion_tokens / seconds, 2) if seconds > 0 else 0.0,
                    model=lm.source.spec,
                    candidates=candidates if n > 1 else None,
                    settings=record,
                    engine_reason=reason,
                )
            )
        return results

    pending: list[_Prepared] = []
    for index, prompt in enumerate(prompts):
        pending.append(prepare(index, prompt))
        if len(pending) >= window:
            yield from _run_window(pending, batch_size, run_batch)
            pending = []
    if pending:
        yield from _run_window(pending, batch_size, run_batch)


def _stop_criteria(tok: Any, stops: tuple[str, ...], start: int, *, for_transformers: bool = True) -> Any:
    """Stop each sequence once its new text contains a stop string.

    Decodes only the last few tokens per step (a stop string of n characters spans at most n + 1 tokens), which
    works for any tokenizer; transformers' own `stop_strings` needs a tokenizer whose vocabulary it can parse.
    A `StoppingCriteriaList` for transformers' generate, else the plain function (llmkit's own loop).
    """
    import torch

    window = max(len(s) for s in stops) + 2

    def stop_on_strings(input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        tail = input_ids[:, max(start, input_ids.shape[1] - window) :]
        texts = tok.batch_decode(tail, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in stops) for t in texts], device=input_ids.device)

    if not for_transformers:
        return stop_on_strings
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return stop_on_strings(input_ids, scores)

    return StoppingCriteriaList([StopOnStrings()])


def _run_window(
    items: list[_Prepared], batch_size: int, run_batch: Callable[[list[_Prepared]], list[Generation]]
) -> Iterator[Generation]:
    """Run length-grouped batches; yield results in input order as soon as the next one in order exists."""
    done: dict[int, Generation] = {}
    next_index = items[0].index
    for batch in _length_grouped(items, batch_size):
        for item, result in zip(batch, run_batch(batch), strict=True):
            done[item.index] = result
        while next_index in done:
            yield done.pop(next_index)
            next_index += 1


def _sequence_scores(model: Any, out: Any, s: GenerationSettings) -> list[float]:
    """Beam search: transformers' length-normalised beam scores; sampling: the sum of token log-probs."""
    if s.num_beams > 1 and getattr(out, "sequences_scores", None) is not None:
        return [float(x) for x in out.sequences_scores]
    import torch

    transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    transition = torch.where(torch.isfinite(transition), transition, torch.zeros_like(transition))
    return [float(x) for x in transition.sum(dim=1)]


def _postprocess(tok: Any, row: list[int], eos: set[int], s: GenerationSettings, score: float | None) -> Candidate:
    finish = "length"
    for i, token in enumerate(row):
        if token in eos:
            row, finish = row[:i], "eos"
            break
    pad = tok.pad_token_id
    while row and row[-1] == pad and pad not in eos:
        row = row[:-1]
    text = tok.decode(row, skip_special_tokens=True)
    text, hit = cut_at_stop(text, s.stop)
    if hit:
        finish = "stop"
    elif finish == "length" and len(row) < s.max_new_tokens:
        finish = "eos"
    return Candidate(text=text, score=None if score is None else round(score, 5), completion_tokens=len(row),
                     finish_reason=finish)

