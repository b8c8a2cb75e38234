"""The dynamic-int8 model format on disk: torch.ao dynamic int8 linears saved as safetensors, and rebuilt.

`llmkit quantize --method dynamic-int8` writes it (`save_dynamic_int8`); `loading.load` reads it back
(`load_dynamic_int8`). It lives apart from quantize.py so that loading a model never imports the quantize
command (which itself loads models): no import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.errors import ModelNotFoundError, UsageError

DYNAMIC_WEIGHTS = "model-dynamic-int8.safetensors"
# Non-quantized matrices of a dynamic-int8 model (embeddings, kept heads) are stored in bfloat16: halves their
# size on disk; they are widened to float32 when loaded. 1-D tensors (norms, biases) stay float32.
DYNAMIC_KEPT_STORAGE = "bfloat16"


def apply_dynamic_int8(model: Any, names: list[str]) -> None:
    """Swap the named nn.Linear modules for torch.ao dynamic int8 ones, in place (per-channel scales).

    Args:
        model: a torch module.
        names: dotted names of the nn.Linear modules to convert.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's deprecation notices (it points to torchao, which is slower here)
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)


def _dynamic_linear_cls() -> Any:
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def save_dynamic_int8(model: Any, folder: Path) -> None:
    """Write a dynamic-int8 model's weights to `folder/DYNAMIC_WEIGHTS` (safetensors: no pickle).

    Quantized linears become `<name>.qweight` (int8), `<name>.qscale`, `<name>.qzero` and `<name>.bias`;
    every other tensor is stored once (tied copies are re-tied by the model class on load).

    Args:
        model: a model after `apply_dynamic_int8`.
        folder: an existing folder to write into.
    """
    import torch
    from safetensors.torch import save_file

    qlinear = _dynamic_linear_cls()
    tensors: dict[str, Any] = {}
    quantized: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, qlinear):
            weight = module.weight()
            tensors[f"{name}.qweight"] = weight.int_repr().contiguous()
            tensors[f"{name}.qscale"] = weight.q_per_channel_scales().float().contiguous()
            tensors[f"{name}.qzero"] = weight.q_per_channel_zero_points().contiguous()
            bias = module.bias()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().float().contiguous()
            quantized.add(name)
    seen: set[int] = set()
    kept = getattr(torch, DYNAMIC_KEPT_STORAGE)
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor) or value.is_quantized or key.rsplit(".", 1)[0] in quantized:
            continue
        if "_packed_params" in key or value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        value = value.detach().cpu()
        if value.is_floating_point() and value.dim() >= 2:
            value = value.to(kept)
        tensors[key] = value.contiguous()
    save_file(tensors, str(folder / DYNAMIC_WEIGHTS), metadata={"format": "pt", "llmkit": "dynamic-int8"})


def load_dynamic_int8(auto_class: Any, config: Any, folder: Path, settings: dict[str, Any], *, device: str) -> Any:
    """Rebuild a dynamic-int8 model saved by `save_dynamic_int8` (called by loading.load for such folders).

    Args:
        auto_class: the transformers Auto class for the task.
        config: the model's config.
        folder: the folder `llmkit quantize` wrote.
        settings: its quantization settings (`quantized_modules` names the converted linears).
        device: must be "cpu".

    Returns:
        The model, with torch.ao dynamic int8 linears.

    Raises:
        UsageError: a device other than the CPU (torch.ao dynamic int8 kernels are CPU-only).
        ModelNotFoundError: weights missing from the folder.
    """
    import torch
    from safetensors.torch import load_file

    if device != "cpu":
        raise UsageError("a dynamic-int8 model runs on the CPU only (torch.ao kernels); use --device cpu")
    path = folder / DYNAMIC_WEIGHTS
    if not path.is_file():
        raise ModelNotFoundError(f"{folder} has no {DYNAMIC_WEIGHTS}; quantize the model again")
    names = list(settings.get("quantized_modules", []))
    state = load_file(str(path))
    model = auto_class.from_config(config, dtype=torch.float32)
    if (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    plain = {
        k: (v.float() if v.is_floating_point() else v)
        for k, v in state.items()
        if not k.endswith((".qweight", ".qscale", ".qzero")) and k.rsplit(".", 1)[0] not in names
    }
    missing, _ = model.load_state_dict(plain, strict=False)
    model.tie_weights()
    owned = {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    tied = set(getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or [])
    lost = [k for k in missing if k not in owned and k not in tied]
    if lost:
        raise ModelNotFoundError(f"{folder}: weights missing for {lost[:3]}; quantize the model again")
    apply_dynamic_int8(model, names)
    for name in names:
        module = model.get_submodule(name)
        qweight = torch._make_per_channel_quantized_tensor(
            state[f"{name}.qweight"], state[f"{name}.qscale"].double(), state[f"{name}.qzero"], 0
        )
        module.set_weight_bias(qweight, state.get(f"{name}.bias"))
    return model
