"""`llmkit fill-mask`: fill the [MASK] blanks of a sentence.

Two methods, picked from the model's head:

- masked-lm (BERT, RoBERTa, ...): one forward pass per batch gives each mask's distribution over the vocabulary,
  exactly as transformers' `pipeline("fill-mask")` computes it (same tokens and probabilities for one mask,
  `top_k` and single-piece targets). Beyond the pipeline:
  * a `--targets` word that the tokenizer splits into n pieces is scored as a whole: its mask is widened to n
    masks and the pieces are filled left to right, P = P(p1 | all masked) x P(p2 | p1, rest masked) x ...
    (the pipeline silently scores only the first piece);
  * `--joint`: a small beam over the masks, left to right, whose score is the same chain-rule probability of the
    whole filling, so the answers are consistent with each other (per-mask answers may not be).
- causal-lm (no MLM head, e.g. the bundled SmolLM2): candidates for the blank are the model's most likely next
  tokens at the blank (or the `--targets`), each filled sentence is scored by its whole likelihood
  log P(sentence), and a candidate's score is its share of the likelihood among the candidates scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from llmkit.errors import DataError, UsageError

DEFAULT_MODEL = "smollm2-135m-instruct"  # bundled and offline; a hub MLM id (bert-base-uncased) uses the MLM
DEFAULT_TOP_K = 5  # answers per mask
DEFAULT_BATCH_SIZE = 16  # inputs per forward pass
DEFAULT_JOINT_BEAM = 8  # --joint keeps max(top_k, this) partial fillings per step
CAUSAL_CANDIDATES = 30  # next-token candidates at the blank that a causal LM scores as whole sentences
MASK = "[MASK]"  # accepted for every model, mapped to the tokenizer's own mask token
MASKED_LM = "masked-lm"  # the head fill-mask runs on the ONNX engine


@dataclass(frozen=True)
class Fill:
    """One answer for one mask.

    Attributes:
        token: the filling (a vocabulary token for masked-lm, a word for causal-lm or multi-piece targets).
        score: its probability (masked-lm), or its share of the likelihood among the candidates (causal-lm).
        sequence: the input with this answer in the blank.
        token_id: the vocabulary id, when the answer is a single token.
        pieces: how many tokens the answer took.
    """

    token: str
    score: float
    sequence: str
    token_id: int | None = None
    pieces: int = 1


@dataclass(frozen=True)
class JointFill:
    """One filling of all the masks of an input, with its joint (chain-rule) probability."""

    tokens: list[str]
    score: float
    sequence: str


@dataclass(frozen=True)
class MaskPrediction:
    """The answers for one input.

    Attributes:
        text: the input as given.
        method: "masked-lm" or "causal-lm" (how the answers were scored).
        masks: for each mask, left to right, its top-k answers.
        joint: with --joint, the top-k fillings of all masks together.
        truncated: the input was longer than the model's maximum and was cut.
        error: why this input has no answers (e.g. "empty input"); None when it has.
        engine: what ran the model: "onnx" (ONNX Runtime) or "transformers".
        engine_reason: why that engine ran (the --engine auto rule, see llmkit/engines/choose.py).
        model: the model as the user named it (with a peft adapter, the adapter folder).
        base_model: the base model a peft adapter runs on; None without an adapter.
    """

    text: str
    method: str
    model: str
    masks: list[list[Fill]]
    joint: list[JointFill] | None = None
    truncated: bool = False
    error: str | None = None
    engine: str = "transformers"
    engine_reason: str = ""
    base_model: str | None = None


def parse_targets(targets: str | Iterable[str] | None) -> tuple[str, ...]:
    """`--targets a,b,c` -> ("a", "b", "c"); blanks dropped, order kept, duplicates removed."""
    if targets is None:
        return ()
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    out: list[str] = []
    for item in (t.strip() for t in items):
        if item and item not in out:
            out.append(item)
    if not out:
        raise UsageError("--targets is empty; give comma-separated words, e.g. --targets capital,city")
    return tuple(out)


def fill_mask(
    texts: Iterable[str],
    *,
    model: str = DEFAULT_MODEL,
    top_k: int = DEFAULT_TOP_K,
    targets: Iterable[str] | None = None,
    joint: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    truncate: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    loaded: Any = None,
    adapter: str | None = None,
    engine: str = "auto",
    choice: Any = None,
) -> Iterator[MaskPrediction]:
    """Fill the masks of each text, yielding one `MaskPrediction` per text in input order.

    Args:
        texts: inputs with one or more `[MASK]` (or the tokenizer's own mask token); read lazily in batches.
        model: alias, folder, .gguf file or hub id; a masked LM uses its MLM head, a causal LM whole-sentence
            likelihood (see the module docstring).
        top_k: answers per mask (and joint fillings with `joint`).
        targets: restrict the answers to these words (multi-piece words are scored as a whole).
        joint: also return the top-k joint fillings of all masks.
        batch_size: inputs per forward pass.
        truncate: cut inputs longer than the model's maximum (else raise).
        loaded: an already loaded `LoadedModel` (skips loading; its head decides the method).
        choice: the engine `Choice` that picked `loaded` (`load_model`'s), named in every record; None: "a model
            loaded by the caller".
        adapter: a peft (LoRA) adapter folder to run on `model` unmerged.
        engine: auto|onnx|transformers: what runs a masked LM (auto: ONNX Runtime on the CPU where the model
            exports, see llmkit/engines/choose.py); causal LMs run on transformers.

    Returns:
        An iterator of `MaskPrediction`.

    Raises:
        UsageError: an input without a mask, top_k < 1, several masks for a causal LM, or (with
            truncate=False) an input that is too long.
    """
    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    target_words = parse_targets(targets) if targets is not None else ()
    from llmkit.engines import Choice

    if loaded is None:
        loaded, choice = load_model(model, engine=engine, device=device, dtype=dtype, revision=revision,
                                    allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, adapter=adapter)
    elif choice is None:
        choice = Choice(getattr(loaded.model, "engine", "transformers"), "a model loaded by the caller")
    method = "masked-lm"
    if getattr(loaded.model, "engine", None) != "onnx":
        from llmkit.tasks import CAUSAL_LM, head_of_architectures

        net = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model  # peft
        method = "causal-lm" if head_of_architectures([type(net).__name__]) == CAUSAL_LM else "masked-lm"
    runner: _Runner = (
        _CausalRunner(loaded, top_k, target_words, truncate, joint)
        if method == "causal-lm"
        else _MlmRunner(loaded, top_k, target_words, joint, truncate)
    )
    runner.choice = choice
    batch: list[tuple[int, str]] = []
    for index, text in enumerate(texts):
        batch.append((index, text))
        if len(batch) >= batch_size:
            yield from runner.run(batch)
            batch = []
    if batch:
        yield from runner.run(batch)


def load_model(
    model: str = DEFAULT_MODEL,
    *,
    engine: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    adapter: str | None = None,
    warn_fallback: bool = True,
) -> tuple[Any, Any]:
    """The model `fill_mask()` loads for these arguments, and the engine `Choice` its records name: what
    `fill_mask()` runs itself, and what each `--executor ray` actor runs once to pass as `loaded=`/`choice=`.

    Args:
        engine: auto|onnx|transformers (llmkit/engines/choose.py `choose_encoder`).
        warn_fallback: say on stderr (once) when auto wanted ONNX Runtime and could not use it.

    Returns:
        (an ONNX Runtime handle or a `LoadedModel` with a masked-LM or causal-LM head, the `Choice`).

    Raises:
        UsageError: a model with neither head, or an --engine that cannot run it.
    """
    from llmkit import loading
    from llmkit.engines import choose

    onnx_loaded, choice = choose.load_chosen_encoder(
        model, MASKED_LM, engine=engine, device=device, dtype=dtype, adapter=adapter, revision=revision,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, warn_fallback=warn_fallback)
    if onnx_loaded is not None:
        return onnx_loaded, choice
    kind, _ = loading.model_heads(model, revision=revision, trust_remote_code=trust_remote_code, adapter=adapter)
    if kind not in ("masked-lm", "causal-lm"):
        raise UsageError(
            f"{model} has no masked-LM or causal-LM head ({kind}); use a fill-mask model such as "
            "bert-base-uncased, or the bundled smollm2-135m-instruct"
        )
    return loading.load(model, kind, device=device, dtype=dtype, revision=revision, allow_pickle=allow_pickle,
                        trust_remote_code=trust_remote_code, adapter=adapter), choice


class _Runner:
    method = ""

    def __init__(self, lm: Any, top_k: int, targets: tuple[str, ...], truncate: bool) -> None:
        from llmkit.scoring import max_input_tokens

        self.lm, self.net, self.tok = lm, lm.model, lm.tokenizer
        self.top_k, self.targets, self.truncate = top_k, targets, truncate
        self.max_tokens = max_input_tokens(self.net, self.tok)
        self.spec, self.base_spec = lm.spec, lm.base_spec  # an adapter as named, and its base
        self.choice: Any = None  # the engine Choice, set by fill_mask(): every record says which engine ran

    def records(self) -> dict[str, Any]:
        """The fields every record carries: the engine with its reason, and an adapter's base."""
        engine = {} if self.choice is None else {"engine": self.choice.engine, "engine_reason": self.choice.reason}
        return {**engine, "base_model": self.base_spec}

    def run(self, batch: list[tuple[int, str]]) -> list[MaskPrediction]:
        raise NotImplementedError

    def empty(self, text: str) -> MaskPrediction:
        return MaskPrediction(text=text, method=self.method, model=self.spec, masks=[], error="empty input",
                              **self.records())

    def too_long(self, index: int, n: int) -> None:
        if not self.truncate:
            raise DataError(
                f"input {index + 1} has {n} tokens, more than the model's {self.max_tokens}; "
                "shorten it or drop --no-truncate"
            )


def _no_mask(index: int, mask_token: str) -> UsageError:
    also = f" (or {mask_token})" if mask_token and mask_token != MASK else ""
    return UsageError(f"input {index + 1} has no mask: mark the blank with {MASK}{also}, e.g. 'Paris is the {MASK} of France.'")


class _MlmRunner(_Runner):
    method = "masked-lm"

    def __init__(self, lm: Any, top_k: int, targets: tuple[str, ...], joint: bool, truncate: bool) -> None:
        super().__init__(lm, top_k, targets, truncate)
        self.joint = joint
        self.mask_token = self.tok.mask_token
        self.mask_id = self.tok.mask_token_id
        if self.mask_id is None:
            raise UsageError(f"{self.spec}'s tokenizer has no mask token; use a masked LM or a causal LM")
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self._pieces_cache: dict[tuple[str, bool], list[int]] = {}
        unknown = [w for w in targets if self.tok.unk_token_id is not None and self.tok.unk_token_id in self.pieces(w, True)]
        if unknown:
            raise UsageError(f"--targets {', '.join(unknown)}: not in {self.spec}'s vocabulary; drop or respell them")

    # --- preprocess ------------------------------------------------------------------------------------------

    def encode(self, index: int, text: str) -> tuple[list[int], bool]:
        marked = text.replace(MASK, self.mask_token) if self.mask_token != MASK else text
        if self.mask_token not in marked:
            raise _no_mask(index, self.mask_token)
        ids = self.tok(marked)["input_ids"]
        cut = len(ids) > self.max_tokens
        if cut:
            self.too_long(index, len(ids))
            ids = self.tok(marked, truncation=True, max_length=self.max_tokens)["input_ids"]
            if self.mask_id not in ids:
                raise DataError(
                    f"input {index + 1}: its {MASK} lies beyond the model's {self.max_tokens} tokens; shorten the input"
                )
        return ids, cut

    def pieces(self, word: str, after_space: bool) -> list[int]:
        """The tokens of a target word as it would appear in the blank (with the leading space if any)."""
        key = (word, after_space)
        if key not in self._pieces_cache:
            vocab_id = self.tok.get_vocab().get(word) if not after_space else None
            ids = self.tok((" " + word) if after_space else word, add_special_tokens=False)["input_ids"]
            # A lone leading-space piece (sentencepiece "▁") is not part of the word.
            while len(ids) > 1 and not self.tok.decode(ids[:1]).strip():
                ids = ids[1:]
            if len(ids) != 1 and vocab_id is not None:
                ids = [vocab_id]
            self._pieces_cache[key] = ids
        return self._pieces_cache[key]

    def forward(self, seqs: list[list[int]]) -> list[Any]:
        """MLM logits (float32 numpy [length, vocab]) of each sequence, run right-padded in batches.

        ONNX Runtime runs the batch in length-sorted parts on its worker threads (one core each); transformers runs
        it whole. Only the rows a caller reads are turned into log-probabilities (`log_softmax`): the whole
        [batch, length, vocab] would cost more than the forward pass.
        """
        import numpy as np

        def padded(rows: list[list[int]]) -> dict[str, Any]:
            width = max(len(r) for r in rows)
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            attention = np.zeros((len(rows), width), dtype=np.int64)
            for row, seq in enumerate(rows):
                ids[row, : len(seq)] = seq
                attention[row, : len(seq)] = 1
            return {"input_ids": ids, "attention_mask": attention}

        if getattr(self.net, "engine", None) == "onnx":
            order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
            parts = max(1, min(self.net.threads, len(seqs)))
            size = -(-len(seqs) // parts)
            chunks = [order[k : k + size] for k in range(0, len(order), size)]
            out: list[Any] = [None] * len(seqs)
            for chunk, logits in zip(chunks, self.net.many([padded([seqs[i] for i in c]) for c in chunks]), strict=True):
                for row, i in enumerate(chunk):
                    out[i] = logits[row]
            return out
        import torch

        batch = {k: torch.from_numpy(v).to(self.lm.device) for k, v in padded(seqs).items()}
        with torch.inference_mode():
            logits = self.net(**batch).logits.float().cpu().numpy()
        return list(logits)

    def chain(self, items: list[tuple[list[int], int, list[int]]]) -> list[tuple[float, list[int]]]:
        """Score fillings of one mask with several pieces: widen the mask, fill left to right.

        Args:
            items: (ids with a mask at `pos`, pos, pieces).

        Returns:
            (log-probability of the pieces, the ids with the pieces in place) per item.
        """
        states = [(ids[:pos] + [self.mask_id] * len(p) + ids[pos + 1 :], pos, p) for ids, pos, p in items]
        totals = [0.0] * len(items)
        seqs = [s[0] for s in states]
        for step in range(max(len(p) for _, _, p in items)):
            active = [i for i, (_, _, p) in enumerate(states) if len(p) > step]
            logits = self.forward([seqs[i] for i in active])
            for row, i in enumerate(active):
                _, pos, p = states[i]
                totals[i] += float(log_softmax(logits[row][pos + step])[p[step]])
                seqs[i] = seqs[i][: pos + step] + [p[step]] + seqs[i][pos + step + 1 :]
        return list(zip(totals, seqs, strict=True))

    def decode(self, ids: list[int], keep_masks: bool) -> str:
        ids = [t for t in ids if t != self.pad_id]
        return self.tok.decode(ids, skip_special_tokens=not keep_masks)

    # --- run -------------------------------------------------------------------------------------------------

    def run(self, batch: list[tuple[int, str]]) -> list[MaskPrediction]:
        encoded: dict[int, tuple[list[int], bool]] = {}
        for index, text in batch:
            if text.strip():
                encoded[index] = self.encode(index, text)
        order = [i for i, _ in batch if i in encoded]
        logits: Any = self.forward([encoded[i][0] for i in order]) if order else None
        rows = {index: row for row, index in enumerate(order)}
        results = []
        for index, text in batch:
            if index not in encoded:
                results.append(self.empty(text))
                continue
            ids, cut = encoded[index]
            row = logits[rows[index]]
            positions = [p for p, t in enumerate(ids) if t == self.mask_id]
            spaces = self.spaces(text)
            masks = [
                self.per_mask(ids, pos, log_softmax(row[pos]), space, single=len(positions) == 1)
                for pos, space in zip(positions, spaces + [True] * len(positions), strict=False)
            ]
            joint = self.joint_fill(text, ids) if self.joint else None
            results.append(
                MaskPrediction(text=text, method=self.method, model=self.spec, masks=masks, joint=joint, truncated=cut,
                               **self.records())
            )
        return results

    def spaces(self, text: str) -> list[bool]:
        """For each mask, left to right: whether it follows whitespace (so a word there starts with a space)."""
        marked = text.replace(MASK, self.mask_token) if self.mask_token != MASK else text
        parts = marked.split(self.mask_token)[:-1]
        return [bool(part) and part[-1].isspace() for part in parts]

    def per_mask(self, ids: list[int], pos: int, logp: Any, space: bool, *, single: bool) -> list[Fill]:
        if not self.targets:
            tokens = top_indices(logp, self.top_k)
            return [self.token_fill(ids, pos, int(t), math.exp(float(logp[t])), single) for t in tokens]
        fills: list[Fill] = []
        multi: list[tuple[str, list[int]]] = []
        seen: set[tuple[int, ...]] = set()
        for word in self.targets:
            pieces = self.pieces(word, space)
            if not pieces or tuple(pieces) in seen:
                continue
            seen.add(tuple(pieces))
            if len(pieces) == 1:
                fills.append(self.token_fill(ids, pos, pieces[0], math.exp(float(logp[pieces[0]])), single))
            else:
                multi.append((word, pieces))
        if multi:
            for (word, pieces), (total, filled) in zip(multi, self.chain([(ids, pos, p) for _, p in multi]), strict=True):
                fills.append(
                    Fill(
                        token=word,
                        score=math.exp(total),
                        sequence=self.decode(filled, keep_masks=not single),
                        token_id=None,
                        pieces=len(pieces),
                    )
                )
        fills.sort(key=lambda f: -f.score)
        return fills[: self.top_k]

    def token_fill(self, ids: list[int], pos: int, token: int, prob: float, single: bool) -> Fill:
        filled = ids[:pos] + [token] + ids[pos + 1 :]
        # Like the pipeline: special tokens are dropped for one mask, kept (other [MASK]s) for several.
        return Fill(token=self.tok.decode([token]), score=prob, sequence=self.decode(filled, keep_masks=not single),
                    token_id=token)

    def joint_fill(self, text: str, ids: list[int]) -> list[JointFill]:
        """Beam search over the masks, left to right; a filling's score is the product of its conditionals."""
        width = max(self.top_k, DEFAULT_JOINT_BEAM)
        spaces = self.spaces(text)
        beams: list[tuple[float, list[int], list[str]]] = [(0.0, ids, [])]
        while self.mask_id in beams[0][1]:
            logits = self.forward([b[1] for b in beams])
            expansions: list[tuple[float, list[int], list[str]]] = []
            for row, (total, seq, words) in enumerate(beams):
                pos = seq.index(self.mask_id)
                logp = log_softmax(logits[row][pos])
                if not self.targets:
                    for t in top_indices(logp, width):
                        t = int(t)
                        expansions.append((total + float(logp[t]), seq[:pos] + [t] + seq[pos + 1 :],
                                           words + [self.tok.decode([t])]))
                    continue
                space = spaces[len(words)] if len(words) < len(spaces) else True
                multi = []
                for word in self.targets:
                    pieces = self.pieces(word, space)
                    if len(pieces) == 1:
                        v = float(logp[pieces[0]])
                        expansions.append((total + v, seq[:pos] + pieces + seq[pos + 1 :], words + [word]))
                    elif pieces:
                        multi.append((word, pieces))
                if multi:
                    for (word, _), (v, filled) in zip(multi, self.chain([(seq, pos, p) for _, p in multi]), strict=True):
                        expansions.append((total + v, filled, words + [word]))
            expansions.sort(key=lambda e: -e[0])
            beams = expansions[:width]
        return [
            JointFill(tokens=words, score=math.exp(total), sequence=self.decode(seq, keep_masks=False))
            for total, seq, words in beams[: self.top_k]
        ]


class _CausalRunner(_Runner):
    method = "causal-lm"

    def __init__(self, lm: Any, top_k: int, targets: tuple[str, ...], truncate: bool, joint: bool = False) -> None:
        from llmkit.scoring import start_ids

        super().__init__(lm, top_k, targets, truncate)
        self.joint = joint  # one mask per input: the joint fillings are the whole-sentence ranking itself
        self.start = start_ids(self.tok)
        pad = self.tok.pad_token_id
        self.pad_id = pad if pad is not None else (self.tok.eos_token_id or 0)

    def ids(self, text: str) -> list[int]:
        return self.start + self.tok(text, add_special_tokens=False)["input_ids"]

    def run(self, batch: list[tuple[int, str]]) -> list[MaskPrediction]:
        import torch

        from llmkit.scoring import continuation_logprobs

        jobs: dict[int, tuple[str, str, bool]] = {}
        for index, text in batch:
            if not text.strip():
                continue
            own = self.tok.mask_token
            marked = text.replace(own, MASK) if own and own != MASK else text
            count = marked.count(MASK)
            if count == 0:
                raise _no_mask(index, "")
            if count > 1:
                raise UsageError(
                    f"input {index + 1} has {count} masks; a causal LM fills one {MASK} per input "
                    "(use a masked LM such as bert-base-uncased for several, with --joint)"
                )
            prefix, suffix = marked.split(MASK, 1)
            cut = False
            n = len(self.ids(prefix + suffix))
            if n > self.max_tokens:
                self.too_long(index, n)
                cut = True
            jobs[index] = (prefix, suffix, cut)

        # Candidates: the most likely next tokens at the blank, as words (or the --targets).
        candidates: dict[int, list[str]] = {}
        if self.targets:
            candidates = {i: list(self.targets) for i in jobs}
        elif jobs:
            order = list(jobs)
            contexts = [self.ids(jobs[i][0].rstrip(" "))[-self.max_tokens :] for i in order]
            width = max(len(c) for c in contexts)
            ids = torch.full((len(order), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for row, context in enumerate(contexts):
                ids[row, : len(context)] = torch.tensor(context)
                attention[row, : len(context)] = 1
            with torch.inference_mode():
                logits = self.net(input_ids=ids.to(self.lm.device), attention_mask=attention.to(self.lm.device)).logits
            for row, i in enumerate(order):
                top = logits[row, len(contexts[row]) - 1].float().topk(CAUSAL_CANDIDATES * 2).indices.tolist()
                words: list[str] = []
                for token in top:
                    word = self.tok.decode([token]).strip()
                    if word and any(ch.isalnum() for ch in word) and word not in words:
                        words.append(word)
                    if len(words) >= CAUSAL_CANDIDATES:
                        break
                candidates[i] = words

        pairs: list[tuple[list[int], list[int]]] = []
        spans: dict[int, tuple[int, int]] = {}
        for i, (prefix, suffix, cut) in jobs.items():
            start = len(pairs)
            for word in candidates[i]:
                sentence = self.tok(prefix + word + suffix, add_special_tokens=False)["input_ids"]
                if cut:
                    sentence = sentence[: self.max_tokens - len(self.start)]
                pairs.append((self.start or sentence[:1], sentence if self.start else sentence[1:]))
            spans[i] = (start, len(pairs))
        scores = continuation_logprobs(self.net, pairs, pad_id=self.pad_id, device=self.lm.device) if pairs else []

        results = []
        for index, text in batch:
            if index not in jobs:
                results.append(self.empty(text))
                continue
            prefix, suffix, cut = jobs[index]
            lo, hi = spans[index]
            logps = scores[lo:hi]
            peak = max(logps) if logps else 0.0
            norm = sum(math.exp(v - peak) for v in logps) or 1.0
            fills = [
                Fill(token=word, score=math.exp(v - peak) / norm, sequence=prefix + word + suffix,
                     pieces=len(self.tok(word, add_special_tokens=False)["input_ids"]))
                for word, v in zip(candidates[index], logps, strict=True)
            ]
            fills.sort(key=lambda f: -f.score)
            best = fills[: self.top_k]
            joint = [JointFill(tokens=[f.token], score=f.score, sequence=f.sequence) for f in best] if self.joint else None
            results.append(
                MaskPrediction(text=text, method=self.method, model=self.spec, masks=[best], joint=joint, truncated=cut,
                               **self.records())
            )
        return results


def log_softmax(logits: Any) -> Any:
    """log_softmax of one vector of logits (numpy float32), as torch computes it: x - max - log(sum(exp(x - max)))."""
    import numpy as np

    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_indices(values: Any, k: int) -> Any:
    """Indices of the k largest values, largest first (ties: the lower index first)."""
    import numpy as np

    k = min(k, values.shape[-1])
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.lexsort((part, -values[part]))]


def best_filling(result: Any) -> str:
    """The best filled sentence of a result (tab-separated per mask), for `--format text`."""
    if result.error:
        return ""
    if result.joint:
        return result.joint[0].sequence
    return "\t".join(fills[0].sequence if fills else "" for fills in result.masks)
