"""peft adapters at inference: find an adapter's base, load base + adapter unmerged, merge LoRA for quantize.

An adapter folder is what a peft run saves (`adapter_config.json` + `adapter_model.safetensors`, and from
`llmkit finetune` the tokenizer and `llmkit_adapter.json` with the labels). Its base is
`base_model_name_or_path`, resolved like any `--model` spec (alias, folder, hub id), or the `--model` given
beside `--adapter`.

Prompt and prefix adapters cannot use peft's own `generate` here: with transformers 5 (which renamed the KV
cache argument `past_key_values` to `cache`) peft 0.21 loses the prefix from the first new token and the
prompt from the second (measured against a no-cache greedy loop, tests/test_adapters.py).
`generation_inputs` builds the virtual tokens itself and hands them to the base model's `generate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import MissingDependencyError, ModelNotFoundError, UsageError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_EXTRAS = "llmkit_adapter.json"  # what peft does not save: the labels and the base spec as typed

# peft's names -> llmkit's --strategy names
_KINDS = {"LORA": "lora", "PROMPT_TUNING": "prompt-tuning", "PREFIX_TUNING": "prefix-tuning"}
# peft task type -> loading.TASKS
_LOAD_TASKS = {"SEQ_CLS": "sequence-classification", "CAUSAL_LM": "causal-lm", "SEQ_2_SEQ_LM": "seq2seq-lm"}


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter folder says about itself.

    Attributes:
        path: the folder.
        kind: "lora", "prompt-tuning", "prefix-tuning", or peft's own type name lower-cased for others.
        base: the base model spec (adapter_config's base_model_name_or_path, or llmkit's record of the spec).
        task_type: peft's task type ("SEQ_CLS", "CAUSAL_LM", ...) or None.
        num_virtual_tokens: prompt length of a prompt/prefix adapter, else None.
        id2label: the classifier's labels when llmkit wrote them, else None.
    """

    path: Path
    kind: str
    base: str | None
    task_type: str | None
    num_virtual_tokens: int | None
    id2label: dict[int, str] | None = None

    @property
    def is_prompt_learning(self) -> bool:
        """Prompt/prefix adapters add virtual tokens; they have no weight delta to merge."""
        return self.num_virtual_tokens is not None

    @property
    def load_task(self) -> str | None:
        """The loading.TASKS name the base must be loaded as, when the adapter's task type fixes it."""
        return _LOAD_TASKS.get(self.task_type or "")


def is_adapter_dir(path: str | Path) -> bool:
    """True for a folder that holds a peft adapter (adapter_config.json)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file()


def read_adapter(path: str | Path) -> AdapterInfo:
    """Read an adapter folder's config (and llmkit's extras) without loading any weights.

    Args:
        path: the adapter folder.

    Returns:
        AdapterInfo.

    Raises:
        ModelNotFoundError: no adapter_config.json there.
        UsageError: an unreadable config.
    """
    folder = Path(path).expanduser()
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ModelNotFoundError(f"{path} has no {ADAPTER_CONFIG}: not a peft adapter folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        extras_path = folder / ADAPTER_EXTRAS
        extras = json.loads(extras_path.read_text(encoding="utf-8")) if extras_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: the adapter config is unreadable ({exc}); save the adapter again") from exc
    if not isinstance(config, dict) or not isinstance(extras, dict):
        raise UsageError(f"{config_path} is not a JSON object; save the adapter again")
    peft_type = str(config.get("peft_type") or "")
    virtual = config.get("num_virtual_tokens")
    labels = extras.get("id2label")
    return AdapterInfo(
        path=folder,
        kind=_KINDS.get(peft_type, peft_type.lower() or "unknown"),
        base=extras.get("base") or config.get("base_model_name_or_path"),
        task_type=config.get("task_type"),
        num_virtual_tokens=int(virtual) if virtual is not None and peft_type in ("PROMPT_TUNING", "PREFIX_TUNING")
        else None,
        id2label={int(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None,
    )


def save_adapter(
    peft_model: Any, folder: Path, *, base_spec: str, id2label: dict[int, str] | None = None
) -> None:
    """Save a peft model's adapter so that `load_adapter` finds its base and labels again.

    Args:
        peft_model: the trained peft model.
        folder: the output folder (the caller makes it atomic).
        base_spec: the base as the user gave it (an alias stays an alias rather than a site-packages path).
        id2label: the classifier's labels, for sequence classification.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for config in peft_model.peft_config.values():
        config.base_model_name_or_path = base_spec
    peft_model.save_pretrained(str(folder))
    extras: dict[str, Any] = {"base": base_spec}
    if id2label:
        extras["id2label"] = {str(k): v for k, v in id2label.items()}
    (folder / ADAPTER_EXTRAS).write_text(json.dumps(extras, indent=2) + "\n", encoding="utf-8")


def _head_size(folder: Path) -> int | None:
    """Rows of a saved classification head (peft keeps it under modules_to_save), for adapters without labels."""
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.endswith(("classifier.weight", "score.weight", "classifier.out_proj.weight")):
                return int(f.get_slice(key).get_shape()[0])
    return None


def check_task(info: AdapterInfo, task: str) -> None:
    """Refuse an adapter trained for another task than the command's.

    Raises:
        UsageError: e.g. a classifier adapter given to generate.
    """
    if task == "masked-lm" and info.is_prompt_learning:
        # peft has no masked-LM task type to train one with, and the mask positions would shift under it.
        raise UsageError(f"{info.path} is a {info.kind} adapter; fill-mask runs LoRA adapters only")
    wanted = info.load_task
    if wanted is None or task in ("base",):
        return
    same = task == wanted or (task == "text-generation" and wanted in ("causal-lm", "seq2seq-lm"))
    if not same:
        raise UsageError(f"{info.path} is a {wanted} adapter; it cannot run as {task}")


def load_adapter(
    adapter_dir: str | Path,
    task: str,
    *,
    base: str | None = None,
    **load_options: Any,
) -> Any:
    """Load an adapter's base model and the adapter on top of it, unmerged.

    Args:
        adapter_dir: the adapter folder.
        task: a loading.TASKS name for the base ("sequence-classification", "causal-lm", ...).
        base: the base spec; None reads it from the adapter (`base_model_name_or_path`).
        load_options: passed to `loading.load` (device, dtype, revision, allow_pickle, ...).

    Returns:
        loading.LoadedModel whose `model` is the peft model (eval mode) and whose tokenizer is the adapter
        folder's when it has one (finetune saves it there), else the base's.

    Raises:
        UsageError: no base known, a task mismatch, or an adapter that does not fit the base.
        ModelNotFoundError: the base or the adapter cannot be found.
        MissingDependencyError: peft is not installed.
    """
    from llmkit import loading

    info = read_adapter(adapter_dir)
    check_task(info, task)
    base_spec = base or info.base
    if not base_spec:
        raise UsageError(
            f"{adapter_dir} does not name its base model; pass --model BASE --adapter {adapter_dir}"
        )
    try:
        from peft import PeftModel
    except ImportError:
        raise MissingDependencyError("loading a peft adapter needs peft: pip install 'llmkit[train]'") from None

    model_kwargs = dict(load_options.pop("model_kwargs", None) or {})
    if task == "sequence-classification":
        labels = info.id2label
        size = len(labels) if labels else _head_size(info.path)
        if labels:
            model_kwargs.update(
                num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}
            )
        elif size:
            model_kwargs.update(num_labels=size)
    try:
        loaded = loading.load(base_spec, task, model_kwargs=model_kwargs, **load_options)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"the base of adapter {adapter_dir}: {exc.message}") from exc
    if info.kind == "prefix-tuning":
        from llmkit.strategies import accept_prefix_cache

        accept_prefix_cache(loaded.model)
    try:
        model = PeftModel.from_pretrained(loaded.model, str(info.path), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"adapter {adapter_dir} does not fit base {base_spec} ({first[:200]})") from exc
    model.to(loaded.device)
    model.eval()
    tokenizer = loaded.tokenizer
    if (info.path / "tokenizer_config.json").is_file():
        tokenizer = loading.load_tokenizer(loading.ModelSource(str(info.path), "dir", str(info.path)))
    notes = [*loaded.notes, f"{info.kind} adapter {info.path} on base {base_spec} (not merged)"]
    from dataclasses import replace

    return replace(loaded, model=model, tokenizer=tokenizer, notes=notes)


def refuse_unmergeable(info: AdapterInfo) -> None:
    """For quantize: only LoRA-like adapters have weight deltas that fold into the base.

    Raises:
        UsageError (exit 2): a prompt or prefix adapter, naming what to do instead.
    """
    if info.is_prompt_learning:
        raise UsageError(
            f"{info.path} is a {info.kind} adapter: it adds {info.num_virtual_tokens} virtual tokens at run time "
            "and has no weights to merge, so it cannot be quantized; quantize its base model, or train with "
            "--strategy lora"
        )


def merge_adapter(peft_model: Any) -> Any:
    """Fold a LoRA adapter into its base weights: a plain transformers model (for quantize, export).

    Args:
        peft_model: a peft model holding a LoRA-like adapter.

    Returns:
        The merged base model (the peft wrappers removed).

    Raises:
        UsageError: a prompt/prefix adapter (nothing to merge).
    """
    config = peft_model.active_peft_config
    if getattr(config, "is_prompt_learning", False):
        kind = _KINDS.get(str(config.peft_type.value), str(config.peft_type.value).lower())
        raise UsageError(
            f"a {kind} adapter adds virtual tokens at run time and has no weights to merge; "
            "quantize its base model, or train with --strategy lora"
        )
    return peft_model.merge_and_unload()


@dataclass(frozen=True)
class GenerationInputs:
    """What to call `generate` on, and with what, for a model that may carry a prompt/prefix adapter.

    Attributes:
        model: the model whose `generate` to call (the base model for prompt/prefix adapters).
        kwargs: input_ids/inputs_embeds, attention_mask and, for a prefix adapter, the prefix `cache`.
        echoes_prompt: True when generate's output starts with the prompt ids (not with inputs_embeds).
    """

    model: Any
    kwargs: dict[str, Any]
    echoes_prompt: bool


def prompt_adapter_config(model: Any) -> Any:
    """The active prompt-learning peft config of `model`, or None (no adapter, or a LoRA one)."""
    config = getattr(model, "active_peft_config", None)
    return config if getattr(config, "is_prompt_learning", False) else None


def generation_inputs(model: Any, input_ids: Any, attention_mask: Any) -> GenerationInputs:
    """Inputs for `generate` that keep a prompt/prefix adapter's virtual tokens at every step.

    Prompt tuning: the learned embeddings go before the text's as `inputs_embeds` (as peft's training forward
    does). Prefix tuning: the learned keys/values become the starting KV cache. The attention mask grows by
    the virtual tokens in both. Other models pass through unchanged.

    Args:
        model: a transformers model or a peft model.
        input_ids, attention_mask: the tokenized prompts (batch, length).

    Returns:
        GenerationInputs.
    """
    import torch

    config = prompt_adapter_config(model)
    if config is None:
        return GenerationInputs(model, {"input_ids": input_ids, "attention_mask": attention_mask}, True)
    batch, virtual = input_ids.shape[0], config.num_virtual_tokens
    base = model.get_base_model()
    ones = torch.ones(batch, virtual, dtype=attention_mask.dtype, device=attention_mask.device)
    mask = torch.cat([ones, attention_mask], dim=1)
    prompt = model.get_prompt(batch_size=batch)
    if config.peft_type.value == "PREFIX_TUNING":
        return GenerationInputs(base, {"input_ids": input_ids, "attention_mask": mask, "cache": prompt}, True)
    embeds = base.get_input_embeddings()(input_ids)
    embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
    return GenerationInputs(base, {"inputs_embeds": embeds, "attention_mask": mask}, False)
