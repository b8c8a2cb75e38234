"""Zero- and few-shot classification with a causal LM: ask for the label, score each label as the answer.

Each input becomes a question rendered through the model's chat template (`--zero-shot-prompt`, with {labels}
and {text}); the assistant's answer starts with "Answer:" and each label is scored by log P(" label" tokens |
question, "Answer:"), the joint probability of all its tokens.
Those log-probabilities carry the model's prior for each label word (a 135M model says "positive" far more
readily than "negative"), so they are calibrated as in "Calibrate Before Use" (Zhao et al. 2021): each label's
log-probability is reduced by its mean over the inputs ("inputs"), or by the log of its mean probability for
content-free inputs such as "N/A" ("content-free"). Few-shot: labelled examples become earlier question/answer
turns of the same chat.

Torch-free at import; the model work is in `answer_logprobs` (torch imported inside).
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmkit.errors import DataError, UsageError

# Picked on the dev splits of benchmarks/quality_zeroshot.py (never on its test rows); see docs/quality.md.
DEFAULT_ZERO_SHOT_PROMPT = "Classify the text as {labels}.\n\nText: {text}\n\nAnswer with the label only."
# The words the assistant's answer starts with, before the label (chat models). Chosen on the dev rows of seven
# corpora (sentiment, spam, question type, topic; benchmarks/quality_zeroshot.py --search, docs/zeroshot.md):
# mean macro-F1 over the task groups 0.680 against 0.549 with the label right after the assistant header.
DEFAULT_ANSWER_PREFIX = "Answer:"
CALIBRATIONS = ("auto", "none", "content-free", "inputs")
DEFAULT_CALIBRATION = "auto"
ZERO_SHOT_METHODS = ("question", "channel")
DEFAULT_ZERO_SHOT_METHOD = "question"
EXAMPLE_SELECTIONS = ("random", "fixed", "similar")
DEFAULT_EXAMPLE_SELECTION = "fixed"  # measured better than per-input random on tweets, and runs once (docs/quality.md)
DEFAULT_SHOTS = 4  # examples per label with --examples
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")  # Zhao et al. 2021's content-free inputs, averaged
MIN_CALIBRATION_INPUTS = 16  # auto calibrates over the inputs only when there are at least this many
EXAMPLE_MAX_TOKENS = 96  # a few-shot example's text is cut to this many tokens, so k x labels examples fit
LABEL_SPELLINGS = False  # also count "Positive" for the label "positive" (see docs/quality.md)
KV_TOKEN_BUDGET = 32_768  # prompt rows x padded length per forward when labels need more than one token
_FIELDS = {"labels", "text"}


def check_prompt(template: str) -> None:
    """Raise UsageError unless `template` is a format string with {text} and nothing but {labels}/{text}."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise UsageError(f"--zero-shot-prompt is not a valid template ({exc}); write literal braces as {{{{ }}}}") from None
    unknown = fields - _FIELDS
    if unknown or "text" not in fields:
        what = f"unknown field(s) {', '.join('{' + f + '}' for f in sorted(unknown))}" if unknown else "no {text}"
        raise UsageError(f"--zero-shot-prompt has {what}; use {{text}} for the input and {{labels}} for the label list")


def format_labels(labels: Sequence[str]) -> str:
    """'a', 'a or b', 'a, b or c': the label list as a question names it."""
    if len(labels) == 1:
        return labels[0]
    return ", ".join(labels[:-1]) + " or " + labels[-1]


def render_question(template: str, labels: Sequence[str], text: str) -> str:
    """The user turn for one text."""
    return template.format(labels=format_labels(labels), text=text)


# --- calibration (pure functions over log-probabilities: rows are inputs, columns are labels) ----------------------


def inputs_prior(logps: Sequence[Sequence[float]]) -> list[float]:
    """Each label's mean log-probability over the inputs: the prior that "inputs" calibration removes.

    Args:
        logps: log P(label | input) per input (rows) and label (columns).

    Returns:
        One value per label.
    """
    if not logps:
        raise ValueError("no inputs to calibrate on")
    return [sum(row[j] for row in logps) / len(logps) for j in range(len(logps[0]))]


def content_free_prior(logps: Sequence[Sequence[float]]) -> list[float]:
    """log of each label's mean probability (normalised over the labels) for the content-free inputs.

    Zhao et al. average the content-free inputs' label probabilities, then divide each input's probabilities
    by that average; in log space that is subtracting the log of the average.

    Args:
        logps: log P(label | content-free input), one row per content-free input.

    Returns:
        One value per label.
    """
    if not logps:
        raise ValueError("no content-free inputs")
    rows = [_softmax(row) for row in logps]
    return [math.log(max(sum(r[j] for r in rows) / len(rows), 1e-300)) for j in range(len(rows[0]))]


def calibrated_probs(logps: Sequence[float], prior: Sequence[float] | None) -> list[float]:
    """Label probabilities for one input: softmax over labels of log P(label | input) - prior (None: no prior)."""
    if prior is None:
        return _softmax(logps)
    return _softmax([v - p for v, p in zip(logps, prior, strict=True)])


def _softmax(values: Sequence[float]) -> list[float]:
    peak = max(values)
    exps = [math.exp(v - peak) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


# --- few-shot examples ------------------------------------------------------------------------------------------


def read_examples(
    path: Path, labels: Sequence[str], *, text_column: str = "text", label_column: str = "label"
) -> list[tuple[str, str]]:
    """(text, label) rows of an --examples table (CSV/TSV/JSONL/Parquet), checked against the labels.

    Args:
        path: the table.
        labels: the candidate labels; every example's label must be one of them.
        text_column: column with the example text.
        label_column: column with its label.

    Returns:
        The examples in file order (rows with an empty text are skipped).

    Raises:
        NotFoundError: no such file or column.
        DataError: a label that is not among the labels, or a label with no example.
    """
    from llmkit.data import read_table

    table = read_table(path, text_column, required=[label_column])
    rows: list[tuple[str, str]] = []
    for record in table.records:
        label = str(record.fields.get(label_column) or "").strip()
        if not record.text.strip():
            continue
        if label not in labels:
            raise DataError(
                f"{path}:{record.line}: example label {label!r} is not one of --labels ({', '.join(labels)}); "
                "fix the row or the labels"
            )
        rows.append((record.text, label))
    check_examples(rows, labels, source=str(path))
    return rows


def check_examples(rows: Sequence[tuple[str, str]], labels: Sequence[str], *, source: str = "examples") -> None:
    """Raise DataError unless every label has at least one example and every example's label is a label."""
    counts = Counter(label for _, label in rows)
    stray = sorted(set(counts) - set(labels))
    if stray:
        raise DataError(f"{source}: example labels {', '.join(stray)} are not among --labels ({', '.join(labels)})")
    missing = [label for label in labels if not counts[label]]
    if missing:
        raise DataError(f"{source}: no example for label(s) {', '.join(missing)}; add at least one row for each label")


_WORD = re.compile(r"[a-z0-9']+")


class ExamplePicker:
    """Chooses k examples per label for each input: at random (seeded per input), one random draw for all
    inputs ("fixed", as Zhao et al. 2021 do: the shared examples then run once, see `answer_logprobs`), or the
    most similar ones.

    Similarity is the cosine of TF-IDF word vectors (no model needed). The chosen examples are shuffled (random)
    or ordered least to most similar (similar), so the closest example sits right before the input.
    """

    def __init__(self, examples: Sequence[tuple[str, str]], labels: Sequence[str], shots: int, *,
                 selection: str = DEFAULT_EXAMPLE_SELECTION, seed: int | None = None) -> None:
        if shots < 0:
            raise UsageError("--shots must be 0 or more")
        if selection not in EXAMPLE_SELECTIONS:
            raise UsageError(f"unknown example selection {selection!r}; use one of {', '.join(EXAMPLE_SELECTIONS)}")
        self.by_label = {label: [t for t, lbl in examples if lbl == label] for label in labels}
        self.shots, self.selection, self.seed = shots, selection, 0 if seed is None else seed
        if selection == "similar":
            docs = [Counter(_WORD.findall(t.lower())) for t, _ in examples]
            df = Counter(w for d in docs for w in d)
            self.idf = {w: math.log((1 + len(docs)) / (1 + n)) + 1 for w, n in df.items()}
            self.vectors = {label: [self._vector(t) for t in texts] for label, texts in self.by_label.items()}

    def _vector(self, text: str) -> dict[str, float]:
        counts = Counter(_WORD.findall(text.lower()))
        vec = {w: n * self.idf.get(w, 1.0) for w, n in counts.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {w: v / norm for w, v in vec.items()}

    def pick(self, text: str, index: int) -> list[tuple[str, str]]:
        """The examples for input `index` (k per label, fewer where a label has fewer), in prompt order."""
        if self.shots == 0:
            return []
        # Per input: independent of batching and windows; "fixed" draws once for every input.
        rng = random.Random(self.seed * 1_000_003 + (0 if self.selection == "fixed" else index))
        if self.selection in ("random", "fixed"):
            chosen = [(t, label) for label, texts in self.by_label.items()
                      for t in rng.sample(texts, min(self.shots, len(texts)))]
            rng.shuffle(chosen)
            return chosen
        query = self._vector(text)
        scored = []
        for label, texts in self.by_label.items():
            sims = [(sum(v * query.get(w, 0.0) for w, v in vec.items()), rng.random(), t)
                    for vec, t in zip(self.vectors[label], texts, strict=True)]
            sims.sort(reverse=True)
            scored += [(sim, tie, t, label) for sim, tie, t in sims[: self.shots]]
        scored.sort()
        return [(t, label) for _, _, t, label in scored]


# --- prompts as token ids ---------------------------------------------------------------------------------------


class PromptBuilder:
    """Token ids of the question for one input (with its examples) and of each label as the answer.

    With a chat template: examples are earlier user/assistant turns and the label is scored right after the
    assistant header. Without one: "question\\nAnswer: label" blocks.
    """

    def __init__(self, tokenizer: Any, labels: Sequence[str], template: str, max_tokens: int, *,
                 spellings: bool = LABEL_SPELLINGS, answer_prefix: str = DEFAULT_ANSWER_PREFIX) -> None:
        check_prompt(template)
        self.tok, self.labels, self.template, self.max_tokens = tokenizer, list(labels), template, max_tokens
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        # With a chat template the assistant's answer may start with words of its own ("The answer is"); the label
        # then follows after a space. Without one, "Answer:" already is that start.
        self.answer_prefix = answer_prefix if self.chat else ""
        spaced = bool(self.answer_prefix) and not self.answer_prefix[-1].isspace()
        prefix = (" " if spaced else "") if self.chat else " "
        self.answers = [tokenizer(prefix + label, add_special_tokens=False)["input_ids"] for label in labels]
        if any(not a for a in self.answers):
            raise UsageError("--labels: a label tokenizes to nothing; use words")
        # Each label's spellings (as given, and capitalised): answer token ids and the label each belongs to.
        self.spelled: list[list[int]] = []
        self.owner: list[int] = []
        for j, label in enumerate(labels):
            forms = [label] + ([label[:1].upper() + label[1:]] if spellings and label[:1].islower() else [])
            for form in forms:
                self.spelled.append(tokenizer(prefix + form, add_special_tokens=False)["input_ids"])
                self.owner.append(j)
        self.room = max_tokens - max(len(a) for a in self.spelled)

    def combine(self, row: Sequence[float]) -> list[float]:
        """Per-spelling log-probabilities (as `spelled`) -> one per label: log of the summed probability."""
        out = []
        for j in range(len(self.labels)):
            values = [v for v, k in zip(row, self.owner, strict=True) if k == j]
            peak = max(values)
            out.append(peak + math.log(sum(math.exp(v - peak) for v in values)))
        return out

    def _text(self, prompt_text: str) -> list[int]:
        ids = self.tok(prompt_text, add_special_tokens=False)["input_ids"]
        if not self.chat:
            bos = self.tok.bos_token_id
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
        return list(ids)

    def render(self, text: str, examples: Sequence[tuple[str, str]] = ()) -> str:
        """The prompt as text, ending where the answer starts."""
        if self.chat:
            messages: list[dict[str, str]] = []
            answer = self.answer_prefix + (" " if self.answer_prefix and not self.answer_prefix[-1].isspace() else "")
            for example, label in examples:
                messages += [{"role": "user", "content": render_question(self.template, self.labels, example)},
                             {"role": "assistant", "content": answer + label}]
            messages.append({"role": "user", "content": render_question(self.template, self.labels, text)})
            out = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return str(out) + self.answer_prefix
        blocks = [f"{render_question(self.template, self.labels, e)}\nAnswer: {lbl}\n\n" for e, lbl in examples]
        return "".join(blocks) + f"{render_question(self.template, self.labels, text)}\nAnswer:"

    def cut(self, text: str, limit: int) -> str:
        """`text` cut to at most `limit` tokens."""
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else str(self.tok.decode(ids[: max(limit, 0)]))

    def prompt_ids(self, text: str, examples: Sequence[tuple[str, str]] = ()) -> tuple[list[int], bool]:
        """Token ids of the prompt, and whether the input text had to be cut to fit the model."""
        shots = [(self.cut(e, EXAMPLE_MAX_TOKENS), lbl) for e, lbl in examples]
        ids = self._text(self.render(text, shots))
        cut = False
        while len(ids) > self.room:
            text_len = len(self.tok(text, add_special_tokens=False)["input_ids"])
            keep = text_len - (len(ids) - self.room) - 2
            if keep < 1:
                if shots:  # drop examples before giving up on the input
                    shots = shots[1:]
                    ids = self._text(self.render(text, shots))
                    continue
                raise UsageError("--zero-shot-prompt and labels leave no room for the input; shorten them")
            text, cut = self.cut(text, keep), True
            ids = self._text(self.render(text, shots))
        return ids, cut


def score(
    lm: Any,
    builder: PromptBuilder,
    jobs: Sequence[tuple[int, str]],
    *,
    picker: ExamplePicker | None = None,
    batch_size: int = 32,
) -> tuple[list[list[float]], list[bool]]:
    """log P(label | prompt) for (index, text) jobs (the index seeds the example choice), and which were cut.

    Args:
        lm: a loaded causal LM (`llmkit.loading.LoadedModel`).
        builder: the prompt builder for the labels and template.
        jobs: (input index, text) pairs; content-free inputs use negative indices.
        picker: few-shot examples, or None for zero-shot.
        batch_size: prompts per forward.

    Returns:
        (log-probabilities per job and label, truncated flag per job).
    """
    prompts, cuts = [], []
    for index, text in jobs:
        shots = picker.pick(text, index) if picker is not None else []
        ids, cut = builder.prompt_ids(text, shots)
        prompts.append(ids)
        cuts.append(cut)
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    rows = answer_logprobs(lm.model, prompts, builder.spelled, pad_id=pad, device=lm.device, batch_size=batch_size)
    return [builder.combine(row) for row in rows], cuts


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all prompts share, leaving each prompt at least one token of its own."""
    if not prompts:
        return 0
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def answer_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: str,
    batch_size: int,
) -> list[list[float]]:
    """log P(answer tokens | prompt) for every prompt (rows) and answer (columns).

    The prefix all prompts share (chat header, system prompt, few-shot examples, the question up to the text)
    runs once and its KV cache serves every prompt; each prompt's own tokens run once, and their last position
    gives every answer's first token. Answers of more than one token continue from the prompt's cache (repeated
    once per such answer), so nothing is recomputed per label.

    Args:
        model: a causal LM.
        prompts: token ids of each prompt (at least one token each).
        answers: token ids of each answer (at least one token each).
        pad_id: padding id (masked out).
        device: where the model lives.
        batch_size: prompts per forward (fewer when long prompts would need a big cache).

    Returns:
        A list (one per prompt) of lists (one per answer) of floats.
    """
    import copy

    import torch

    long_answers = [j for j, a in enumerate(answers) if len(a) > 1]
    reps = max(len(long_answers), 1)
    first = torch.tensor([a[0] for a in answers])
    out: list[list[float]] = [[] for _ in prompts]
    if not prompts:
        return out
    shared = shared_prefix(prompts) if len(prompts) > 1 else 0
    prefix_cache = None
    if shared:
        with torch.inference_mode():
            prefix_cache = model(input_ids=torch.tensor([list(prompts[0][:shared])], device=device),
                                 use_cache=True, logits_to_keep=1).cache
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    start = 0
    while start < len(order):
        width = len(prompts[order[start]]) - shared
        rows = max(1, min(batch_size, KV_TOKEN_BUDGET // max((width + shared) * reps, 1)))
        chunk = order[start : start + rows]
        start += len(chunk)
        n = len(chunk)
        # Left padding of each prompt's own part: every prompt ends at the last position, where the answer starts.
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        own = torch.zeros((n, width), dtype=torch.long)
        for r, i in enumerate(chunk):
            tail_ids = prompts[i][shared:]
            ids[r, width - len(tail_ids) :] = torch.tensor(list(tail_ids))
            own[r, width - len(tail_ids) :] = 1
        mask = torch.cat([torch.ones((n, shared), dtype=torch.long), own], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(n)
        with torch.inference_mode():
            result = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                           cache=cache, use_cache=bool(long_answers) or cache is not None, logits_to_keep=1)
            scores = result.logits[:, -1].float().log_softmax(-1).cpu()[:, first].clone()  # answers' first tokens
            if long_answers:
                tail = max(len(answers[j]) for j in long_answers) - 1
                cont = torch.full((n * reps, tail), pad_id, dtype=torch.long)
                cont_mask = torch.zeros((n * reps, tail), dtype=torch.long)
                for r in range(n):
                    for q, j in enumerate(long_answers):
                        rest = answers[j][:-1]  # input a0..a(L-2); its outputs predict a1..a(L-1)
                        cont[r * reps + q, : len(rest)] = torch.tensor(list(rest))
                        cont_mask[r * reps + q, : len(rest)] = 1
                cache = result.cache
                if reps > 1:
                    cache.batch_repeat_interleave(reps)
                full_mask = torch.cat([mask.repeat_interleave(reps, 0), cont_mask], dim=1)
                lengths = mask.sum(-1).repeat_interleave(reps, 0)
                cont_pos = lengths[:, None] + torch.arange(tail)[None, :]
                more = model(input_ids=cont.to(device), attention_mask=full_mask.to(device),
                             position_ids=cont_pos.to(device), cache=cache, use_cache=False)
                logp = more.logits.float().log_softmax(-1).cpu()
                for r in range(n):
                    for q, j in enumerate(long_answers):
                        targets = torch.tensor(list(answers[j][1:]))
                        row = logp[r * reps + q, : len(targets)]
                        scores[r, j] += float(row.gather(-1, targets[:, None]).sum())
        for r, i in enumerate(chunk):
            out[i] = [float(v) for v in scores[r].tolist()]
    return out
