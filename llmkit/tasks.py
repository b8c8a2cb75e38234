"""One set of task names and one detector: which head a checkpoint carries, read from its config.

Every command asks the same question ("what was this model made for?") and gets the same answer here:
`head_of(config)` looks each name in the config's `architectures` up in transformers' own auto-mappings
(`MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES`, `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, ...), so that
`GPT2LMHeadModel` is a causal LM although its name does not end in `ForCausalLM`.

Two vocabularies, bridged by `load_task`:
- heads (what `loading.load` builds): causal-lm, seq2seq-lm, masked-lm, sequence-classification, base;
- training tasks (what finetune/distill do): classification, regression, causal-lm, masked-lm.

`*ForPreTraining` (BERT's MLM + next-sentence head, ELECTRA's discriminator, ...) is one answer everywhere:
masked-lm when the model type has a masked-LM class (its MLM head loads into `AutoModelForMaskedLM`),
causal-lm when it only has a causal-LM class (GPT-2's pretraining class is its LM head), else base.

Importing this module is torch-free; transformers is imported inside `head_of`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmkit.errors import UsageError

CAUSAL_LM = "causal-lm"
SEQ2SEQ_LM = "seq2seq-lm"
MASKED_LM = "masked-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
BASE = "base"
HEADS = (CAUSAL_LM, SEQ2SEQ_LM, MASKED_LM, SEQUENCE_CLASSIFICATION, BASE)

CLASSIFICATION = "classification"
REGRESSION = "regression"
TRAINING_TASKS = (CLASSIFICATION, REGRESSION, CAUSAL_LM, MASKED_LM)

# The head a training task loads (regression is a one-output sequence-classification head).
_LOAD_TASK = {
    CLASSIFICATION: SEQUENCE_CLASSIFICATION,
    REGRESSION: SEQUENCE_CLASSIFICATION,
    CAUSAL_LM: CAUSAL_LM,
    MASKED_LM: MASKED_LM,
}
# Fallback for architectures the installed transformers does not list (remote code, newer models).
_SUFFIXES = (
    ("ForSequenceClassification", SEQUENCE_CLASSIFICATION),
    ("ForCausalLM", CAUSAL_LM),
    ("LMHeadModel", CAUSAL_LM),
    ("ForMaskedLM", MASKED_LM),
)


def _names(mapping: Any) -> set[str]:
    out: set[str] = set()
    for value in mapping.values():
        out.update([value] if isinstance(value, str) else value)
    return out


def _mappings() -> dict[str, Any]:
    from transformers.models.auto import modeling_auto as auto

    return {
        SEQUENCE_CLASSIFICATION: auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        CAUSAL_LM: auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MASKED_LM: auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        SEQ2SEQ_LM: auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
        "pretraining": auto.MODEL_FOR_PRETRAINING_MAPPING_NAMES,
    }


def head_of_architectures(architectures: Iterable[str], model_type: str | None = None,
                          is_encoder_decoder: bool = False) -> str:
    """The head named by a config's `architectures` (see `head_of`)."""
    maps = _mappings()
    archs = list(architectures)
    for head in (SEQUENCE_CLASSIFICATION, CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM):
        if any(arch in _names(maps[head]) for arch in archs):
            return head
    pretraining = any(arch in _names(maps["pretraining"]) or arch.endswith("ForPreTraining") for arch in archs)
    if pretraining:
        if model_type in maps[MASKED_LM]:
            return MASKED_LM
        if model_type in maps[CAUSAL_LM]:
            return CAUSAL_LM
        return BASE
    for arch in archs:
        for suffix, head in _SUFFIXES:
            if arch.endswith(suffix):
                return head
    if is_encoder_decoder and any(arch.endswith("ForConditionalGeneration") for arch in archs):
        return SEQ2SEQ_LM
    return BASE


def head_of(config: Any) -> str:
    """The head a checkpoint carries, from its transformers config (no weights read).

    Args:
        config: a `transformers.PretrainedConfig` (or anything with `architectures`/`model_type`).

    Returns:
        One of HEADS. A config that names no architecture is `base`, except an encoder-decoder config,
        which is `seq2seq-lm` (what `AutoModelForSeq2SeqLM` loads).
    """
    archs = list(getattr(config, "architectures", None) or [])
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    if not archs:
        return SEQ2SEQ_LM if encoder_decoder else BASE
    return head_of_architectures(archs, getattr(config, "model_type", None), encoder_decoder)


def family_of(config: Any) -> str:
    """What finetune can train a checkpoint as: its head when it has one of causal-lm, masked-lm or
    sequence-classification; otherwise (a base encoder, a seq2seq model) masked-lm when its model type has a
    masked-LM class (BERT-like encoders), else causal-lm."""
    head = head_of(config)
    if head in (CAUSAL_LM, MASKED_LM, SEQUENCE_CLASSIFICATION):
        return head
    return MASKED_LM if getattr(config, "model_type", None) in _mappings()[MASKED_LM] else CAUSAL_LM


def load_task(task: str) -> str:
    """The head to load for a training task (classification/regression -> sequence-classification).

    Raises:
        UsageError: an unknown task.
    """
    if task not in _LOAD_TASK:
        raise UsageError(f"unknown task {task!r}; use one of {', '.join(TRAINING_TASKS)}")
    return _LOAD_TASK[task]


def training_task(head: str) -> str | None:
    """The training task a head was trained for (sequence-classification -> classification), or None for base
    and seq2seq models, which finetune/distill do not train."""
    return {SEQUENCE_CLASSIFICATION: CLASSIFICATION, CAUSAL_LM: CAUSAL_LM, MASKED_LM: MASKED_LM}.get(head)


def require_generator(head: str, spec: str) -> None:
    """Refuse to generate with a model that has no generating head (a masked LM, a classifier, an encoder).

    Raises:
        UsageError: exit 2, naming the head and the command that fits it.
    """
    if head in (CAUSAL_LM, SEQ2SEQ_LM):
        return
    fits = {MASKED_LM: "llmkit fill-mask", SEQUENCE_CLASSIFICATION: "llmkit classify"}.get(head, "llmkit classify")
    raise UsageError(
        f"{spec} is a {head} model and cannot generate text; use {fits} with it, "
        "or pick a causal or seq2seq LM for generate"
    )
