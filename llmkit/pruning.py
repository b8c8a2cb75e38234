"""Width pruning as NVIDIA's Minitron does it: rank neurons and heads by their activations on calibration
texts, slice the weights to keep the most important, then (in `distill`) train the pruned student from the
unpruned teacher.

Importance, measured once on the unpruned model (Minitron's one-shot variant):
- a feed-forward neuron: the mean absolute value of its activation (the input of the down projection) over
  every real token of the calibration texts;
- an attention head: the mean L2 norm of its output (the head's slice of the attention output projection's
  input) over the same tokens. With grouped-query attention a key/value group is kept or dropped whole (the
  sum of its query heads' scores), so every kept key/value head keeps all its query heads.

Pruning is uniform across layers (each keeps the same count, its own most important), so the saved model is
a stock architecture with a smaller `intermediate_size` / `num_attention_heads` and reloads with
`from_pretrained`. Kept indices stay in their original order, so keeping everything changes nothing.
`config.llmkit_pruning` records what was kept.

Heads: Llama-like models only. transformers 5 BERT-like models derive the head size from
hidden_size / num_attention_heads and size the attention output as hidden x hidden (the `pruned_heads`
mechanism of transformers 4 is gone), so a BERT with fewer heads would not reload; prune their FFN width
and depth instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import UsageError

DEFAULT_CALIBRATION_TEXTS = 512  # Minitron ranks with 1024 samples; a few hundred suffice for a stable order
DEFAULT_CALIBRATION_BATCH = 16
DEFAULT_CALIBRATION_LENGTH = 128

# Attention layouts whose heads can be pruned: (q, k, v, o) sub-module names under one layer.
HEAD_LAYOUTS: tuple[tuple[str, str, str, str], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),  # Llama, Mistral, Qwen2
)


@dataclass
class Importance:
    """Per-layer importance scores measured on calibration texts.

    Attributes:
        ffn: one tensor per layer, shape (intermediate_size,): mean |activation| of each neuron.
        heads: one tensor per layer, shape (num_attention_heads,): mean L2 norm of each head's output;
            empty when the model's heads cannot be pruned.
        tokens: how many (non-padding) tokens the means are over.
        texts: how many calibration texts were used.
    """

    ffn: list[Any] = field(default_factory=list)
    heads: list[Any] = field(default_factory=list)
    tokens: int = 0
    texts: int = 0


def _layers(model: Any) -> tuple[str, Any]:
    from llmkit.student import find_layer_list

    return find_layer_list(model)


def ffn_projections(model: Any) -> list[tuple[list[str], str]]:
    """Per layer: the names of the up projections (rows = neurons) and of the down projection (columns).

    Raises:
        UsageError: the feed-forward layout is unknown or not made of nn.Linear.
    """
    import torch

    from llmkit.strategies import FFN_LAYOUTS, has_submodule

    list_name, layers = _layers(model)
    for layout in FFN_LAYOUTS:
        if all(has_submodule(layer, name) for layer in layers for name in layout):
            if not all(isinstance(layer.get_submodule(n), torch.nn.Linear) for layer in layers for n in layout):
                break
            return [([f"{list_name}.{i}.{n}" for n in layout[:-1]], f"{list_name}.{i}.{layout[-1]}")
                    for i in range(len(layers))]
    raise UsageError(
        f"--prune-ffn: cannot find nn.Linear feed-forward blocks in {type(model).__name__}; "
        "BERT- and Llama-like models are supported"
    )


def head_projections(model: Any) -> list[tuple[str, str, str, str]] | None:
    """Per layer: the (q, k, v, o) projection names when this model's heads can be pruned, else None."""
    list_name, layers = _layers(model)
    from llmkit.strategies import has_submodule

    for layout in HEAD_LAYOUTS:
        if all(has_submodule(layer, name) for layer in layers for name in layout):
            attention = layers[0].get_submodule(layout[0].rpartition(".")[0])
            if not hasattr(attention, "head_dim"):
                continue
            return [tuple(f"{list_name}.{i}.{n}" for n in layout) for i in range(len(layers))]  # type: ignore[misc]
    return None


def _head_counts(model: Any) -> tuple[int, int, int]:
    config = model.config
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv, head_dim


def calibration_batches(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = DEFAULT_CALIBRATION_BATCH,
    max_length: int = DEFAULT_CALIBRATION_LENGTH,
) -> Iterable[dict[str, Any]]:
    """Tokenized, padded batches of `texts` (attention masks mark the real tokens).

    Yields:
        dicts of tensors ready for `model(**batch)`.
    """
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoders often have no pad token; masks hide it anyway
    for start in range(0, len(texts), batch_size):
        yield tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )


def measure_importance(model: Any, batches: Iterable[dict[str, Any]], *, heads: bool = True) -> Importance:
    """Run the calibration batches through `model` and score every FFN neuron and attention head.

    Args:
        model: a BERT- or Llama-like transformers model (any head).
        batches: tokenized batches with attention masks (see `calibration_batches`).
        heads: also score heads (when the model's heads can be pruned).

    Returns:
        Importance (means over non-padding tokens).

    Raises:
        UsageError: an unknown layout, or no calibration tokens.
    """
    import torch

    ffn = ffn_projections(model)
    attention = head_projections(model) if heads else None
    n_heads, n_kv, head_dim = _head_counts(model)
    device = next(model.parameters()).device
    ffn_sums: list[Any] = [None] * len(ffn)
    head_sums: list[Any] = [None] * (len(attention) if attention else 0)
    state: dict[str, Any] = {}

    def ffn_hook(index: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            mask = state["mask"]
            values = args[0].detach().float().abs() * mask  # (b, s, I), padding zeroed
            total = values.sum(dim=(0, 1))
            ffn_sums[index] = total if ffn_sums[index] is None else ffn_sums[index] + total

        return hook

    def head_hook(index: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            mask = state["mask"]
            x = args[0].detach().float()
            norms = x.view(*x.shape[:2], n_heads, head_dim).norm(dim=-1) * mask  # (b, s, H)
            total = norms.sum(dim=(0, 1))
            head_sums[index] = total if head_sums[index] is None else head_sums[index] + total

        return hook

    handles = []
    for i, (_ups, down) in enumerate(ffn):
        handles.append(model.get_submodule(down).register_forward_pre_hook(ffn_hook(i)))
    for i, names in enumerate(attention or []):
        handles.append(model.get_submodule(names[3]).register_forward_pre_hook(head_hook(i)))
    was_training = model.training
    model.eval()
    tokens = texts = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                mask = batch["attention_mask"]
                state["mask"] = mask.unsqueeze(-1).float()
                tokens += int(mask.sum())
                texts += int(mask.shape[0])
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if tokens == 0:
        raise UsageError("pruning needs calibration texts; give a data file with some non-empty rows")
    return Importance(
        ffn=[s.cpu() / tokens for s in ffn_sums],
        heads=[s.cpu() / tokens for s in head_sums],
        tokens=tokens,
        texts=texts,
    )


def _kept_count(keep: float, total: int, what: str) -> int:
    if not 0 < keep <= 1:
        raise UsageError(f"{what}: the kept fraction must be in (0, 1], got {keep}")
    return max(1, min(total, round(keep * total)))


def _top(scores: Any, count: int) -> list[int]:
    """Indices of the `count` highest scores, in ascending index order (ties: the lower index wins)."""
    import torch

    order = torch.argsort(-scores, stable=True)[:count]
    return sorted(int(i) for i in order)


def _slice_linear(model: Any, name: str, index: Sequence[int], dim: int) -> None:
    """Replace the nn.Linear `name` by one with only `index` kept along `dim` (0: outputs, 1: inputs)."""
    import torch

    old = model.get_submodule(name)
    idx = torch.tensor(list(index), dtype=torch.long, device=old.weight.device)
    weight = old.weight.detach().index_select(dim, idx)
    bias = old.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, idx)
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    new.weight.requires_grad = old.weight.requires_grad
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def _record(model: Any, key: str, value: dict[str, Any], importance: Importance) -> None:
    record = dict(getattr(model.config, "llmkit_pruning", None) or {})
    record["method"] = "minitron-width: activation importance on calibration texts, uniform across layers"
    record["calibration"] = {"texts": importance.texts, "tokens": importance.tokens}
    record[key] = value
    model.config.llmkit_pruning = record


def prune_ffn(model: Any, keep: float, importance: Importance) -> list[list[int]]:
    """Keep the `keep` fraction of every layer's feed-forward neurons, the most important ones.

    Args:
        model: the model to prune in place (BERT- or Llama-like).
        keep: fraction of neurons kept, in (0, 1]; every layer keeps round(keep * intermediate_size).
        importance: from `measure_importance` on this model (before any pruning of its FFN).

    Returns:
        The kept neuron indices per layer. `config.intermediate_size` and `config.llmkit_pruning["ffn"]`
        are updated.

    Raises:
        UsageError: a bad fraction, an unknown layout, or importance measured on another model.
    """
    projections = ffn_projections(model)
    size = int(model.config.intermediate_size)
    if len(importance.ffn) != len(projections) or any(s.shape[0] != size for s in importance.ffn):
        raise UsageError("the importance scores do not match this model's feed-forward blocks; measure again")
    count = _kept_count(keep, size, "--prune-ffn")
    kept: list[list[int]] = []
    for (ups, down), scores in zip(projections, importance.ffn, strict=True):
        index = _top(scores, count)
        for name in ups:
            _slice_linear(model, name, index, dim=0)
        _slice_linear(model, down, index, dim=1)
        kept.append(index)
    model.config.intermediate_size = count
    _record(model, "ffn", {"keep": keep, "intermediate_size": [size, count], "kept": kept}, importance)
    return kept


def prune_heads(model: Any, keep: float, importance: Importance) -> list[list[int]]:
    """Keep the `keep` fraction of every layer's attention heads (whole key/value groups under GQA).

    Args:
        model: a Llama-like model to prune in place.
        keep: fraction of heads (of key/value groups, with GQA) kept, in (0, 1].
        importance: from `measure_importance` on this model.

    Returns:
        The kept query-head indices per layer. `num_attention_heads`, `num_key_value_heads`, `head_dim`
        (pinned, since hidden_size / heads no longer gives it) and `llmkit_pruning["heads"]` are updated.

    Raises:
        UsageError: BERT-like models (see the module docstring), a bad fraction, or mismatched importance.
    """
    projections = head_projections(model)
    if projections is None:
        raise _heads_refusal(model)
    heads, kv, head_dim = _head_counts(model)
    if len(importance.heads) != len(projections) or any(s.shape[0] != heads for s in importance.heads):
        raise UsageError("the importance scores do not match this model's attention heads; measure again")
    group = heads // kv
    count = _kept_count(keep, kv, "--prune-heads")
    kept: list[list[int]] = []
    for (q, k, v, o), scores in zip(projections, importance.heads, strict=True):
        group_scores = scores.view(kv, group).sum(dim=1)
        groups = _top(group_scores, count)
        query_heads = [g * group + j for g in groups for j in range(group)]

        def rows(units: list[int]) -> list[int]:
            return [u * head_dim + d for u in units for d in range(head_dim)]

        _slice_linear(model, q, rows(query_heads), dim=0)
        _slice_linear(model, k, rows(groups), dim=0)
        _slice_linear(model, v, rows(groups), dim=0)
        _slice_linear(model, o, rows(query_heads), dim=1)
        kept.append(query_heads)
    config = model.config
    config.head_dim = head_dim
    config.num_attention_heads = count * group
    config.num_key_value_heads = count
    # The attention modules read their group size once, at construction; it is unchanged (whole groups kept).
    for _q, _k, _v, o in projections:
        attention = model.get_submodule(o.rpartition(".")[0])
        if hasattr(attention, "num_key_value_groups"):
            attention.num_key_value_groups = group
    record = {"keep": keep, "num_attention_heads": [heads, count * group], "num_key_value_heads": [kv, count],
              "kept": kept}
    _record(model, "heads", record, importance)
    return kept


def _heads_refusal(model: Any) -> UsageError:
    return UsageError(
        f"--prune-heads works on Llama-like models; {type(model).__name__} derives its head size from "
        "hidden_size / num_attention_heads, so fewer heads would not reload. Use --prune-ffn and "
        "--student-layers for it"
    )


@dataclass(frozen=True)
class PruneResult:
    """What `prune` did.

    Attributes:
        ffn_kept: per-layer kept neuron indices, or None when the FFN was not pruned.
        heads_kept: per-layer kept head indices, or None.
        parameters_before, parameters_after: distinct parameter counts.
        calibration_texts: texts the importance was measured on.
    """

    ffn_kept: list[list[int]] | None
    heads_kept: list[list[int]] | None
    parameters_before: int
    parameters_after: int
    calibration_texts: int


def prune(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    ffn_keep: float | None = None,
    heads_keep: float | None = None,
    batch_size: int = DEFAULT_CALIBRATION_BATCH,
    max_length: int = DEFAULT_CALIBRATION_LENGTH,
) -> PruneResult:
    """Measure importance on `texts` once, then prune FFN width and/or heads in place.

    Args:
        model: the model (e.g. a layer-dropped student) to prune in place.
        tokenizer: its tokenizer.
        texts: calibration texts (a few hundred are plenty).
        ffn_keep: fraction of feed-forward neurons kept per layer (`--prune-ffn F` keeps 1 - F), or None.
        heads_keep: fraction of heads kept per layer (`--prune-heads F` keeps 1 - F), or None.
        batch_size, max_length: calibration batching.

    Returns:
        PruneResult.

    Raises:
        UsageError: nothing asked, bad fractions, unsupported layouts, no calibration text.
    """
    from llmkit.student import parameter_count

    if ffn_keep is None and heads_keep is None:
        raise UsageError("nothing to prune: give --prune-ffn and/or --prune-heads")
    if heads_keep is not None and head_projections(model) is None:
        raise _heads_refusal(model)  # before the calibration pass, not after it
    for fraction, what in ((ffn_keep, "--prune-ffn"), (heads_keep, "--prune-heads")):
        if fraction is not None:
            _kept_count(fraction, 1, what)
    before = parameter_count(model)
    batches = calibration_batches(tokenizer, [t for t in texts if t.strip()], batch_size=batch_size,
                                  max_length=max_length)
    importance = measure_importance(model, batches, heads=heads_keep is not None)
    ffn_kept = prune_ffn(model, ffn_keep, importance) if ffn_keep is not None else None
    heads_kept = prune_heads(model, heads_keep, importance) if heads_keep is not None else None
    return PruneResult(ffn_kept, heads_kept, before, parameter_count(model), importance.texts)
