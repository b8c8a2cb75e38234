"""Students for distillation: the teacher with fewer layers, or another checkpoint checked against it.

A layer-dropped student keeps every k-th transformer layer of the teacher (DistilBERT's initialisation), with
the embeddings, final norm and task head copied as they are, so it starts close to the teacher rather than
from noise. Works for any model whose layers sit in one `nn.ModuleList` of `config.num_hidden_layers`
blocks (BERT-like encoders, Llama-like decoders).
"""

from __future__ import annotations

import copy
from typing import Any

from llmkit.errors import UsageError
from llmkit.losses import kept_layers

# Attributes of per-layer config lists that must shrink with the layer count (transformers 5 configs).
_PER_LAYER_CONFIG_LISTS = ("layer_types",)


def find_layer_list(model: Any) -> tuple[str, Any]:
    """The qualified name and the `nn.ModuleList` holding the model's `num_hidden_layers` transformer blocks.

    Raises:
        UsageError: the model's layers cannot be found (an architecture this builder does not know).
    """
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList)
        and count is not None
        and len(module) == count
        and len({type(m) for m in module}) == 1
    ]
    if not found:
        kind = type(model).__name__
        raise UsageError(f"cannot find the transformer layers of {kind}; pass a ready student with --student")
    # The shortest name is the outer stack (e.g. `bert.encoder.layer`, `model.layers`).
    return min(found, key=lambda item: len(item[0]))


def drop_layers(teacher: Any, num_layers: int) -> tuple[Any, list[int]]:
    """A student that keeps `num_layers` of the teacher's layers (every k-th), initialised from its weights.

    Args:
        teacher: a transformers model with `config.num_hidden_layers` blocks in one ModuleList.
        num_layers: how many layers the student keeps, 1..teacher layers.

    Returns:
        (student model in train mode, the kept teacher layer indices, 0-based). The student's config records
        them as `distilled_from_layers` so a saved student says where its weights came from.

    Raises:
        UsageError: an impossible layer count or an unknown layout.
    """
    import torch

    total = getattr(teacher.config, "num_hidden_layers", None)
    if total is None:
        raise UsageError("the teacher's config has no num_hidden_layers; pass a ready student with --student")
    if not 1 <= num_layers <= total:
        raise UsageError(f"--student-layers must be between 1 and the teacher's {total} layers")
    name, _ = find_layer_list(teacher)
    keep = kept_layers(total, num_layers)

    student = copy.deepcopy(teacher)
    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    old = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList([old[i] for i in keep]))
    # Decoder layers know their own index (KV cache slots); renumber them to their new position.
    for new_index, layer in enumerate(getattr(parent, attr)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index

    config = student.config
    config.num_hidden_layers = num_layers
    for list_name in _PER_LAYER_CONFIG_LISTS:
        values = getattr(config, list_name, None)
        if isinstance(values, list) and len(values) == total:
            setattr(config, list_name, [values[i] for i in keep])
    config.distilled_from_layers = keep
    student.train()
    return student, keep


def check_compatible(teacher: Any, teacher_tok: Any, student: Any, student_tok: Any, task: str) -> None:
    """Refuse a student that cannot learn from this teacher: another vocabulary or another label set.

    Raises:
        UsageError: naming what differs.
    """
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise UsageError(
            "the student's tokenizer differs from the teacher's; pick a student from the same family "
            "or use --student-layers N"
        )
    if task == "classification":
        t_labels = {int(k): v for k, v in teacher.config.id2label.items()}
        s_labels = {int(k): v for k, v in student.config.id2label.items()}
        if t_labels != s_labels:
            raise UsageError(
                f"the student's labels {sorted(s_labels.values())} differ from the teacher's "
                f"{sorted(t_labels.values())}; give the student the same label set"
            )
    elif teacher.get_output_embeddings().weight.shape[0] != student.get_output_embeddings().weight.shape[0]:
        raise UsageError("the student's output vocabulary size differs from the teacher's")


def parameter_count(model: Any) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
