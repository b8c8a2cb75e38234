"""`llmkit classify`: label texts (or text pairs) with a classifier, or zero-shot with --labels.

Three methods, picked from the model's head and whether --labels is given:

- classifier: a sequence-classification checkpoint (including `llmkit finetune` output). Label names from
  `id2label`; softmax for single-label, sigmoid for multi-label (`problem_type` or --multi-label) and one-logit
  models, exactly as `pipeline("text-classification")` decides. Inputs are read in windows, sorted by token
  length and padded per batch only to the batch's own longest input (the pipeline pads in input order).
- nli: a sequence-classification checkpoint with an "entailment" label and --labels: each label becomes the
  hypothesis `--hypothesis-template` for the text as premise; scores are the softmax of the entailment logits over
  the labels (or, multi-label, entailment vs contradiction per label), as transformers' zero-shot pipeline does.
- causal-lm: a causal LM and --labels (the bundled SmolLM2 by default): each input is asked as a question through
  the model's chat template (`--zero-shot-prompt`), each label is scored as the answer, log P(label | question),
  and calibrated against the label's prior (`--calibrate`, see llmkit/zeroshot.py); `--examples` adds labelled
  examples as earlier turns (few-shot). `--zero-shot-method channel` scores log P(text | label) instead
  ("causal-lm-channel").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import metrics
from llmkit.errors import DataError, NotFoundError, UsageError
from llmkit.tokens import pad_batch

SEQUENCE_CLASSIFICATION = "sequence-classification"  # the head classify runs (classifiers and NLI models)

DEFAULT_ZERO_SHOT_MODEL = "smollm2-135m-instruct"  # bundled: `classify --labels a,b` works offline
DEFAULT_BATCH_SIZE = 32  # inputs per forward pass (transformers)
# Inputs per ONNX Runtime run: on 3,000 mixed-length VADER snippets (benchmarks/onnx_engine.py, MiniLM-L6, 2 cores)
# batches of 8 took 22.4 s of CPU and 240 MiB at peak, batches of 32 25.6 s and 350 MiB (less padding per batch,
# smaller activations); 4 gained nothing more (22.1 s).
ONNX_BATCH_SIZE = 8
DEFAULT_TOP_K = 1  # labels per input in the output
DEFAULT_HYPOTHESIS_TEMPLATE = "This example is {}."  # transformers' zero-shot default
LENGTH_GROUP_WINDOW = 16  # batches read ahead and sorted by length, so padding stays small
MULTI_LABEL_THRESHOLD = 0.5  # multi-label: labels at or above this sigmoid score are "active"
UNKNOWN = "UNKNOWN"  # the label when the best score is below --min-score
CHANNEL_PROMPT = "Label: {label}\nText:"  # --zero-shot-method channel: the text is scored after this prefix


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The prediction for one input.

    Attributes:
        text: the input (the premise for NLI).
        label: the best label, or "UNKNOWN" when its score is below --min-score.
        score: the best label's score (probability, or sigmoid score for multi-label).
        scores: the top-k labels with scores (all with --all-scores), best first.
        method: "classifier", "nli", "causal-lm" (label as the answer) or "causal-lm-channel".
        pair: the second text of a text pair, if any.
        active: multi-label only: the labels scoring at least MULTI_LABEL_THRESHOLD.
        truncated: the input was longer than the model's maximum and was cut.
        error: why there is no prediction (e.g. "empty input").
        calibration: causal-lm only: the label prior removed from the scores, "inputs" (each label's mean over
            this run's inputs), "content-free" (inputs such as "N/A") or "none".
        shots: causal-lm only: labelled examples in this input's prompt.
        engine: what ran the model: "onnx" (ONNX Runtime) or "transformers".
        engine_reason: why that engine ran (the --engine auto rule, see llmkit/engines/choose.py).
        model: the model as the user named it (with a peft adapter, the adapter folder).
        base_model: the base model a peft adapter runs on; None without an adapter.
    """

    text: str
    label: str | None
    score: float | None
    scores: list[LabelScore]
    method: str
    model: str
    pair: str | None = None
    active: list[str] | None = None
    truncated: bool = False
    error: str | None = None
    calibration: str | None = None
    shots: int | None = None
    engine: str = "transformers"
    engine_reason: str = ""
    base_model: str | None = None


def parse_labels(labels: str | None, labels_file: Path | None = None) -> tuple[str, ...] | None:
    """`--labels a,b,c` and/or `--labels-file` (one per line) -> labels, in order, without duplicates."""
    if labels is None and labels_file is None:
        return None
    items: list[str] = []
    if labels is not None:
        items += labels.split(",")
    if labels_file is not None:
        if not labels_file.exists():
            raise NotFoundError(f"--labels-file not found: {labels_file}")
        items += labels_file.read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    for item in (i.strip() for i in items):
        if item and item not in out:
            out.append(item)
    if len(out) < 1:
        raise UsageError("no labels given; use --labels positive,negative or a --labels-file with one per line")
    return tuple(out)


def classify(
    inputs: Iterable[str | tuple[str, str | None]],
    *,
    model: str | None = None,
    labels: Sequence[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    all_scores: bool = False,
    multi_label: bool | None = None,
    min_score: float | None = None,
    hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
    batch_size: int | None = None,
    truncate: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    loaded: Any = None,
    choice: Any = None,
    adapter: str | None = None,
    zero_shot_method: str = "question",
    zero_shot_prompt: str | None = None,
    calibrate: str = "auto",
    examples: Sequence[tuple[str, str]] | None = None,
    shots: int | None = None,
    example_selection: str = "fixed",
    seed: int | None = None,
    engine: str = "auto",
) -> Iterator[Classification]:
    """Classify each input, yielding one `Classification` per input in input order.

    Args:
        inputs: texts, or (text, pair) tuples for NLI-style pair classifiers; read lazily in windows.
        model: alias, folder or hub id; default: the bundled causal LM when `labels` are given.
        labels: zero-shot candidate labels (NLI or causal LM); None uses the classifier's own labels.
        top_k: labels per result; `all_scores` returns all of them.
        multi_label: independent labels (sigmoid / per-label entailment); None: from the model config.
        min_score: abstain (label "UNKNOWN") when the best score is below this.
        hypothesis_template: NLI zero-shot hypothesis, with {} for the label.
        batch_size: inputs per forward pass (None: ONNX_BATCH_SIZE on ONNX Runtime, else DEFAULT_BATCH_SIZE); inputs
            are read and sorted by length in windows of LENGTH_GROUP_WINDOW times this (times DEFAULT_BATCH_SIZE
            when None).
        truncate: cut inputs longer than the model's maximum (else raise DataError).
        loaded: an already loaded `LoadedModel` for `model` (skips loading).
        choice: the engine `Choice` that picked `loaded` (`load_model`'s), named in every record; None: "a model
            loaded by the caller".
        adapter: a peft adapter folder to run on `model` unmerged (`model` None: the adapter's own base).
        zero_shot_method: causal LM: "question" (the label as the answer) or "channel" (log P(text | label)).
        zero_shot_prompt: causal LM question, with {text} and optionally {labels}; None: the default.
        calibrate: causal LM: "auto" (over the inputs when they all fit in one window and number at least
            MIN_CALIBRATION_INPUTS, else content-free), "inputs" (estimated on the first window when there are
            more), "content-free" or "none".
        examples: causal LM few-shot: (text, label) rows; `shots` of each label go into each input's prompt.
        shots: examples per label (default DEFAULT_SHOTS when `examples` are given).
        example_selection: "fixed" (one seeded draw for all inputs), "random" (seeded per input) or "similar".
        seed: seed for the random example choice (None: 0).
        engine: auto|onnx|transformers: what runs a classifier or NLI model (auto: ONNX Runtime on the CPU where
            the model exports, see llmkit/engines/choose.py); causal LMs run on transformers.

    Returns:
        An iterator of `Classification`.

    Raises:
        UsageError: impossible settings, or a model that cannot do what was asked.
        DataError: an input too long with truncate=False.
    """
    from llmkit import zeroshot as zs

    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if min_score is not None and not 0 <= min_score <= 1:
        raise UsageError("--min-score must be in [0, 1]")
    if labels is not None and "{}" not in hypothesis_template:
        raise UsageError("--hypothesis-template needs a {} where the label goes, e.g. 'This example is {}.'")
    if adapter is not None and model is None and loaded is None:
        model, adapter = adapter, None  # the adapter names its base
    if zero_shot_method not in zs.ZERO_SHOT_METHODS:
        raise UsageError(f"unknown --zero-shot-method {zero_shot_method!r}; use {' or '.join(zs.ZERO_SHOT_METHODS)}")
    if calibrate not in zs.CALIBRATIONS:
        raise UsageError(f"unknown --calibrate {calibrate!r}; use one of {', '.join(zs.CALIBRATIONS)}")
    prompt = zs.DEFAULT_ZERO_SHOT_PROMPT if zero_shot_prompt is None else zero_shot_prompt
    zs.check_prompt(prompt)
    if shots is not None and shots < 0:
        raise UsageError("--shots must be 0 or more")
    if examples is not None and labels is not None:
        zs.check_examples(examples, labels)
    if loaded is not None:
        model = loaded.spec
    elif model is None:
        if labels is None:
            raise UsageError(
                "give --model (a text-classification model, e.g. a `llmkit finetune` output) "
                "or --labels a,b,c for zero-shot classification with the bundled model"
            )
        model = DEFAULT_ZERO_SHOT_MODEL
    from llmkit.engines import Choice

    if loaded is None:
        loaded, choice = load_model(model, engine=engine, device=device, dtype=dtype, revision=revision,
                                    allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, adapter=adapter)
    elif choice is None:
        choice = Choice(getattr(loaded.model, "engine", "transformers"), "a model loaded by the caller")
    on_onnx = getattr(loaded.model, "engine", None) == "onnx"
    if not on_onnx and str(loaded.device) == "cpu":
        from llmkit.threads import use_free_cores

        use_free_cores()
    causal = False
    if not on_onnx:
        from llmkit.tasks import CAUSAL_LM, head_of_architectures

        net = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model  # peft
        causal = head_of_architectures([type(net).__name__]) == CAUSAL_LM
    runner: _Runner
    if causal:
        if labels is None:
            raise UsageError(f"{model} is a causal LM: give --labels a,b,c to classify zero-shot")
        if multi_label:
            raise UsageError("--multi-label needs a classifier or an NLI model, not a causal LM")
        if zero_shot_method == "channel":
            if examples is not None:
                raise UsageError("--examples needs --zero-shot-method question (channel scoring has no prompt)")
            runner = _ChannelRunner(loaded, list(labels), truncate)
        else:
            picker = None
            if examples is not None:
                picker = zs.ExamplePicker(examples, list(labels), zs.DEFAULT_SHOTS if shots is None else shots,
                                          selection=example_selection, seed=seed)
            runner = _QuestionRunner(loaded, list(labels), truncate, prompt, calibrate, picker)
    elif examples is not None or zero_shot_prompt is not None:
        raise UsageError(f"--examples and --zero-shot-prompt need a causal LM; {model} is a classifier (for NLI "
                         "use --hypothesis-template)")
    elif labels is not None:
        runner = _NliRunner(loaded, list(labels), truncate, hypothesis_template, bool(multi_label))
    else:
        runner = _ClassifierRunner(loaded, truncate, multi_label)
    runner.choice = choice
    keep = None if all_scores else top_k
    window_size = (batch_size or DEFAULT_BATCH_SIZE) * LENGTH_GROUP_WINDOW
    batch = batch_size or (ONNX_BATCH_SIZE if on_onnx else DEFAULT_BATCH_SIZE)
    for number, (window, complete) in enumerate(_windows(inputs, window_size)):
        if number == 0:
            runner.begin(window, complete, batch)
        yield from runner.finish(window, runner.run(window, batch), keep, min_score)


def load_model(
    model: str,
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
    """The model `classify()` loads for these arguments, and the engine `Choice` its records name: what
    `classify()` runs itself, and what each `--executor ray` actor runs once to pass as `loaded=`/`choice=`.

    Args:
        model: alias, folder or hub id (`classify()` picks DEFAULT_ZERO_SHOT_MODEL when given labels and no model).
        engine: auto|onnx|transformers (llmkit/engines/choose.py `choose_encoder`).
        warn_fallback: say on stderr (once) when auto wanted ONNX Runtime and could not use it.

    Returns:
        (a `LoadedModel` or ONNX Runtime handle, the `Choice` that picked it).

    Raises:
        UsageError: a model without a classification or causal-LM head, or an --engine that cannot run it.
    """
    from llmkit import loading
    from llmkit.engines import choose

    onnx_loaded, choice = choose.load_chosen_encoder(
        model, SEQUENCE_CLASSIFICATION, engine=engine, device=device, dtype=dtype, adapter=adapter, revision=revision,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, warn_fallback=warn_fallback)
    if onnx_loaded is not None:
        return onnx_loaded, choice
    kind, _ = loading.model_heads(model, revision=revision, trust_remote_code=trust_remote_code, adapter=adapter)
    task = {"causal-lm": "causal-lm", "sequence-classification": "sequence-classification"}.get(kind)
    if task is None:
        raise UsageError(
            f"{model} has no classification head ({kind}); fine-tune it first (llmkit finetune), or use "
            "--labels with an NLI model or a causal LM"
        )
    return loading.load(model, task, device=device, dtype=dtype, revision=revision, allow_pickle=allow_pickle,
                        trust_remote_code=trust_remote_code, adapter=adapter), choice


def _windows(inputs: Iterable[str | tuple[str, str | None]], size: int) -> Iterator[tuple[list[tuple[int, str, str | None]], bool]]:
    """Windows of (index, text, pair), each with whether it is the last: a full window is handed on only when the
    next input exists (or the inputs end), so the first window knows whether it holds every input."""
    window: list[tuple[int, str, str | None]] = []
    for index, item in enumerate(inputs):
        if len(window) >= size:
            yield window, False
            window = []
        text, pair = (item, None) if isinstance(item, str) else item
        window.append((index, text, pair))
    if window:
        yield window, True


def _length_batches(items: list[Any], lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Positions of `items` in batches of similar length (longest first, so a memory error shows at once)."""
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class _Runner:
    method = ""

    def __init__(self, lm: Any, truncate: bool) -> None:
        from llmkit.scoring import max_input_tokens

        self.lm, self.net, self.tok = lm, lm.model, lm.tokenizer
        self.truncate = truncate
        self.max_tokens = max_input_tokens(self.net, self.tok)
        self.spec, self.base_spec = lm.spec, lm.base_spec  # an adapter as named, and its base
        self.multi = False
        self.onnx = getattr(self.net, "engine", None) == "onnx"
        self.choice: Any = None  # the engine Choice, set by classify(): every record says which engine ran

    def records(self) -> dict[str, Any]:
        """The fields every record carries: extras, the engine with its reason, and an adapter's base."""
        engine = {} if self.choice is None else {"engine": self.choice.engine, "engine_reason": self.choice.reason}
        return {**self.extras(), **engine, "base_model": self.base_spec}

    def begin(self, window: list[tuple[int, str, str | None]], complete: bool, batch_size: int) -> None:
        """Called with the first window before it runs; `complete`: it holds every input."""

    def extras(self) -> dict[str, Any]:
        """Fields every record of this runner carries (e.g. the calibration used)."""
        return {}

    def run(self, window: list[tuple[int, str, str | None]], batch_size: int) -> dict[int, tuple[list[tuple[str, float]], bool]]:
        """(label, score) pairs and the truncated flag for each non-empty input of the window, by index."""
        raise NotImplementedError

    def too_long(self, index: int, n: int) -> None:
        if not self.truncate:
            raise DataError(
                f"input {index + 1} has {n} tokens, more than the model's {self.max_tokens}; "
                "shorten it or drop --no-truncate"
            )

    def finish(
        self,
        window: list[tuple[int, str, str | None]],
        scored: dict[int, tuple[list[tuple[str, float]], bool]],
        keep: int | None,
        min_score: float | None,
    ) -> Iterator[Classification]:
        for index, text, pair in window:
            if index not in scored:
                yield Classification(text=text, label=None, score=None, scores=[], method=self.method,
                                     model=self.spec, pair=pair, error="empty input", **self.records())
                continue
            pairs, cut = scored[index]
            ranked = sorted(pairs, key=lambda p: -p[1])
            best_label, best = ranked[0]
            label = UNKNOWN if min_score is not None and best < min_score else best_label
            yield Classification(
                text=text,
                label=label,
                score=best,
                scores=[LabelScore(lbl, s) for lbl, s in (ranked if keep is None else ranked[:keep])],
                method=self.method,
                model=self.spec,
                pair=pair,
                active=[lbl for lbl, s in ranked if s >= MULTI_LABEL_THRESHOLD] if self.multi else None,
                truncated=cut,
                **self.records(),
            )

    def encode_many(self, items: list[tuple[int, str, str | None]]) -> list[tuple[dict[str, list[int]], bool]]:
        """`encode` for many inputs in one fast-tokenizer call (one Rust call for the window, not one per input:
        2.4x faster on 200 tweets); only the rare too-long inputs are encoded again, cut.

        Args:
            items: (input index, text, pair or None).

        Returns:
            (features, truncated) per item, in order.
        """
        if not items:
            return []
        texts = [t for _, t, _ in items]
        pairs = [p for _, _, p in items]
        has_pairs = any(p is not None for p in pairs)
        if has_pairs and not all(p is not None for p in pairs):
            return [self._encode_one(i, t, p) for i, t, p in items]  # mixed: the tokenizer wants all or none
        batch = self.tok(texts, pairs if has_pairs else None, return_attention_mask=False)
        keys = list(batch.keys())
        out: list[tuple[dict[str, list[int]], bool]] = []
        for row, (index, text, pair) in enumerate(items):
            features = {k: list(batch[k][row]) for k in keys}
            if len(features["input_ids"]) > self.max_tokens:
                out.append(self._encode_one(index, text, pair))
            else:
                out.append((features, False))
        return out

    def _encode_one(self, index: int, text: str, pair: str | None) -> tuple[dict[str, list[int]], bool]:
        """Model inputs (ids, segment ids) of a text (pair), cut to the model's maximum when allowed."""
        features = self.tok(text, pair, return_attention_mask=False)
        cut = len(features["input_ids"]) > self.max_tokens
        if cut:
            self.too_long(index, len(features["input_ids"]))
            # Pairs: cut the premise/text, keep the (short) hypothesis or second text whole when possible.
            short_pair = pair is not None and len(self.tok(pair)["input_ids"]) < self.max_tokens // 2
            features = self.tok(text, pair, truncation="only_first" if short_pair else "longest_first",
                                max_length=self.max_tokens, return_attention_mask=False)
        return {k: list(v) for k, v in features.items()}, cut

    def logits_many(self, groups: list[list[dict[str, list[int]]]]) -> list[Any]:
        """Classifier logits (float32 numpy) of several batches, each padded only to its own longest sequence;
        ONNX Runtime runs them on its worker threads."""
        if self.onnx:
            return list(self.net.many([pad_batch(features, self.tok, arrays="numpy") for features in groups]))
        import torch

        out = []
        for features in groups:
            batch = {k: v.to(self.lm.device) for k, v in pad_batch(features, self.tok).items()}
            with torch.inference_mode():
                out.append(self.net(**batch).logits.float().cpu().numpy())
        return out


def activate(logits: Any, activation: str) -> Any:
    """Scores from logits as the pipeline computes them (in numpy, float32): "softmax", "sigmoid" or "none"."""
    import numpy as np

    if not isinstance(logits, np.ndarray):
        logits = logits.float().cpu().numpy()
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


class _ClassifierRunner(_Runner):
    method = "classifier"

    def __init__(self, lm: Any, truncate: bool, multi_label: bool | None) -> None:
        super().__init__(lm, truncate)
        config = self.net.config
        self.names = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        problem = getattr(config, "problem_type", None)
        # The pipeline's rule: regression -> raw scores; multi-label or a single logit -> sigmoid; else softmax.
        if multi_label is not None:
            self.activation = "sigmoid" if multi_label else "softmax"
        elif problem == "regression":
            self.activation = "none"
        elif problem == "multi_label_classification" or config.num_labels == 1:
            self.activation = "sigmoid"
        else:
            self.activation = "softmax"
        self.multi = self.activation == "sigmoid" and config.num_labels > 1

    def run(self, window: list[tuple[int, str, str | None]], batch_size: int) -> dict[int, tuple[list[tuple[str, float]], bool]]:
        live = [(i, t, p) for i, t, p in window if t.strip()]
        encoded = self.encode_many(live)
        out: dict[int, tuple[list[tuple[str, float]], bool]] = {}
        batches = list(_length_batches(live, [len(e[0]["input_ids"]) for e in encoded], batch_size))
        groups = self.logits_many([[encoded[k][0] for k in positions] for positions in batches])
        for positions, logits in zip(batches, groups, strict=True):
            probs = activate(logits, self.activation)
            for row, k in enumerate(positions):
                out[live[k][0]] = ([(n, float(s)) for n, s in zip(self.names, probs[row].tolist(), strict=True)], encoded[k][1])
        return out


class _NliRunner(_Runner):
    method = "nli"

    def __init__(self, lm: Any, labels: list[str], truncate: bool, template: str, multi_label: bool) -> None:
        super().__init__(lm, truncate)
        label2id = {str(k).lower(): int(v) for k, v in (self.net.config.label2id or {}).items()}
        entail = [i for name, i in label2id.items() if name.startswith("entail")]
        if not entail:
            names = ", ".join(sorted(label2id)) or "none"
            raise UsageError(
                f"{self.spec} is a classifier without an 'entailment' label (labels: {names}), so it cannot do "
                "zero-shot --labels; drop --labels to use its own labels, or pick an NLI model"
            )
        self.entail = entail[0]
        self.contradiction = -1 if self.entail == 0 else 0  # the pipeline's choice
        self.labels, self.template = labels, template
        self.multi = multi_label or len(labels) == 1

    def run(self, window: list[tuple[int, str, str | None]], batch_size: int) -> dict[int, tuple[list[tuple[str, float]], bool]]:
        import numpy as np

        live = [(i, t) for i, t, _ in window if t.strip()]
        jobs = [(k, j) for k in range(len(live)) for j in range(len(self.labels))]
        encoded = self.encode_many([(live[k][0], live[k][1], self.template.format(self.labels[j])) for k, j in jobs])
        entail_logits = np.zeros((len(live), len(self.labels), 2), dtype=np.float32)
        batches = list(_length_batches(jobs, [len(e[0]["input_ids"]) for e in encoded], batch_size))
        groups = self.logits_many([[encoded[n][0] for n in positions] for positions in batches])
        for positions, logits in zip(batches, groups, strict=True):
            for row, n in enumerate(positions):
                k, j = jobs[n]
                entail_logits[k, j, 0] = logits[row, self.contradiction]
                entail_logits[k, j, 1] = logits[row, self.entail]
        if self.multi:
            probs = activate(entail_logits, "softmax")[..., 1]
        else:
            probs = activate(entail_logits[..., 1], "softmax")
        cut_any = [False] * len(live)
        for n, (k, _) in enumerate(jobs):
            cut_any[k] = cut_any[k] or encoded[n][1]
        return {
            index: (list(zip(self.labels, probs[k].tolist(), strict=True)), cut_any[k]) for k, (index, _) in enumerate(live)
        }


class _ChannelRunner(_Runner):
    """`--zero-shot-method channel`: log P(text | label), the text scored after "Label: <label>\nText:".

    The text's likelihood does not depend on how likely the label word itself is; with a uniform prior over
    labels, softmax over labels of log P(text | label) is the posterior. On real data it lost to the calibrated
    question on tweets and TREC questions and was level on SMS spam (benchmarks/quality_zeroshot.py), so it stays
    behind `--zero-shot-method channel`.
    """

    method = "causal-lm-channel"

    def __init__(self, lm: Any, labels: list[str], truncate: bool) -> None:
        from llmkit.scoring import start_ids

        super().__init__(lm, truncate)
        self.labels = labels
        pad = self.tok.pad_token_id
        self.pad_id = pad if pad is not None else (self.tok.eos_token_id or 0)
        self.contexts = [
            start_ids(self.tok) + self.tok(CHANNEL_PROMPT.format(label=label), add_special_tokens=False)["input_ids"]
            for label in labels
        ]
        self.room = self.max_tokens - max(len(c) for c in self.contexts)
        if self.room < 1:
            raise UsageError("--labels: a label is longer than the model's maximum input; use shorter labels")

    def run(self, window: list[tuple[int, str, str | None]], batch_size: int) -> dict[int, tuple[list[tuple[str, float]], bool]]:
        from llmkit.scoring import continuation_logprobs

        out: dict[int, tuple[list[tuple[str, float]], bool]] = {}
        pairs: list[tuple[list[int], list[int]]] = []
        live: list[tuple[int, bool]] = []
        for index, text, pair in window:
            if not text.strip():
                continue
            body = text if pair is None else f"{text}\n{pair}"
            ids = self.tok(" " + body, add_special_tokens=False)["input_ids"]
            cut = len(ids) > self.room
            if cut:
                self.too_long(index, len(ids) + self.max_tokens - self.room)
                ids = ids[: self.room]
            live.append((index, cut))
            pairs += [(context, ids) for context in self.contexts]
        scores = continuation_logprobs(self.net, pairs, pad_id=self.pad_id, device=self.lm.device,
                                       batch_size=batch_size) if pairs else []
        n = len(self.labels)
        for k, (index, cut) in enumerate(live):
            logps = scores[k * n : (k + 1) * n]
            peak = max(logps)
            total = sum(math.exp(v - peak) for v in logps)
            out[index] = ([(lbl, math.exp(v - peak) / total) for lbl, v in zip(self.labels, logps, strict=True)], cut)
        return out


class _QuestionRunner(_Runner):
    """The label as the answer to a question in the model's chat template, calibrated (see llmkit/zeroshot.py)."""

    method = "causal-lm"

    def __init__(self, lm: Any, labels: list[str], truncate: bool, template: str, calibrate: str,
                 picker: Any) -> None:
        from llmkit.zeroshot import PromptBuilder

        super().__init__(lm, truncate)
        self.labels, self.calibrate, self.picker = labels, calibrate, picker
        self.builder = PromptBuilder(self.tok, labels, template, self.max_tokens)
        self.prior: list[float] | None = None
        self.used = "none"

    def extras(self) -> dict[str, Any]:
        return {"calibration": self.used, "shots": 0 if self.picker is None else self.picker.shots}

    def logps(self, jobs: list[tuple[int, str]], batch_size: int) -> tuple[list[list[float]], list[bool]]:
        """log P(label | prompt) for (index, text) jobs; the index seeds the example choice."""
        from llmkit.zeroshot import score

        logps, cuts = score(self.lm, self.builder, jobs, picker=self.picker, batch_size=batch_size)
        for (index, text), cut in zip(jobs, cuts, strict=True):
            if cut:
                self.too_long(index, len(self.tok(text)["input_ids"]))
        return logps, cuts

    def begin(self, window: list[tuple[int, str, str | None]], complete: bool, batch_size: int) -> None:
        from llmkit.zeroshot import CONTENT_FREE_INPUTS, MIN_CALIBRATION_INPUTS, content_free_prior

        live = sum(1 for _, t, _ in window if t.strip())
        mode = self.calibrate
        if mode == "auto":
            mode = "inputs" if complete and live >= MIN_CALIBRATION_INPUTS else "content-free"
        if mode == "inputs" and live < 2:
            raise UsageError("--calibrate inputs needs at least 2 non-empty inputs; use --calibrate content-free")
        if mode == "content-free":
            # Negative indices: the content-free inputs draw their own examples, never an input's.
            cf, _ = self.logps([(-1 - k, t) for k, t in enumerate(CONTENT_FREE_INPUTS)], batch_size)
            self.prior = content_free_prior(cf)
        self.used = mode

    def run(self, window: list[tuple[int, str, str | None]], batch_size: int) -> dict[int, tuple[list[tuple[str, float]], bool]]:
        from llmkit.zeroshot import calibrated_probs, inputs_prior

        live = [(i, t if p is None else f"{t}\n{p}") for i, t, p in window if t.strip()]
        logps, cuts = self.logps(live, batch_size)
        if self.used == "inputs" and self.prior is None and logps:
            self.prior = inputs_prior(logps)  # the first window's estimate serves later windows too
        prior = self.prior if self.used != "none" else None
        return {
            index: (list(zip(self.labels, calibrated_probs(row, prior), strict=True)), cut)
            for (index, _), row, cut in zip(live, logps, cuts, strict=True)
        }


# --- evaluation ------------------------------------------------------------------------------------------------


# One metrics module (llmkit.metrics): classify --evaluate and the finetune/distill reports score alike.
ClassMetrics = metrics.ClassMetrics
Evaluation = metrics.Evaluation


def evaluate(gold: Sequence[str], predicted: Sequence[str], *, skipped: int = 0) -> Evaluation:
    """Accuracy, macro-F1 (over the union of gold and predicted labels), per-class scores and the confusion
    matrix: `metrics.evaluate`, kept here as the classify task's name for it.

    Args:
        gold: true labels.
        predicted: predicted labels, aligned with `gold`.
        skipped: how many inputs were left out (reported, not scored).

    Returns:
        An `Evaluation`.
    """
    return metrics.evaluate(gold, predicted, skipped=skipped)


def gold_label(value: Any, names: Sequence[str]) -> str | None:
    """A gold label as the model names it: label ids ("1", 1) become names when the model's labels are names."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    if text not in names and text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return names[int(text)]
    return text


# --- tables and evaluation for the command (columns fixed before the first input) -----------------------------


def output_labels(
    model: str | None,
    labels: Sequence[str] | None,
    multi_label: bool | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[list[str], bool]:
    """The labels a run will score and whether it is multi-label, known before any input is classified.

    A table written with --output takes its columns from these, so an empty first input cannot drop the
    score columns of every later row. Reads the config only (no weights).

    Args:
        model: the model spec (None: the bundled zero-shot model, which needs `labels`).
        labels: zero-shot candidate labels, or None for a classifier's own labels.
        multi_label: the --multi-label flag (None: from the model config).

    Returns:
        (label names in the model's order, multi-label).
    """
    from llmkit import loading
    from llmkit.engines import onnx, onnx_cache

    # A local folder's config.json, read as transformers reads labels and heads (no transformers import: the ONNX
    # engine's runs stay torch-free); anything else (hub ids, remote code) through transformers.
    folder = onnx.model_folder(model, revision) if model is not None else None
    plain = onnx_cache.read_json(folder / "config.json") if folder is not None else None
    light = plain is not None and not plain.get("auto_map") and onnx.head_of_config(plain) is not None
    if labels is not None:
        if len(labels) == 1 and model is not None and not multi_label:
            # An NLI model scores a single label on its own (entailment vs contradiction), as _NliRunner does;
            # a causal LM cannot, so only its head decides.
            if light:
                assert plain is not None
                return list(labels), onnx.head_of_config(plain) != "causal-lm"
            from llmkit.tasks import CAUSAL_LM, head_of

            return list(labels), head_of(loading.read_config(model, revision=revision,
                                                             trust_remote_code=trust_remote_code)) != CAUSAL_LM
        return list(labels), bool(multi_label)
    if model is None:
        return [], False
    if light:
        assert plain is not None
        config: Any = onnx.config_namespace(plain)
    else:
        config = loading.read_config(model, revision=revision, trust_remote_code=trust_remote_code)
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    multi = multi_label if multi_label is not None else getattr(config, "problem_type", None) == "multi_label_classification"
    return names, bool(multi)


def prediction_columns(result: Classification, label_names: Sequence[str], *, with_scores: bool, multi: bool) -> dict[str, Any]:
    """The columns a classify --output table appends to each input row: the same keys for every row."""
    columns: dict[str, Any] = {"prediction": result.label, "prediction_score": result.score}
    if with_scores:
        by_label = {item.label: item.score for item in result.scores}
        for name in label_names:
            columns[f"score_{name}"] = by_label.get(name)
    if multi:
        columns["active_labels"] = None if result.active is None else ",".join(result.active)
    columns["error"] = result.error  # always present, so every row has the same columns
    return columns


@dataclass
class GoldTracker:
    """Pairs each prediction with its gold label (from `label_column`) as results stream by, for --evaluate."""

    label_column: str | None
    label_names: list[str]
    gold: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    seen: int = 0

    def add(self, result: Classification, fields: dict[str, Any]) -> None:
        self.seen += 1
        if self.label_column is None or result.label is None:
            return
        if not self.label_names and result.scores:
            self.label_names = [s.label for s in result.scores]
        value = gold_label(fields.get(self.label_column), self.label_names)
        if value is not None:
            self.gold.append(value)
            self.predicted.append(result.label)

    def report(self) -> Evaluation:
        return evaluate(self.gold, self.predicted, skipped=self.seen - len(self.gold))
