"""Write a llama-family causal LM (weights, byte-level BPE tokenizer) as a GGUF file for llama.cpp / Ollama.

Written with the `gguf` package (ggml-org's own reader/writer, which transformers' GGUF loader uses too). The
layout mirrors llama.cpp's `convert_hf_to_gguf.py` for LlamaForCausalLM: tensor names from `gguf`'s own name
map
(`blk.N.attn_q.weight`, ...), Q/K rows permuted into llama.cpp's rotary order, 1-D tensors kept in F32, and
the tokenizer as `tokenizer.ggml.*` metadata (model "gpt2": tokens, types, merges, special ids, chat
template).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.kquants import PRESETS

# --gguf-type -> ggml tensor type and the matching general.file_type (names as llama.cpp's `llama-quantize`).
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "f16": ("F16", "MOSTLY_F16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    # K-quants, encoded by llama.cpp's ggml (kquants.py) with llama.cpp's per-tensor mix; first item: base type.
    **{name: (preset.base, preset.file_type) for name, preset in PRESETS.items()},
}
DEFAULT_GGUF_TYPE = "q8_0"
# The token embedding (also the output head when tied) is the most quantization-sensitive matrix and llama.cpp
# keeps it at higher precision in its 4/5-bit presets; Q8_0 is the best type gguf-py can encode for it.
EMBEDDING_FLOOR = "Q8_0"
SUPPORTED_MODEL_TYPES = ("llama", "mistral")
# llama.cpp picks its pre-tokenizer regex from tokenizer.ggml.pre; "smollm" and "gpt-2" are names it knows
# (it refuses "gpt2", the name of the tokenizer *model*).
TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED, TOKEN_TYPE_UNUSED = 1, 3, 4, 5


def _permute(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's rotary layout for Q/K rows (the inverse of transformers' `_reverse_permute_weights`)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def check_exportable(config: Any) -> None:
    """Refuse models this writer cannot describe to llama.cpp, with the alternative to use.

    Raises:
        UsageError: not a llama-family causal LM, or one with biases / rope scaling the writer does not carry.
    """
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UsageError(
            f"--method gguf writes llama-family causal LMs only (this model is {model_type}); "
            "use --method dynamic-int8 or int8-weight instead"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UsageError(
            "--method gguf: this llama model has attention/MLP biases, which the writer does not carry"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UsageError(f"--method gguf: rope type {rope.get('rope_type')!r} is not supported by the writer")


def _tokenizer_metadata(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """tokenizer.ggml.* values for a byte-level BPE tokenizer (llama.cpp's "gpt2" tokenizer model)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UsageError("--method gguf needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    pre = json.dumps(spec.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise UsageError(
            f"--method gguf writes byte-level BPE tokenizers (GPT-2/Llama-3/SmolLM style); this one is "
            f"{model.get('type', '?')}; use --method dynamic-int8 or int8-weight instead"
        )
    vocab: dict[str, int] = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:  # the embedding has more rows than the tokenizer has tokens: llama.cpp's padding
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_TYPE_UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(TOKEN_TYPE_CONTROL if added[token].special else TOKEN_TYPE_USER_DEFINED)
        else:
            tokens.append(token)
            types.append(TOKEN_TYPE_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tokenizer("a")["input_ids"]
    meta: dict[str, Any] = {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": "smollm" if '"Digits"' in pre else "gpt-2",
        "add_bos": bool(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    for name in ("bos", "eos", "unk", "pad"):
        meta[f"{name}_id"] = getattr(tokenizer, f"{name}_token_id", None)
    return meta


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    *,
    gguf_type: str = DEFAULT_GGUF_TYPE,
    name: str = "",
    imatrix: dict[str, Any] | None = None,
) -> Path:
    """Write `model` + `tokenizer` to `path` (.gguf), through a temporary file renamed into place.

    Args:
        model: a loaded transformers LlamaForCausalLM (any float dtype; written from float32).
        tokenizer: its fast byte-level BPE tokenizer.
        path: the .gguf file to write.
        gguf_type: one of GGUF_TYPES; 2-D weights whose rows do not split into the type's blocks stay F16
            (K-quant presets: llama.cpp's per-tensor mix and fallbacks, see kquants.tensor_type).
        name: general.name.
        imatrix: optional importances per transformers weight name (kquants.compute_imatrix); quantized
            weights found in it are encoded by ggml with them.

    Returns:
        `path`.

    Raises:
        UsageError: an unsupported model or tokenizer, or an unknown type.
        MissingDependencyError: a K-quant type (or an imatrix) without llama.cpp's ggml to encode it (exit 4).
    """
    import gguf

    from llmkit import kquants

    if gguf_type not in GGUF_TYPES:
        raise UsageError(f"unknown --gguf-type {gguf_type!r}; use one of {', '.join(GGUF_TYPES)}")
    if gguf_type in PRESETS or imatrix:
        kquants.require()  # before any work: exit 4 with the install hint
    config = model.config
    check_exportable(config)
    qtype = gguf.GGMLQuantizationType[GGUF_TYPES[gguf_type][0]]
    floor = gguf.GGMLQuantizationType[EMBEDDING_FLOOR]
    n_layers = config.num_hidden_layers
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = getattr(config, "rope_parameters", None) or {}
    tok = _tokenizer_metadata(tokenizer, config.vocab_size)

    from llmkit import tempnames

    journal = tempnames.journal_dir()  # a killed write's temporary is found by `models --clean`
    with tempnames.replacing(path, suffix=".tmp", journal=journal) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or getattr(config, "_name_or_path", "") or "model")
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
        writer.add_file_type(gguf.LlamaFileType[GGUF_TYPES[gguf_type][1]])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tok["pre"])
        writer.add_token_list(tok["tokens"])
        writer.add_token_types(tok["types"])
        writer.add_token_merges(tok["merges"])
        writer.add_add_bos_token(tok["add_bos"])
        writer.add_add_space_prefix(False)
        for key, add in (
            ("bos_id", writer.add_bos_token_id),
            ("eos_id", writer.add_eos_token_id),
            ("unk_id", writer.add_unk_token_id),
            ("pad_id", writer.add_pad_token_id),
        ):
            if tok[key] is not None:
                add(int(tok[key]))
        if tok["chat_template"]:
            writer.add_chat_template(tok["chat_template"])

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp (and transformers) reuse token_embd.weight when output.weight is absent
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise UsageError(
                    f"--method gguf: no GGUF name for tensor {hf_name}; this model is not plain llama"
                )
            data = tensor.detach().to("cpu").float().numpy()
            if gguf_name.endswith("attn_q.weight"):
                data = _permute(data, n_head, n_head)
            elif gguf_name.endswith("attn_k.weight"):
                data = _permute(data, n_head, n_kv)
            importance = (imatrix or {}).get(hf_name)
            if gguf_type in PRESETS:
                wanted = "F32"
                if data.ndim == 2:
                    wanted = kquants.tensor_type(gguf_name, data.shape[-1], gguf_type, n_layers=n_layers, tied=tied)
                array, raw_type = _encode_as(data, wanted, importance)
            else:
                array, raw_type = _encode(data, gguf_name, qtype, floor, importance)
            writer.add_tensor(gguf_name, array, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _encode_as(data: Any, type_name: str, importance: Any = None) -> tuple[Any, Any]:
    """(array, ggml type) of one tensor in the given type; quantized ones through llama.cpp's ggml."""
    import gguf
    import numpy as np

    from llmkit import kquants

    if type_name == "F32":
        return np.ascontiguousarray(data, dtype=np.float32), gguf.GGMLQuantizationType.F32
    if type_name == "F16":
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return kquants.quantize(data, type_name, importance), gguf.GGMLQuantizationType[type_name]


def _encode(data: Any, gguf_name: str, qtype: Any, floor: Any, importance: Any = None) -> tuple[Any, Any]:
    """(array, ggml type) of one tensor: 1-D in F32, embeddings at least `floor`, misfit rows in F16."""
    import gguf
    import numpy as np

    F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    if data.ndim < 2:
        return np.ascontiguousarray(data, dtype=np.float32), F32
    wanted = qtype
    if gguf_name.startswith(("token_embd", "output.")) and qtype not in (F16, floor):
        wanted = floor
    if wanted == F16:
        return data.astype(np.float16), F16
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if data.shape[-1] % block:
        return data.astype(np.float16), F16  # rows too short for this block size: llama.cpp's fallback too
    if importance is not None:  # gguf-py has no importance-weighted quantizer; ggml does
        return _encode_as(data, wanted.name, importance)
    return gguf.quants.quantize(np.ascontiguousarray(data), wanted), wanted
