"""Which parameters a fine-tuning run trains: feed-forward-only freezing and the peft strategies.

- `--train-only ffn`: the feed-forward block of every transformer layer (BERT-like: `intermediate.dense` and
  `output.dense`, not the attention output; Llama-like: `mlp.gate_proj/up_proj/down_proj`) plus the task head;
  embeddings, attention and norms stay frozen. The head stays trainable because a classification head is new
  and random: frozen, it would make the run learn features for a classifier that never moves. A causal LM's
  head is tied to the input embeddings and counts as embeddings (frozen).
- `--strategy lora|prompt-tuning|prefix-tuning`: a peft model (`build_peft_model`). Prompt tuning learns
  `num_virtual_tokens` input embeddings put before the text; prefix tuning learns keys and values for every
  layer's attention. Both for sequence classification and causal LM (peft has no masked-LM task type).

No torch or peft at import time: `llmkit --help` must stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.errors import MissingDependencyError, UsageError

STRATEGIES = ("full", "lora", "prompt-tuning", "prefix-tuning")
PROMPT_STRATEGIES = ("prompt-tuning", "prefix-tuning")
DEFAULT_NUM_VIRTUAL_TOKENS = 20  # the prompt-tuning paper's shortest prompt that came close to its best
DEFAULT_LORA_R = 8
DEFAULT_LORA_ALPHA = 16  # alpha/r = 2, the LoRA paper's usual scale
DEFAULT_LORA_DROPOUT = 0.05

# Feed-forward sub-modules of one transformer layer, per architecture family; the first layout whose every
# name exists in every layer wins. BERT's `attention.output.dense` is the attention's projection, not FFN.
FFN_LAYOUTS: tuple[tuple[str, ...], ...] = (
    ("intermediate.dense", "output.dense"),  # BERT, RoBERTa, MiniLM, ELECTRA
    ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2, SmolLM
    ("ffn.lin1", "ffn.lin2"),  # DistilBERT
    ("mlp.fc1", "mlp.fc2"),  # Phi, OPT-like
    ("mlp.c_fc", "mlp.c_proj"),  # GPT-2
)

# peft task types by llmkit finetune task; masked-lm has none (LoRA still works there, without a task type).
_PEFT_TASKS = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


@dataclass(frozen=True)
class TrainableCount:
    """How much of a model a run trains.

    Attributes:
        trainable: parameters with requires_grad (tied weights counted once).
        total: all distinct parameters, adapters included.
        share: trainable / total, 0..1.
    """

    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def describe(self) -> str:
        """`12,345 / 22,713,216 trainable (0.05%)`."""
        return f"{self.trainable:,} / {self.total:,} trainable ({self.share:.2%})"


def count_trainable(model: Any) -> TrainableCount:
    """Trainable and total parameter counts, each parameter counted once (tied embeddings share one tensor).

    Args:
        model: any torch module (a peft model included).

    Returns:
        TrainableCount.
    """
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return TrainableCount(trainable, total)


def ffn_modules(model: Any) -> list[tuple[str, Any]]:
    """The feed-forward sub-modules of every transformer layer, as (qualified name, module).

    Args:
        model: a transformers model whose layers sit in one ModuleList of `config.num_hidden_layers` blocks.

    Returns:
        [(name, module)], layer by layer, in the order of the matching `FFN_LAYOUTS` entry.

    Raises:
        UsageError: no known feed-forward layout in this architecture.
    """
    from llmkit.student import find_layer_list

    try:
        list_name, layers = find_layer_list(model)
    except UsageError:
        layers = None
    if layers is not None:
        for layout in FFN_LAYOUTS:
            if all(has_submodule(layer, name) for layer in layers for name in layout):
                return [
                    (f"{list_name}.{i}.{name}", layer.get_submodule(name))
                    for i, layer in enumerate(layers)
                    for name in layout
                ]
    kind = type(model).__name__
    raise UsageError(
        f"--train-only ffn: cannot find the feed-forward blocks of {kind}; use --train-only head|top-N "
        "or --strategy lora"
    )


def has_submodule(module: Any, name: str) -> bool:
    """True when `module.get_submodule(name)` exists (e.g. "mlp.gate_proj" under a layer)."""
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def head_parameters(model: Any) -> list[Any]:
    """Parameters of the task head: everything outside `model.base_model` that is not tied to a weight inside
    it (a causal LM's tied output embedding counts as the embedding, not as a head)."""
    base = getattr(model, "base_model", model)
    if base is model:
        return []
    inside = {id(p) for p in base.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


def train_only_ffn(model: Any, *, train_head: bool = True) -> TrainableCount:
    """Freeze everything but the feed-forward blocks of every layer (and, by default, the task head).

    Args:
        model: a BERT-like or Llama-like transformers model (see FFN_LAYOUTS).
        train_head: keep the task head trainable (a new classification head must learn; see module docstring).

    Returns:
        The trainable count after freezing.

    Raises:
        UsageError: the architecture's feed-forward blocks are unknown.
    """
    modules = ffn_modules(model)
    for p in model.parameters():
        p.requires_grad = False
    for _name, module in modules:
        for p in module.parameters():
            p.requires_grad = True
    if train_head:
        for p in head_parameters(model):
            p.requires_grad = True
    return count_trainable(model)


def _layer_list(base: Any) -> Any:
    """The longest ModuleList of transformer blocks in the base model (encoder.layer, model.layers, ...)."""
    import torch

    best = None
    for _name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (_name, module)
    return best


def train_only_head(model: Any, top_layers: int | None = None) -> TrainableCount:
    """Freeze everything but the task head (and, for top-N, the last N blocks plus what follows them).

    The head is every parameter outside `model.base_model`; "what follows" the blocks is the base model's
    final norm/pooler, which sit between the top block and the head.

    Args:
        model: a transformers model with a task head.
        top_layers: N for `--train-only top-N`; None for the head alone.

    Returns:
        The trainable count after freezing.

    Raises:
        UsageError: no layer list, or more layers asked than the model has.
    """
    base = model.base_model
    base_ids = {id(p) for p in base.parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) not in base_ids
    if top_layers is None:
        return count_trainable(model)
    found = _layer_list(base)
    if found is None:
        raise UsageError("--train-only top-N: this model has no list of layers to pick the top of")
    name, layers = found
    if top_layers > len(layers):
        raise UsageError(f"--train-only top-{top_layers}: the model has only {len(layers)} layers")
    for layer in list(layers)[-top_layers:]:
        for p in layer.parameters():
            p.requires_grad = True
    embeddings = {id(p) for p in base.get_input_embeddings().parameters()}
    in_layers = {id(p) for p in layers.parameters()}
    for pname, p in base.named_parameters():
        # after the blocks: final norm, pooler. Embedding-side modules (position/type embeddings, their norm)
        # come before and stay frozen.
        if id(p) in in_layers or id(p) in embeddings or "embed" in pname:
            continue
        p.requires_grad = True
    return count_trainable(model)


def peft_task_type(task: str, strategy: str) -> Any:
    """The peft TaskType for an llmkit task, or None (LoRA on masked-lm).

    Raises:
        UsageError: prompt/prefix tuning for a task peft cannot run them on.
    """
    from peft import TaskType

    name = _PEFT_TASKS.get(task)
    if name is None and strategy in PROMPT_STRATEGIES:
        raise UsageError(
            f"--strategy {strategy} works for classification, regression and causal-lm, not {task}; "
            "use --strategy lora or --train-only"
        )
    return TaskType[name] if name else None


def build_peft_model(
    model: Any,
    strategy: str,
    task: str,
    *,
    num_virtual_tokens: int | None = None,
    lora_r: int | None = None,
    lora_alpha: int | None = None,
    lora_dropout: float | None = None,
    lora_targets: tuple[str, ...] = (),
) -> Any:
    """Wrap `model` for a peft strategy; only the adapter (and a classification head) is trainable.

    Args:
        model: a transformers model loaded for `task`.
        strategy: "lora", "prompt-tuning" or "prefix-tuning".
        task: llmkit finetune task ("classification", "regression", "causal-lm", "masked-lm").
        num_virtual_tokens: prompt length for prompt/prefix tuning (default DEFAULT_NUM_VIRTUAL_TOKENS).
        lora_r, lora_alpha, lora_dropout, lora_targets: LoRA settings (defaults above; targets "all-linear").

    Returns:
        The peft model (PeftModelForSequenceClassification, PeftModelForCausalLM or PeftModel).

    Raises:
        UsageError: an unknown strategy, a setting that does not belong to it, or a model peft refuses.
        MissingDependencyError: peft is not installed.
    """
    if strategy not in STRATEGIES or strategy == "full":
        raise UsageError(f"unknown peft --strategy {strategy!r}; use lora, prompt-tuning or prefix-tuning")
    if num_virtual_tokens is not None and strategy not in PROMPT_STRATEGIES:
        raise UsageError("--num-virtual-tokens needs --strategy prompt-tuning or prefix-tuning")
    lora_given = any(v is not None for v in (lora_r, lora_alpha, lora_dropout)) or bool(lora_targets)
    if lora_given and strategy != "lora":
        raise UsageError(f"--lora-* settings belong to --strategy lora, not {strategy}")
    if num_virtual_tokens is not None and num_virtual_tokens < 1:
        raise UsageError("--num-virtual-tokens must be >= 1")
    try:
        import peft
    except ImportError:
        raise MissingDependencyError(f"--strategy {strategy} needs peft: pip install 'llmkit[train]'") from None

    task_type = peft_task_type(task, strategy)
    if strategy == "lora":
        config: Any = peft.LoraConfig(
            r=lora_r or DEFAULT_LORA_R,
            lora_alpha=lora_alpha if lora_alpha is not None else DEFAULT_LORA_ALPHA,
            lora_dropout=lora_dropout if lora_dropout is not None else DEFAULT_LORA_DROPOUT,
            target_modules=list(lora_targets) if lora_targets else "all-linear",
            task_type=task_type,
        )
    elif strategy == "prompt-tuning":
        config = peft.PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS
        )
    else:
        config = peft.PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS
        )
    if strategy == "prefix-tuning":
        accept_prefix_cache(model)
    try:
        return peft.get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        hint = " (check --lora-targets)" if strategy == "lora" else ""
        raise UsageError(f"--strategy {strategy}: {str(exc).splitlines()[0]}{hint}") from None


def accept_prefix_cache(model: Any) -> None:
    """Let peft's prefix tuning reach a transformers 5 model whose forward calls its KV cache `cache`.

    peft (0.21) checks the model's forward signature for `past_key_values`, which transformers 5 renamed to
    `cache`; without that name it refuses sequence classifiers ("Model does not support past key values").
    This gives this one model instance a forward that takes `past_key_values` and passes it on as `cache`,
    so the model's own head and loss run unchanged. Models that still take `past_key_values` are left alone.

    Args:
        model: the transformers model (before or after peft wrapping; the unwrapped one is patched).
    """
    import inspect

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(target.forward).parameters
    backbone = getattr(target, "base_model", target)
    # A task model often takes `cache` only through **kwargs, which it hands to its backbone.
    takes_cache = "cache" in params or "cache" in inspect.signature(backbone.forward).parameters
    if "past_key_values" in params or not takes_cache:
        return
    original = target.forward

    # Not functools.wraps: inspect.signature would follow __wrapped__ back to the `cache` signature.
    def forward(*args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return original(*args, **kwargs)

    # The original parameters plus `past_key_values`: the Trainer keeps only dataset columns that the
    # forward signature names (input_ids, labels...), so they must stay visible.
    original_params = list(params.values())
    extra = inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)
    where = next((i for i, p in enumerate(original_params) if p.kind == inspect.Parameter.VAR_KEYWORD),
                 len(original_params))
    forward.__signature__ = inspect.signature(target.forward).replace(  # type: ignore[attr-defined]
        parameters=[*original_params[:where], extra, *original_params[where:]]
    )
    target.forward = forward
