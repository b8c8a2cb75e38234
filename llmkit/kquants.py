"""K-quants (Q4_K, Q5_K, Q6_K) for the GGUF writer, encoded by llama.cpp's own ggml code.

The `gguf` package encodes no K-quant, but the llama.cpp bindings (`xllamacpp`, the `llmkit[llama]` extra) link
ggml statically and export its C entry point `ggml_quantize_chunk`: the same function `llama-quantize` calls, so
the blocks are byte-for-byte what llama.cpp would write. We call it through ctypes on the loaded extension, after
checking that the symbol exists and that its type table agrees with gguf-py's (a wheel built from a ggml whose
type ids moved must not write garbage).

The `_m`/`_s` presets are llama.cpp's per-tensor mix (`llama_tensor_get_type` in `src/llama-quant.cpp`): the
output head (or the token embedding when it is tied to the head) in Q6_K, `attn_v` and `ffn_down` in Q6_K on the
layers `use_more_bits` picks, the rest in the preset's base type; a tensor whose rows do not split into 256-value
super-blocks falls back to Q5_0/Q5_1/Q8_0 as llama.cpp does.

An importance matrix (per input column, the mean square of the activations that reach each matmul, measured on a
calibration text) makes ggml weigh the rounding error of the columns that matter most; `compute_imatrix()`
measures it through transformers with forward hooks, as llama.cpp's `llama-imatrix` does through ggml.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from llmkit.errors import MissingDependencyError, UsageError

BINDINGS_MODULE = "xllamacpp.xllamacpp"  # the extension module that carries ggml
INSTALL_HINT = 'pip install "llmkit[llama]" (or: make install-llama)'
QK_K = 256  # values per K-quant super-block: rows must be a multiple of this


@dataclass(frozen=True)
class Preset:
    """One --gguf-type K-quant preset: llama.cpp's file type, base tensor type and mix rules."""

    file_type: str  # gguf.LlamaFileType member
    base: str  # gguf.GGMLQuantizationType member most tensors get


PRESETS: dict[str, Preset] = {
    "q4_k_m": Preset("MOSTLY_Q4_K_M", "Q4_K"),
    "q4_k_s": Preset("MOSTLY_Q4_K_S", "Q4_K"),
    "q5_k_m": Preset("MOSTLY_Q5_K_M", "Q5_K"),
    "q5_k_s": Preset("MOSTLY_Q5_K_S", "Q5_K"),
    "q6_k": Preset("MOSTLY_Q6_K", "Q6_K"),
}
# llama.cpp's tensor_type_fallback(): a K type whose 256-value super-blocks do not fit a row -> a 32-block type.
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# Rows per ggml_quantize_chunk call when spreading a tensor over threads (ctypes releases the GIL).
ROWS_PER_CHUNK = 64
IMATRIX_MAX_TOKENS = 8192  # calibration tokens read for an importance matrix (16 forward passes of 512)

_LAYER = re.compile(r"^blk\.(\d+)\.")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, and every third in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_type(name: str, n_per_row: int, preset: str, *, n_layers: int, tied: bool) -> str:
    """The ggml type llama.cpp's `llama-quantize` gives one 2-D weight in a K-quant preset.

    Args:
        name: the GGUF tensor name (`token_embd.weight`, `blk.3.attn_v.weight`, `output.weight`, ...).
        n_per_row: values per row (the input dimension, ggml's ne[0]).
        preset: a key of PRESETS.
        n_layers: transformer blocks in the model (llama.cpp counts attn_v / ffn_down tensors; one per block).
        tied: the model has no separate output.weight, so token_embd doubles as the output head.

    Returns:
        A gguf.GGMLQuantizationType member name: Q4_K, Q5_K, Q6_K, Q5_0, Q5_1, Q8_0 or F16.
    """
    if preset not in PRESETS:
        raise UsageError(f"unknown K-quant preset {preset!r}; use one of {', '.join(PRESETS)}")
    base = PRESETS[preset].base
    new = base
    match = _LAYER.match(name)
    layer = int(match.group(1)) if match else 0
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        # The output head is the most sensitive matrix: Q6_K, or Q8_0 when its rows do not fit super-blocks.
        new = "Q8_0" if n_per_row % QK_K else "Q6_K"
    elif name == "token_embd.weight":
        new = base
    elif "attn_v.weight" in name:
        if preset in ("q4_k_m", "q5_k_m") and use_more_bits(layer, n_layers):
            new = "Q6_K"
        elif preset == "q4_k_s" and layer < 4:
            new = "Q5_K"
    elif "ffn_down" in name:
        if preset in ("q4_k_m", "q5_k_m") and use_more_bits(layer, n_layers):
            new = "Q6_K"
        elif preset == "q4_k_s" and layer < n_layers // 8:
            new = "Q5_K"
    return fallback(new, n_per_row)


def fallback(qtype: str, n_per_row: int) -> str:
    """llama.cpp's fallback for rows that do not split into `qtype`'s blocks (F16 when even 32 does not fit)."""
    block = QK_K if qtype.endswith("_K") else 32
    if n_per_row % block == 0:
        return qtype
    qtype = FALLBACK.get(qtype, qtype)
    return qtype if n_per_row % 32 == 0 else "F16"


# --- ggml through ctypes ----------------------------------------------------------------------------------------


_LIB: Any = None


def _open(path: str) -> Any:
    """dlopen the extension: the process already holds it when xllamacpp was imported, so this is cheap."""
    return ctypes.CDLL(path)


def require() -> Any:
    """The ggml symbols of the llama.cpp bindings, checked against gguf-py's type table (loaded once).

    Raises:
        MissingDependencyError: bindings not installed, or a build without `ggml_quantize_chunk` (exit 4).
    """
    global _LIB
    if _LIB is not None:
        return _LIB
    spec = importlib.util.find_spec(BINDINGS_MODULE) if importlib.util.find_spec("xllamacpp") else None
    if spec is None or not spec.origin:
        raise MissingDependencyError(f"K-quant GGUF types need the llama.cpp bindings; install them: {INSTALL_HINT}")
    try:
        lib = _open(spec.origin)
        quantize = lib.ggml_quantize_chunk
        validate = lib.ggml_validate_row_data
        block_size, type_size, type_name = lib.ggml_blck_size, lib.ggml_type_size, lib.ggml_type_name
    except (OSError, AttributeError) as err:
        raise MissingDependencyError(
            f"this build of the llama.cpp bindings does not export ggml_quantize_chunk ({err}); K-quant GGUF "
            f"types need one that does: {INSTALL_HINT}, or use --gguf-type q8_0|q5_0|q4_0"
        ) from None
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    validate.restype = ctypes.c_bool
    validate.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    block_size.restype, block_size.argtypes = ctypes.c_int64, [ctypes.c_int]
    type_size.restype, type_size.argtypes = ctypes.c_size_t, [ctypes.c_int]
    type_name.restype, type_name.argtypes = ctypes.c_char_p, [ctypes.c_int]

    import gguf

    for name in ("Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q5_0", "Q5_1"):
        qtype = gguf.GGMLQuantizationType[name]
        ours = (type_name(int(qtype)) or b"").decode().upper(), block_size(int(qtype)), type_size(int(qtype))
        if ours != (name, *gguf.GGML_QUANT_SIZES[qtype]):
            raise MissingDependencyError(
                f"the llama.cpp bindings' ggml numbers type {int(qtype)} as {ours}, gguf-py as "
                f"{(name, *gguf.GGML_QUANT_SIZES[qtype])}: upgrade both (pip install -U gguf xllamacpp)"
            )
    _LIB = lib
    return lib


def available() -> bool:
    """True when K-quants can be encoded here (bindings installed, symbol exported, type tables agree)."""
    try:
        require()
    except MissingDependencyError:
        return False
    return True


def quantize(data: Any, qtype: str, imatrix: Any = None, *, threads: int | None = None) -> Any:
    """Encode a float32 matrix in one ggml block type with llama.cpp's quantizer.

    Args:
        data: numpy array, 2-D (rows x n_per_row); n_per_row a multiple of the type's block size.
        qtype: a gguf.GGMLQuantizationType member name that ggml quantizes (Q4_K, Q5_K, Q6_K, Q8_0, Q5_0, ...).
        imatrix: optional numpy array of n_per_row importances (mean squared activation per input column).
        threads: worker threads (default: the CPU count); each quantizes a slice of rows.

    Returns:
        numpy uint8 array (rows x bytes per row), the layout gguf.GGUFWriter.add_tensor takes with raw_dtype.

    Raises:
        UsageError: rows that do not split into the type's blocks, or an imatrix of the wrong length.
        MissingDependencyError: no usable ggml (exit 4).
    """
    import gguf
    import numpy as np

    lib = require()
    ggml_type = gguf.GGMLQuantizationType[qtype]
    block, type_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    src = np.ascontiguousarray(data, dtype=np.float32)
    if src.ndim != 2:
        src = src.reshape(-1, src.shape[-1])
    rows, n_per_row = src.shape
    # ggml asserts nothing here: a misfit row would write past the buffer, so check before calling.
    if n_per_row % block:
        raise UsageError(f"{qtype} needs rows of a multiple of {block} values (these have {n_per_row})")
    weights = None
    if imatrix is not None:
        weights = np.ascontiguousarray(imatrix, dtype=np.float32)
        if weights.shape != (n_per_row,) or not np.isfinite(weights).all():
            raise UsageError(f"importance matrix of shape {weights.shape} for rows of {n_per_row}: recompute it")
    row_bytes = n_per_row // block * type_bytes
    dst = np.empty((rows, row_bytes), dtype=np.uint8)
    imatrix_ptr = weights.ctypes.data if weights is not None else None

    def run(start: int) -> int:
        count = min(ROWS_PER_CHUNK, rows - start)
        return int(
            lib.ggml_quantize_chunk(
                int(ggml_type), src.ctypes.data, dst.ctypes.data, start * n_per_row, count, n_per_row, imatrix_ptr
            )
        )

    starts = range(0, rows, ROWS_PER_CHUNK)
    workers = max(1, min(threads or os.cpu_count() or 1, len(starts)))
    if workers == 1:
        written = sum(run(s) for s in starts)
    else:
        with ThreadPoolExecutor(workers) as pool:
            written = sum(pool.map(run, starts))
    if written != dst.nbytes or not lib.ggml_validate_row_data(int(ggml_type), dst.ctypes.data, dst.nbytes):
        raise RuntimeError(f"ggml wrote {written} of {dst.nbytes} bytes of {qtype}, or invalid blocks")
    return dst


# --- importance matrix ------------------------------------------------------------------------------------------


def calibration_ids(tokenizer: Any, texts: Iterable[str], max_tokens: int = IMATRIX_MAX_TOKENS) -> list[int]:
    """The token ids an importance matrix is measured on: the texts joined by blank lines, cut at `max_tokens`."""
    return list(tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"][:max_tokens])


def compute_imatrix(
    model: Any, tokenizer: Any, texts: Iterable[str], *, context: int = 512, max_tokens: int = IMATRIX_MAX_TOKENS
) -> dict[str, Any]:
    """Mean squared input activation per column of every Linear weight, over a calibration text.

    Args:
        model: a transformers causal LM (llama family).
        tokenizer: its tokenizer.
        texts: calibration text (joined with blank lines, then cut into `context`-token windows).
        context: tokens per forward pass.
        max_tokens: stop after this many tokens.

    Returns:
        {transformers parameter name (`model.layers.0.self_attn.q_proj.weight`): float32 numpy array of
        in_features}, the values llama.cpp's `llama-imatrix` computes (its sum of squares over its count).

    Raises:
        UsageError: the text has no tokens.
    """
    import torch

    ids = calibration_ids(tokenizer, texts, max_tokens)
    if not ids:
        raise UsageError("the calibration text for --imatrix is empty; give a text file with some paragraphs")
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str) -> Any:
        def collect(_module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sq = (x * x).sum(dim=0)
            sums[name] = sq if name not in sums else sums[name] + sq
            counts[name] = counts.get(name, 0) + x.shape[0]

        return collect

    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(hook(f"{module_name}.weight")))
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), context):
                window = torch.tensor([ids[start : start + context]], device=model.device)
                model(input_ids=window)
    finally:
        for handle in hooks:
            handle.remove()
    return {name: (sums[name] / counts[name]).cpu().numpy() for name in sums}
