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

from llmkit.errors import UsageError
from llmkit.loading import (  # reading and loading adapters is loading.py's job; re-exported for callers here
    ADAPTER_CONFIG,
    ADAPTER_EXTRAS,
    PEFT_KINDS,
    AdapterInfo,
    check_adapter_task,
    is_adapter_dir,
    load_adapter,
    read_adapter,
)

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_EXTRAS", "AdapterInfo", "GenerationInputs", "check_adapter_task", "generation_inputs",
    "is_adapter_dir", "load_adapter", "merge_adapter", "prompt_adapter_config", "read_adapter",
    "refuse_unmergeable", "save_adapter",
]

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
        kind = PEFT_KINDS.get(str(config.peft_type.value), str(config.peft_type.value).lower())
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
