"""The transformers engine: the reference for every architecture, and the one that runs on GPUs.

Generation (`load_generator`, `generate`): preprocess (chat template, left-padded batches grouped by length) ->
`model.generate` -> postprocess (stop strings, finish reason, n-best scores), one `Generation` per prompt in input
order. llmkit's float32 Llama loop (llama_loop.py) runs through the same batches, passing its own `decoder` for
`model.generate`'s greedy steps.

transformers itself is imported inside the functions, only where a run needs it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from llmkit.errors import UsageError
from llmkit.sampling import (
    Candidate,
    Completion,
    Generation,
    GenerationSettings,
    StopStream,
    TokenLogprob,
    TopLogprob,
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
        self.put_ids(int(v) for v in value.reshape(-1).tolist())

    def put_ids(self, ids: Iterable[int]) -> None:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        self.view.update(text)

    def end(self) -> None:
        pass

    def finish(self, final_text: str) -> None:
        """Show whatever the hold-back kept, once the final (stop-trimmed) text is known."""
        self.view.finish(final_text)


class RowStreams:
    """A streamer for a batch on llmkit's Llama loop: each batch row's tokens go to that row's `_TextStream`.

    The loop calls `put_rows(rows, tokens)` at each step (llama_loop.NativeLlama.greedy); the prompt's `put` and
    `end` carry nothing a row needs.
    """

    def __init__(self, streams: list[_TextStream]) -> None:
        self.streams = streams

    def put(self, value: Any) -> None:
        """The prompt (the loop's first call): nothing to show."""

    def put_rows(self, rows: list[int], tokens: list[int]) -> None:
        for row, token in zip(rows, tokens, strict=True):
            self.streams[row].put_ids([token])

    def end(self) -> None:
        pass


def decoder_prompt_ids(tok: Any, prompt: Any, *, system: str | None, raw: bool, index: int = 0) -> list[int]:
    """A decoder-only model's input ids for a prompt, as `generate` makes them: the chat template (unless `raw`
    or the tokenizer has none) with its own special tokens, else the tokenizer's usual ones."""
    add_special = raw or not getattr(tok, "chat_template", None)
    ids = tok(format_prompt(tok, prompt, system=system, raw=raw), add_special_tokens=add_special)["input_ids"]
    if not ids:
        raise UsageError(f"prompt {index + 1} is empty after tokenization; give some text")
    return list(ids)


def _to_row(on_text: Callable[[int, str], None], index: int) -> Callable[[str], None]:
    """`on_text` bound to one prompt's index (a row's streamed deltas)."""
    return lambda delta: on_text(index, delta)


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
    cancelled: Callable[[], bool] | None = None,
    logprobs: int | None = None,
    on_logprob: Callable[[TokenLogprob], None] | None = None,
    stream_rows: bool = False,
) -> Iterator[Generation]:
    """Generate an answer for each prompt with a loaded model, yielding results in input order as they are ready.

    Args:
        lm: a `loading.LoadedModel` (from `load_generator`, or llama_loop's).
        prompts: strings or conversations, read lazily `batch_size * LENGTH_GROUP_WINDOW` at a time.
        settings / system / raw / batch_size / on_text: as for `llmkit.generate.generate`.
        reason: why this engine runs, for the records.
        decoder: llmkit's Llama loop (`llama_loop.NativeLlama`) to take the place of `model.generate` for greedy
            steps and per-input sampling; None: transformers' own generate.
        cancelled: polled at every step; True ends the batch there (a client that went away).
        logprobs: batch size 1: hand each generated token's log-probability, with this many alternatives, to
            `on_logprob` as it is made (the model's distribution before sampling; None: off).
        on_logprob: receives the `TokenLogprob` entries (with `logprobs`).
        stream_rows: on llmkit's loop, stream every row of a batch through `on_text` (the server's batches;
            otherwise only batches of one stream, and the others' text comes with their results).

    Returns:
        An iterator of `Generation` with engine="transformers".
    """
    import torch

    from llmkit import loading
    from llmkit.adapters import generation_inputs

    if logprobs is not None and batch_size != 1:
        raise UsageError("log-probabilities are recorded one prompt at a time (batch size 1)")
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
        if not encoder_decoder:
            return _Prepared(index, prompt, decoder_prompt_ids(tok, prompt, system=system, raw=raw, index=index))
        ids = tok(prompt, add_special_tokens=add_special)["input_ids"]
        if not ids:
            raise UsageError(f"prompt {index + 1} is empty after tokenization; give some text")
        return _Prepared(index, prompt, ids)

    def run_batch(batch: list[_Prepared]) -> list[Generation]:
        padded = tok.pad({"input_ids": [p.ids for p in batch]}, return_tensors="pt").to(lm.device)
        streamer: Any = None
        if on_text is not None and len(batch) == 1 and settings.num_beams == 1 and settings.num_return_sequences == 1:
            index = batch[0].index
            streamer = _TextStream(tok, lambda delta: on_text(index, delta), settings.stop, skip=1)
        elif stream_rows and on_text is not None and decoder is not None and settings.num_return_sequences == 1:
            # llmkit's loop streams every row of a batch (what the server's batches need); if the loop does not
            # run this batch after all (see own_loop), the text comes at the end
            streamer = RowStreams([_TextStream(tok, _to_row(on_text, p.index), settings.stop, skip=0)
                                   for p in batch])
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
        own_loop = decoder is not None and inputs.echoes_prompt and inputs.model is net and logprobs is None
        if settings.stop or cancelled is not None:
            start = 1 if encoder_decoder else prompt_len
            extra["stopping_criteria"] = _stop_criteria(tok, settings.stop, start, for_transformers=not own_loop,
                                                        cancelled=cancelled)
        recorder = _LogprobRecorder(tok, logprobs, on_logprob) if logprobs is not None else None
        processors = [p for p in (recorder, sampler) if p is not None]  # the recorder sees the model's own scores
        if processors and not own_loop:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList(processors)
        started = time.perf_counter()
        with torch.inference_mode():
            if own_loop:
                out = decoder.greedy(
                    padded["input_ids"], padded["attention_mask"], max_new_tokens=settings.max_new_tokens, eos=eos,
                    pad_token_id=tok.pad_token_id, stopping_criteria=extra.get("stopping_criteria"),
                    streamer=streamer, logits_processor=sampler,
                )
            else:
                if isinstance(streamer, RowStreams):
                    streamer = None
                out = inputs.model.generate(**inputs.kwargs, **gen_kwargs, **extra, streamer=streamer)
        seconds = time.perf_counter() - started
        sequences = out.sequences if want_scores else out
        if recorder is not None:
            recorder.finish(int(sequences[0, -1]))
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
            if isinstance(streamer, RowStreams):
                streamer.streams[b].finish(best.text)
            elif streamer is not None:
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
                    model=lm.spec,
                    candidates=candidates if n > 1 else None,
                    settings=record,
                    engine_reason=reason,
                    base_model=lm.base_spec,
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


BATCH_GATHER_SECONDS = 0.05  # an idle loop's first batch waits while calls keep coming less than this apart
BATCH_GATHER_MAX_SECONDS = 1.0  # ... for up to this long after its first call (Generator._gather)
@dataclass
class _Row:
    """A greedy `complete()` call on the continuous batch (Generator with max_batch > 1): waiting, then a row."""

    prompt: Any
    settings: GenerationSettings
    system: str | None
    raw: bool
    on_text: Callable[[str], None] | None
    cancelled: Callable[[], bool] | None
    done: threading.Event
    arrived: float = field(default_factory=time.monotonic)
    ids: list[int] = field(default_factory=list)
    made: list[int] = field(default_factory=list)  # the tokens generated so far
    stream: _TextStream | None = None
    started: float = 0.0
    result: Completion | None = None
    error: BaseException | None = None

    def gone(self) -> bool:
        return self.cancelled is not None and self.cancelled()


class Generator:
    """A transformers model loaded once, answering prompts for many threads.

    A transformers model is not safe to run from several threads at once, so `complete()` runs one `generate`
    at a time. By default each answer is its own run at batch size 1, the path `llmkit generate "a prompt"` takes,
    so both give the same answer to the same prompt and settings, and concurrent callers take turns.

    With `max_batch` > 1 and llmkit's Llama loop as the decoder (what `llmkit serve` loads for many concurrent
    requests: engines/choose.py, SERVE_LOOP_MIN_CONCURRENCY), greedy calls without log-probabilities are batched
    continuously (llama_loop.RunningBatch): at every step boundary the calls waiting join the running batch (up to
    `max_batch` rows; their prompts prefilled together, then decoded with the rest), and a row that has finished
    (EOS, a stop string, its max_tokens, its client gone) leaves it, its caller answered at once. Each row keeps
    its own settings (max_tokens, stop strings, template), streams its own text, and gets the tokens the loop gives
    that prompt alone (greedy; tests/test_llama_loop.py), whatever it was batched with. When nothing runs, the
    first batch waits while calls keep arriving (`_gather`), so that requests sent together share one prefill.
    Other calls (sampling, log-probabilities) run alone at batch size 1, between steps.

    Every call runs on one thread of the Generator's own (the model thread: a one-worker ThreadPoolExecutor,
    joined when the interpreter exits); callers queue their calls and wait. Why: each thread that runs a torch
    operation gets its own OpenMP thread pool, and libgomp throttles the spinning of every pool once it manages
    more threads than there are cores, so with callers driving the batch in turn (as they did) each step waited
    on sleeping workers: `llmkit serve` decoded 16 rows on 1.5 of 2 cores, and on its own model thread on 1.95.
    The loop alone at batch 16 made 292-315 tokens/s on 1.99 cores, and 256-265 on 1.56 beside three idle
    threads that had each run one torch product (benchmarks/omp_pools.py, omp_pools_20261208-014439.json).
    Unbatched calls run between two steps of the batch.

    Args:
        lm: a `loading.LoadedModel` (`load_generator`).
        reason: why this engine runs, for the records.
        decoder: llmkit's Llama loop for `generate`'s batches (None: transformers' own generate).
        max_batch: the most greedy calls decoded together (1: none are).
    """

    engine = NAME

    def __init__(self, lm: Any, *, reason: str = "", decoder: Any = None, max_batch: int = 1) -> None:
        self.lm = lm
        self.model = lm.spec
        self.reason = reason
        self.decoder = decoder
        self.max_batch = max_batch if decoder is not None else 1
        self._lock = threading.Lock()  # held while the model runs (one step, or one whole unbatched call)
        self._rows = threading.Condition()  # guards _waiting and the model thread's queue; notified when rows finish
        self._waiting: list[_Row] = []
        self._executor: ThreadPoolExecutor | None = None  # the model thread, made by the first call
        self._drive_queued = False  # a _drive task is queued or running on the model thread
        self._jobs_queued = 0  # unbatched calls queued or running there (the batch lets them in between steps)
        self._batch: Any = None  # llama_loop.RunningBatch, made on the first batched call
        # torch's threads for the batch, chosen once here, at load, as the llama.cpp engine chooses its own
        # (threads.py): choosing at each batch sampled /proc/stat for 30 ms with the batch stalled, and could only
        # lower the count (use_free_cores never raises it), so one busy moment (other processes, or the clients'
        # own threads sending their requests) could leave a long-running server on one thread for good
        self._threads = 0
        if self.max_batch > 1:
            from llmkit.threads import use_free_cores

            self._threads = use_free_cores()
        self._admissions: Counter[int] = Counter()  # prefills by how many requests joined the decode together
        self._steps: Counter[int] = Counter()  # decode steps by how many requests each advanced
        # set by a server: how many requests it has received and not yet handed to an engine (see _gather)
        self.arriving: Callable[[], int] | None = None

    def batch_stats(self) -> dict[str, dict[int, int]]:
        """The batches run so far (/metrics): {"admissions": {rows: prefills}, "steps": {rows: decode steps}}."""
        return {"admissions": dict(self._admissions), "steps": dict(self._steps)}

    def unsupported(self, settings: GenerationSettings) -> list[str]:
        """The settings this engine cannot honour: none (transformers is the reference for all of them)."""
        return []

    def check(self, settings: GenerationSettings) -> None:
        """Nothing to refuse before running: a prompt too long for the model fails in `complete`."""

    def generate(self, prompts: Iterable[Any], **run: Any) -> Iterator[Generation]:
        """`generate` (this module's) on the loaded model: a run's prompts in batches."""
        return generate(self.lm, prompts, decoder=self.decoder, reason=self.reason, **run)

    def complete(
        self,
        prompt: Any,
        settings: GenerationSettings,
        *,
        system: str | None = None,
        raw: bool = False,
        index: int = 0,
        on_text: Callable[[str], None] | None = None,
        on_logprob: Callable[[TokenLogprob], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        logprobs: int | None = None,
    ) -> Completion:
        """Answer one prompt; the arguments are those of llama_cpp.Generator.complete.

        With a seed, the answer for `index` samples from `stream_seed(seed, index)`, as prompt number `index` of a
        `generate` run does.
        """
        # the loop where it gives transformers' tokens for these settings, transformers' generate elsewhere
        decoder = self.decoder if self.decoder is not None and self.decoder.supports(settings) else None
        if self.max_batch > 1 and decoder is not None and not settings.do_sample and logprobs is None:
            return self._batched(_Row(prompt, settings, system, raw, on_text, cancelled, threading.Event()))
        if settings.seed is not None and index:
            settings = replace(settings, seed=stream_seed(settings.seed, index))
        entries: list[TokenLogprob] = []

        def keep(entry: TokenLogprob) -> None:
            entries.append(entry)
            if on_logprob is not None:
                on_logprob(entry)

        def run() -> Completion:
            (done,) = generate(
                self.lm, [prompt], settings=settings, system=system, raw=raw, batch_size=1, reason=self.reason,
                on_text=(lambda _, delta: on_text(delta)) if on_text is not None else None, cancelled=cancelled,
                logprobs=logprobs, on_logprob=keep if logprobs is not None else None, decoder=decoder,
            )
            stopped = cancelled is not None and cancelled()
            return _completion(done, tuple(entries[: done.completion_tokens]) if logprobs is not None else None,
                               stopped)

        with self._rows:
            self._jobs_queued += 1
            future = self._model_thread().submit(self._unbatched, run)
        return future.result()

    def _unbatched(self, run: Callable[[], Completion]) -> Completion:
        try:
            with self._lock:
                return run()
        finally:
            with self._rows:
                self._jobs_queued -= 1

    def _model_thread(self) -> ThreadPoolExecutor:
        """The executor whose one thread runs every call (with self._rows held)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmkit-model")
        return self._executor

    def _batched(self, mine: _Row) -> Completion:
        """Queue a greedy call for the continuous batch, stepped on the model thread; its answer."""
        with self._rows:
            self._waiting.append(mine)
            if not self._drive_queued:
                self._drive_queued = True
                self._model_thread().submit(self._drive)
        mine.done.wait()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _drive(self) -> None:
        """Step the batch (admitting the waiting calls at each step boundary) until it is empty; when unbatched
        calls are queued meanwhile, queue this again behind them and return (they run between two steps)."""
        import torch

        try:
            if self._threads:
                torch.set_num_threads(self._threads)  # an unbatched call may have chosen fewer
            tok = self.lm.tokenizer
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            if self._batch is None:
                self._batch = self.decoder.running_batch(tok.pad_token_id)
            eos = _eos_ids(self.lm.model, tok)
        except BaseException as exc:  # noqa: BLE001 - each waiting caller raises it in its own thread
            with self._rows:
                waiting, self._waiting, self._drive_queued = self._waiting, [], False
            self._finish(waiting, error=exc)
            return
        while True:
            with self._rows:
                if not (self._waiting or len(self._batch)):
                    self._drive_queued = False
                    return
                if self._jobs_queued:
                    try:
                        self._model_thread().submit(self._drive)
                        return
                    except RuntimeError:  # no new tasks while the interpreter exits: finish the batch first
                        pass
            with self._lock, torch.inference_mode():
                try:
                    if not len(self._batch):
                        self._gather()
                    self._admit(tok)
                    if len(self._batch):
                        self._step(tok, eos)
                except Exception as exc:  # noqa: BLE001 - each caller raises it in its own thread
                    rows = list(self._batch.handles)
                    self._batch = self.decoder.running_batch(tok.pad_token_id)
                    self._finish(rows, error=exc)

    def _gather(self) -> None:
        """Let the requests sent together share the first prefill of an idle loop.

        They reach the engine spread out by the server's work on each (265-772 ms for 16 on a loaded 2-core
        machine): the batch waits while calls keep arriving less than BATCH_GATHER_SECONDS apart, and while the
        server says more requests are on their way (`arriving`), for up to BATCH_GATHER_MAX_SECONDS from its
        first call, or until it is full. Later calls join it as it runs, but on a loaded 2-core machine the rounds
        whose 16 requests split 3+13 gave 1.44-1.47x one-at-a-time llama.cpp's tokens/s against 1.95x for 16
        together (serve_20261207-224144.json; a decode that has started competes for the cores with the server
        still reading the rest). Requests that have not reached the server yet can still split it.
        """
        while True:
            with self._rows:
                if not self._waiting:
                    return
                now = time.monotonic()
                first, last = self._waiting[0].arrived, self._waiting[-1].arrived
                if len(self._waiting) >= self.max_batch:
                    return
            deadline = first + BATCH_GATHER_MAX_SECONDS
            coming = self.arriving is not None and self.arriving() > 0
            wait = (deadline if coming else min(last + BATCH_GATHER_SECONDS, deadline)) - now
            if wait <= 0:
                return
            time.sleep(min(wait, 0.01) if coming else wait)  # while requests are coming, look again soon

    def _admit(self, tok: Any) -> None:
        """Prefill the waiting calls (as many as the batch has room for) and add them to the running batch."""
        batch = self._batch
        with self._rows:
            room = self.max_batch - len(batch)
            joining, self._waiting = self._waiting[:room], self._waiting[room:]
        ready, failed, gone = [], [], []
        for row in joining:
            if row.gone():  # its client left while it waited: answered (cancelled) without running
                row.started = time.perf_counter()
                gone.append(row)
                continue
            try:
                row.ids = decoder_prompt_ids(tok, row.prompt, system=row.system, raw=row.raw)
            except Exception as exc:  # noqa: BLE001 - this request's failure is not the others'
                row.error = exc
                failed.append(row)
                continue
            if row.on_text is not None:
                row.stream = _TextStream(tok, row.on_text, row.settings.stop, skip=0)
            row.started = time.perf_counter()
            ready.append(row)
        self._finish(failed)
        self._finish(gone, tok=tok)
        if not ready:
            return
        try:
            batch.admit([r.ids for r in ready], ready, [max(1, r.settings.max_new_tokens) for r in ready])
        except Exception as exc:  # noqa: BLE001 - a failed prefill fails the rows it would have added (the
            self._finish(ready, error=exc)  # batch is as it was: RunningBatch.admit changes it only at its end)
            return
        self._admissions[len(ready)] += 1

    def _step(self, tok: Any, eos: set[int]) -> None:
        """One decode step: each row's next token; rows that finish leave (and are answered) before the rest run
        one step further."""
        batch = self._batch
        self._steps[len(batch)] += 1
        tokens = batch.tokens()
        keep, finished = [], []
        for row, token, budget in zip(batch.handles, tokens.tolist(), batch.budgets, strict=True):
            row.made.append(token)
            if row.stream is not None:
                row.stream.put_ids([token])
            stops = row.settings.stop
            window = max((len(s) for s in stops), default=0) + 2
            end = (token in eos or budget <= 0 or row.gone()
                   or (bool(stops) and any(s in tok.decode(row.made[-window:], skip_special_tokens=True)
                                           for s in stops)))
            keep.append(not end)
            if end:
                finished.append(row)
        self._finish(finished, tok=tok, eos=eos)
        batch.advance(tokens, keep)

    def _finish(self, rows: list[_Row], *, tok: Any = None, eos: set[int] | None = None,
                error: BaseException | None = None) -> None:
        """Answer `rows`: their results from the tokens made (with `tok`), or `error`; wake their callers."""
        for row in rows:
            if error is not None:
                row.error = error
            elif row.error is None:
                best = _postprocess(tok, row.made, eos or set(), row.settings, None)
                if row.stream is not None:
                    row.stream.finish(best.text)
                row.result = Completion(text=best.text, finish_reason=best.finish_reason,
                                        prompt_tokens=len(row.ids), completion_tokens=best.completion_tokens,
                                        seconds=round(time.perf_counter() - row.started, 4), logprobs=None,
                                        cancelled=row.gone())
            row.done.set()
        if rows:
            with self._rows:
                self._rows.notify_all()

def _completion(done: Generation, logprobs: tuple[TokenLogprob, ...] | None, stopped: bool) -> Completion:
    return Completion(text=done.text, finish_reason=done.finish_reason, prompt_tokens=done.prompt_tokens,
                      completion_tokens=done.completion_tokens, seconds=done.seconds, logprobs=logprobs,
                      cancelled=stopped)


def _stop_criteria(tok: Any, stops: tuple[str, ...], start: int, *, for_transformers: bool = True,
                   cancelled: Callable[[], bool] | None = None) -> Any:
    """Stop each sequence once its new text contains a stop string, and every sequence once `cancelled()`.

    Decodes only the last few tokens per step (a stop string of n characters spans at most n + 1 tokens), which
    works for any tokenizer; transformers' own `stop_strings` needs a tokenizer whose vocabulary it can parse.
    A `StoppingCriteriaList` for transformers' generate, else the plain function (llmkit's own loop).
    """
    import torch

    window = max((len(s) for s in stops), default=0) + 2

    def stop_on_strings(input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        if cancelled is not None and cancelled():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not stops:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
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


class _LogprobRecorder:
    """A logits processor (first in the list, so it sees the model's own scores) that records, for one prompt,
    each generated token's log-probability and the `top` most likely tokens at its step.

    The token a step chose is known at the next step (the last of `input_ids`), or from the final sequence
    (`finish`); each entry goes to `emit` as soon as it is known.
    """

    def __init__(self, tok: Any, top: int, emit: Callable[[TokenLogprob], None] | None) -> None:
        self.tok = tok
        self.top = top
        self.emit = emit
        self.last: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.last is not None:
            self._settle(int(input_ids[0, -1]))
        self.last = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def finish(self, token: int) -> None:
        """Settle the last step with the sequence's final token."""
        if self.last is not None:
            self._settle(token)

    def _entry(self, token: int, logprob: float) -> TopLogprob:
        text = self.tok.decode([token])
        return TopLogprob(text, logprob, tuple(text.encode("utf-8")))

    def _settle(self, token: int) -> None:
        scores, self.last = self.last, None
        chosen = self._entry(token, float(scores[token]))
        top: tuple[TopLogprob, ...] = ()
        if self.top:
            values, ids = scores.topk(self.top)
            top = tuple(self._entry(int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True))
        if self.emit is not None:
            self.emit(TokenLogprob(chosen.token, chosen.logprob, chosen.bytes, top))


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

