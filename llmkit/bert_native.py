"""BERT sequence classifiers in plain torch, for `llmkit classify`: no transformers import on the way.

`from transformers import BertForSequenceClassification` costs 5-6 s in a fresh process on the 2-core machines
(torch.distributed.tensor, torch._dynamo, torchao and the quantizer registry come with it), more than the model
work of classifying 1,000 tweets with a 3-layer student. A BERT classifier is small enough to run directly: the
weights come from model.safetensors, the tokenizer from tokenizer.json through the `tokenizers` library, and the
forward pass is the textbook one (embeddings, then per layer attention -> add & norm -> GELU FFN -> add & norm,
then the pooler and the classifier), with one fused QKV product and SDPA per layer.

Used only where it gives the same answers as transformers: a local folder whose config.json names
BertForSequenceClassification with absolute positions and an exact-GELU (or ReLU) FFN, a single
model.safetensors file, a tokenizer.json, and no quantization or adapter. Everything else (hub ids, other
architectures, quantized folders) loads through transformers as before. Parity with
`AutoModelForSequenceClassification` and `AutoTokenizer` is pinned by tests/test_bert_native.py, on a tiny
model and on the bundled MiniLM. `LLMKIT_NATIVE=0` turns the path off.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llmkit.engines import NATIVE_ENV, NOT_NATIVE_FILES, native_enabled  # noqa: F401 (NATIVE_ENV: tests)
from llmkit.errors import ModelNotFoundError

ARCHITECTURE = "BertForSequenceClassification"
ACTIVATIONS = ("gelu", "relu")  # transformers' "gelu" is the exact (erf) GELU
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")  # transformers uses tokenizer.json as is


def native_folder(spec: str) -> Path | None:
    """The folder of `spec` when it is a BERT classifier this module runs exactly as transformers does, else None.

    Reads config.json only; anything unusual (other architectures, relative positions, remote code, sharded or
    pickle weights, quantized folders, adapters) returns None so that transformers loads it.
    """
    if not native_enabled():
        return None
    from llmkit import loading

    try:
        source = loading.resolve(spec)
    except Exception:  # noqa: BLE001 - loading reports bad specs with its own messages
        return None
    if source.kind != "dir":
        return None
    folder = Path(source.location)
    if not (folder / WEIGHTS).is_file() or not (folder / TOKENIZER).is_file():
        return None
    if any((folder / name).exists() for name in NOT_NATIVE_FILES) or (folder / loading.QUANTIZATION_SETTINGS).exists():
        return None
    config = _read_json(folder / "config.json")
    if config is None or not _tokenizer_as_transformers_builds_it(folder):
        return None
    plain = (
        config.get("model_type") == "bert"
        and config.get("architectures") == [ARCHITECTURE]
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act", "gelu") in ACTIVATIONS
        and not config.get("is_decoder", False)
        and not config.get("add_cross_attention", False)
        and not config.get("auto_map")
        and not config.get("quantization_config")
        and not config.get("pruned_heads")
        and config.get("problem_type") in (None, "single_label_classification", "multi_label_classification",
                                           "regression")
    )
    return folder if plain else None


def _tokenizer_as_transformers_builds_it(folder: Path) -> bool:
    """Whether tokenizer.json, used as it is, tokenizes as transformers 5's BertTokenizer does.

    A generic fast tokenizer (PreTrainedTokenizerFast) is tokenizer.json as it is. BertTokenizer takes only the
    vocabulary from tokenizer.json and rebuilds the rest from tokenizer_config.json: a BertNormalizer from do_lower_case / strip_accents / tokenize_chinese_chars, the BertPreTokenizer, a
    WordPiece with default settings and the "[CLS] $A [SEP] $B [SEP]" template. `save_pretrained` writes that
    rebuilt tokenizer, so folders transformers saved agree; anything else goes through transformers.
    """
    settings = _read_json(folder / "tokenizer_config.json") or {}
    data = _read_json(folder / TOKENIZER) or {}
    kind = settings.get("tokenizer_class")
    if kind in GENERIC_TOKENIZERS:
        return bool(data.get("model"))  # transformers loads tokenizer.json as it is
    if kind not in ("BertTokenizer", "BertTokenizerFast"):
        return False
    model = data.get("model") or {}
    normalizer = data.get("normalizer") or {}
    cls, sep = (_token_text(settings.get(k), d) for k, d in (("cls_token", "[CLS]"), ("sep_token", "[SEP]")))
    processor = data.get("post_processor") or {}

    def template(spec: list[dict[str, Any]]) -> list[tuple[str, int]]:
        return [(str(next(iter(p.values()))["id"]), int(next(iter(p.values()))["type_id"])) for p in spec]

    try:
        single, pair = template(processor.get("single") or []), template(processor.get("pair") or [])
    except (KeyError, TypeError, ValueError, StopIteration):
        return False
    return (
        model.get("type") == "WordPiece"
        and model.get("continuing_subword_prefix", "##") == "##"
        and model.get("max_input_chars_per_word", 100) == 100
        and model.get("unk_token") == _token_text(settings.get("unk_token"), "[UNK]")
        and normalizer.get("type") == "BertNormalizer"
        and normalizer.get("clean_text", True) is True
        and normalizer.get("lowercase") == settings.get("do_lower_case", True)
        and normalizer.get("strip_accents") == settings.get("strip_accents")
        and normalizer.get("handle_chinese_chars") == settings.get("tokenize_chinese_chars", True)
        and (data.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
        and processor.get("type") == "TemplateProcessing"
        and single == [(cls, 0), ("A", 0), (sep, 0)]
        and pair == [(cls, 0), ("A", 0), (sep, 0), ("B", 1), (sep, 1)]
    )


def _token_text(value: Any, default: str) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else default


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_config(folder: Path) -> SimpleNamespace:
    """config.json as attributes, with the label maps typed as transformers types them (id2label: int keys)."""
    data = _read_json(folder / "config.json") or {}
    id2label = {int(k): str(v) for k, v in (data.get("id2label") or {}).items()}
    if not id2label:
        id2label = {i: f"LABEL_{i}" for i in range(int(data.get("num_labels", 2)))}
    label2id = {str(k): int(v) for k, v in (data.get("label2id") or {}).items()} or {v: k for k, v in id2label.items()}
    fields = dict(data, id2label=id2label, label2id=label2id, num_labels=len(id2label))
    fields.setdefault("problem_type", None)
    fields.setdefault("hidden_act", "gelu")
    fields.setdefault("layer_norm_eps", 1e-12)
    return SimpleNamespace(**fields)


class NativeTokenizer:
    """The slice of a transformers fast tokenizer that classify uses, over the same tokenizer.json.

    Calls return {"input_ids"} and, where transformers returns them, "token_type_ids" (lists for one input, lists
    of lists for many), with the special tokens the file's post-processor adds; truncation only when asked (the file's own truncation and padding
    settings are switched off, as transformers does per call).
    """

    padding_side = "right"
    pad_token_type_id = 0

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / TOKENIZER))
        self._tok.no_padding()
        self._tok.no_truncation()
        settings = _read_json(folder / "tokenizer_config.json") or {}
        limit = settings.get("model_max_length")
        self.model_max_length = int(limit) if isinstance(limit, (int, float)) and limit < 1e9 else int(1e30)
        # transformers returns segment ids only when the class (or the saved config) names them as model inputs:
        # BertTokenizer does, a generic fast tokenizer does not (the model then sees zeros).
        default_inputs = ["input_ids", "attention_mask"]
        if settings.get("tokenizer_class") in ("BertTokenizer", "BertTokenizerFast"):
            default_inputs = ["input_ids", "token_type_ids", "attention_mask"]
        self.with_token_types = "token_type_ids" in (settings.get("model_input_names") or default_inputs)
        self.pad_token_id = self._tok.token_to_id(_token_text(settings.get("pad_token"), "[PAD]"))
        if self.pad_token_id is None:
            config = _read_json(folder / "config.json") or {}
            self.pad_token_id = config.get("pad_token_id")

    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str | None] | None = None,
        *,
        truncation: str | None = None,
        max_length: int | None = None,
        return_attention_mask: bool = False,
    ) -> dict[str, Any]:
        del return_attention_mask  # pad_batch builds the mask
        many = isinstance(text, list)
        texts = text if many else [text]
        pairs = text_pair if isinstance(text_pair, list) else [text_pair] * len(texts)
        inputs = [t if p is None else (t, p) for t, p in zip(texts, pairs, strict=True)]
        if truncation:
            self._tok.enable_truncation(int(max_length or self.model_max_length), strategy=truncation)
        try:
            encodings = self._tok.encode_batch(inputs)
        finally:
            if truncation:
                self._tok.no_truncation()
        out: dict[str, Any] = {"input_ids": [e.ids for e in encodings]}
        if self.with_token_types:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        return out if many else {k: v[0] for k, v in out.items()}


# Exact GELU needs erf, which numpy lacks: a rational approximation (Eigen's float erf, also TensorFlow's and
# XLA's) on [-4, 4], outside of which float32 erf is +-1. Max error against math.erf about 1e-6 for GELU on
# [-6, 6] (tests/test_bert_native.py), the size of float32 rounding in the layers around it.
_ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
                  -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
                    -1.42647390514189e-02)
GELU_CHUNK = 16384  # elements per pass: the scratch buffers stay in the core's L2 cache


def _gelu_coefficients() -> tuple[list[float], list[float]]:
    """The erf approximation's polynomials rewritten in t = x * x of GELU's own x (erf's argument is x / sqrt(2)),
    with GELU's 0.5 folded into the numerator: 0.5 * erf(x / sqrt(2)) = x * P(t) / Q(t)."""
    numerator = [a * 0.5 ** (len(_ERF_NUMERATOR) - 1 - i) for i, a in enumerate(_ERF_NUMERATOR)]
    denominator = [b * 0.5 ** (len(_ERF_DENOMINATOR) - 1 - i) for i, b in enumerate(_ERF_DENOMINATOR)]
    return [a * 0.5 / math.sqrt(2) for a in numerator], denominator


def gelu_(x: Any) -> Any:
    """x * Phi(x) (exact GELU) of a float32 array, in place, a cache-sized chunk at a time."""
    import numpy as np

    flat = x.reshape(-1)
    f32 = np.float32
    numerator, denominator = _gelu_coefficients()
    num = [f32(c) for c in numerator]
    den = [f32(c) for c in denominator]
    edge = f32(4 * math.sqrt(2))  # erf(+-4) is +-1 in float32
    size = min(GELU_CHUNK, flat.size)
    t_buf, p_buf, u_buf = (np.empty(size, f32) for _ in range(3))
    for start in range(0, flat.size, GELU_CHUNK):
        v = flat[start : start + GELU_CHUNK]
        n = v.size
        u = np.minimum(v, edge, out=u_buf[:n])
        np.maximum(u, -edge, out=u)
        t = np.multiply(u, u, out=t_buf[:n])
        p = np.multiply(t, num[0], out=p_buf[:n])
        p += num[1]
        for c in num[2:]:
            p *= t
            p += c
        p *= u
        q = np.multiply(t, den[0], out=u)  # u is no longer needed
        q += den[1]
        for c in den[2:]:
            q *= t
            q += c
        p /= q  # 0.5 * erf(x / sqrt(2))
        p += f32(0.5)
        v *= p
    return x


def _layer_norm_(x: Any, weight: Any, bias: Any, eps: float) -> Any:
    import numpy as np

    x -= x.mean(-1, keepdims=True)
    var = np.einsum("...i,...i->...", x, x)[..., None]
    var /= np.float32(x.shape[-1])
    var += np.float32(eps)
    np.sqrt(var, out=var)
    x /= var
    x *= weight
    x += bias
    return x


SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


def read_safetensors_f32(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file as a float32 numpy array (bfloat16 and float16 widened exactly).

    Raises:
        ValueError: not a safetensors file, a tensor outside the file, or a dtype other than float ones.
    """
    import numpy as np

    if path.stat().st_size < 8:
        raise ValueError("too short for a safetensors file")
    data = np.memmap(path, dtype=np.uint8, mode="r")  # mapped, not read: only the float32 copies take memory
    size = int.from_bytes(data[:8].tobytes(), "little")
    if not 0 < size <= len(data) - 8:
        raise ValueError("header size out of range")
    header = json.loads(data[8 : 8 + size].tobytes())
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    body = data[8 + size :]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        kind = SAFETENSORS_DTYPES.get(entry.get("dtype"))
        if kind is None:
            raise ValueError(f"{name}: dtype {entry.get('dtype')} is not a float type")
        shape = [int(d) for d in entry["shape"]]
        begin, end = (int(o) for o in entry["data_offsets"])
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= begin <= end <= len(body) or end - begin != count * np.dtype(kind).itemsize:
            raise ValueError(f"{name}: data outside the file or of the wrong size")
        array = np.frombuffer(body[begin:end], dtype=kind).reshape(shape)
        if kind == "<u2":  # bfloat16: the high half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        # float32 stays a read-only view of the map (no copy: the pages are read where the products touch them)
        out[name] = array.astype(np.float32, copy=False)
    return out


class NumpyBertClassifier:
    """BertForSequenceClassification's inference forward in numpy, float32 on the CPU.

    Why numpy: `import torch` alone is 1.4-2 s of every fresh process on the 2-core machines, about as much as
    a 3-layer student's whole work on 1,000 tweets; numpy imports in 0.1 s, and its OpenBLAS matrix products
    match torch's here. Batches run on a pool of `threads` worker threads, each with a one-thread BLAS: whole
    batches in parallel instead of every product split between the cores (small products split badly).
    The last layer computes the query, attention output and FFN for [CLS] only, the one row the pooler reads.
    """

    llmkit_native = True  # classify: a classifier, never a causal LM
    llmkit_numpy = True  # classify: give it numpy batches, run them through `many`

    def __init__(self, config: SimpleNamespace, weights: dict[str, Any]) -> None:
        import numpy as np

        self.config = config
        self.threads = 1
        self.eps = float(config.layer_norm_eps)
        self.gelu = config.hidden_act == "gelu"
        w = {k.removeprefix("bert."): v for k, v in weights.items()}

        def linear(prefix: str) -> tuple[Any, Any]:
            # a transposed view: OpenBLAS multiplies by it as fast as by a contiguous copy (measured), and the
            # weights stay in the file's map
            return w[prefix + ".weight"].T, w[prefix + ".bias"]

        def norm(prefix: str) -> tuple[Any, Any]:
            return w[prefix + ".weight"], w[prefix + ".bias"]

        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"]
        self.emb_norm = norm("embeddings.LayerNorm")
        hidden = int(config.hidden_size)
        self.head_dim = hidden // int(config.num_attention_heads)
        self.layers = []
        count = int(config.num_hidden_layers)
        for i in range(count):
            p = f"encoder.layer.{i}."
            q, k, v = (linear(p + f"attention.self.{n}") for n in ("query", "key", "value"))
            last = i == count - 1
            group = (k, v) if last else (q, k, v)  # the last layer runs the query for [CLS] alone
            fused = (np.concatenate([w_ for w_, _ in group], axis=1), np.concatenate([b_ for _, b_ in group]))
            self.layers.append({
                "kv" if last else "qkv": fused,
                **({"q": q} if last else {}),
                "out": linear(p + "attention.output.dense"),
                "attn_norm": norm(p + "attention.output.LayerNorm"),
                "up": linear(p + "intermediate.dense"),
                "down": linear(p + "output.dense"),
                "out_norm": norm(p + "output.LayerNorm"),
            })
            if q[0].shape != (hidden, hidden) or self.layers[-1]["up"][0].shape[0] != hidden:
                raise KeyError(f"layer {i} weights do not have the config's hidden size {hidden}")
        self.pooler = linear("pooler.dense")
        self.classifier = linear("classifier")

    def __call__(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.forward(input_ids, attention_mask, token_type_ids))

    def many(self, batches: list[dict[str, Any]]) -> list[Any]:
        """Logits of each padded batch (dicts of `__call__`'s arguments), on `threads` workers, in order."""
        from threadpoolctl import threadpool_limits

        workers = max(1, min(self.threads, len(batches)))
        with threadpool_limits(limits=1 if workers > 1 else self.threads, user_api="blas"):
            if workers == 1:
                return [self.forward(**batch) for batch in batches]
            from concurrent.futures import ThreadPoolExecutor

            # the biggest batches first, so that a worker left without work at the end idles only for a small one
            order = sorted(range(len(batches)), key=lambda i: -batches[i]["input_ids"].size)
            with ThreadPoolExecutor(workers) as pool:
                done = dict(zip(order, pool.map(lambda i: self.forward(**batches[i]), order), strict=True))
            return [done[i] for i in range(len(batches))]

    def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
        """Logits [batch, labels] of a right- or left-padded batch.

        Everything but attention runs on the real tokens alone, packed (a right-padded batch of length-sorted
        texts is still about 10% padding); attention runs on the padded layout, padding keys masked.
        """
        import numpy as np

        f32 = np.float32
        batch, length = input_ids.shape
        x = self.word[input_ids]
        x += self.position[:length][None]
        x += self.token_type[token_type_ids] if token_type_ids is not None else self.token_type[0]
        x = x.reshape(batch * length, -1)
        bias = None  # additive attention mask: -inf on padding keys
        real = None  # rows of the padded layout that hold real tokens, when some do not
        if attention_mask is not None and not attention_mask.all():
            bias = np.where(attention_mask[:, None, None, :] != 0, f32(0), f32(-np.inf)).astype(f32)
            if attention_mask[:, 0].all():  # right padding: [CLS] (position 0) is real in every row
                real = np.flatnonzero(attention_mask.reshape(-1))
                x = x[real]
        x = _layer_norm_(x, *self.emb_norm, self.eps)
        cls_rows = np.arange(batch) * length
        if real is not None:
            cls_rows = np.searchsorted(real, cls_rows)  # where each row's [CLS] sits among the packed tokens
            # padded position -> packed row; a padding position takes row 0's values (finite, and masked as a key,
            # never read as a query), a row copy where zero-filling plus a scatter took 1.7x as long
            source = np.zeros(batch * length, np.intp)
            source[real] = np.arange(real.size)

        def padded(packed: Any) -> Any:
            if real is None:
                return packed.reshape(batch, length, -1)
            return packed.take(source, axis=0).reshape(batch, length, -1)

        scale = f32(1 / np.sqrt(self.head_dim))
        heads_of = lambda a, n: a.reshape(batch, n, -1, self.head_dim).transpose(0, 2, 1, 3)  # noqa: E731
        for number, layer in enumerate(self.layers):
            last = number == len(self.layers) - 1
            if last:  # [CLS] only from here on; keys and values of every token
                kv = x @ layer["kv"][0]
                kv += layer["kv"][1]
                k, v = np.split(padded(kv), 2, axis=-1)
                x = x[cls_rows]
                q = x @ layer["q"][0]
                q += layer["q"][1]
                rows = 1
                q = heads_of(q, 1)
            else:
                qkv = x @ layer["qkv"][0]
                qkv += layer["qkv"][1]
                q, k, v = np.split(padded(qkv), 3, axis=-1)
                rows = length
                q = heads_of(q, length)
            keys = heads_of(k, length).transpose(0, 1, 3, 2)
            scores = np.matmul(q * scale, keys)
            if bias is not None:
                scores += bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            attended = np.matmul(scores, heads_of(v, length)).transpose(0, 2, 1, 3).reshape(batch * rows, -1)
            if real is not None and not last:
                attended = attended.take(real, axis=0)
            h = attended @ layer["out"][0]
            h += layer["out"][1]
            h += x
            x = _layer_norm_(h, *layer["attn_norm"], self.eps)
            up = x @ layer["up"][0]
            up += layer["up"][1]
            if self.gelu:
                gelu_(up)
            else:
                np.maximum(up, 0, out=up)
            h = up @ layer["down"][0]
            h += layer["down"][1]
            h += x
            x = _layer_norm_(h, *layer["out_norm"], self.eps)
        cls = x if self.layers else x[cls_rows]
        pooled = np.tanh(cls @ self.pooler[0] + self.pooler[1])
        return pooled @ self.classifier[0] + self.classifier[1]


def runs_in_numpy(device: str, dtype: str) -> bool:
    """Whether `load` takes the numpy forward: float32 on the CPU, and `auto` only where no GPU is visible."""
    from llmkit import loading

    if dtype not in ("auto", "float32"):
        return False
    return device == "cpu" or (device == "auto" and not loading.accelerator_visible())


def _model_class() -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    class NativeBertClassifier(nn.Module):
        """BertForSequenceClassification's inference forward, weights taken as transformers saved them."""

        llmkit_native = True  # classify: a classifier, never a causal LM (no transformers lookup of the class)

        def __init__(self, config: SimpleNamespace, weights: dict[str, Any]) -> None:
            super().__init__()
            self.config = config
            prefix = "bert."
            self.eps = float(config.layer_norm_eps)
            self.act = F.gelu if config.hidden_act == "gelu" else F.relu
            w = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in weights.items()}
            self.word = nn.Parameter(w["embeddings.word_embeddings.weight"], requires_grad=False)
            self.position = nn.Parameter(w["embeddings.position_embeddings.weight"], requires_grad=False)
            self.token_type = nn.Parameter(w["embeddings.token_type_embeddings.weight"], requires_grad=False)
            self.emb_norm = self._norm(w, "embeddings.LayerNorm")
            self.layers = nn.ModuleList()
            hidden = int(config.hidden_size)
            head_dim = hidden // int(config.num_attention_heads)
            for i in range(int(config.num_hidden_layers)):
                p = f"encoder.layer.{i}."
                layer = nn.Module()
                q, k, v = (p + f"attention.self.{n}" for n in ("query", "key", "value"))
                layer.qkv = self._linear(torch.cat([w[q + ".weight"], w[k + ".weight"], w[v + ".weight"]]),
                                         torch.cat([w[q + ".bias"], w[k + ".bias"], w[v + ".bias"]]))
                layer.heads = w[q + ".weight"].shape[0] // head_dim
                layer.attn_out = self._linear(w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
                layer.attn_norm = self._norm(w, p + "attention.output.LayerNorm")
                layer.up = self._linear(w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"])
                layer.down = self._linear(w[p + "output.dense.weight"], w[p + "output.dense.bias"])
                layer.out_norm = self._norm(w, p + "output.LayerNorm")
                self.layers.append(layer)
            self.pooler = self._linear(w["pooler.dense.weight"], w["pooler.dense.bias"])
            self.classifier = self._linear(w["classifier.weight"], w["classifier.bias"])

        @staticmethod
        def _linear(weight: Any, bias: Any) -> Any:
            layer = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
            layer.weight = nn.Parameter(weight, requires_grad=False)
            layer.bias = nn.Parameter(bias, requires_grad=False)
            return layer

        @staticmethod
        def _norm(w: dict[str, Any], name: str) -> Any:
            norm = nn.LayerNorm(w[name + ".weight"].shape[0], device="meta")
            norm.weight = nn.Parameter(w[name + ".weight"], requires_grad=False)
            norm.bias = nn.Parameter(w[name + ".bias"], requires_grad=False)
            return norm

        def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
            batch, length = input_ids.shape
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = self.word[input_ids] + self.position[:length].unsqueeze(0) + self.token_type[token_type_ids]
            x = F.layer_norm(x, x.shape[-1:], self.emb_norm.weight, self.emb_norm.bias, self.eps)
            # Rows without padding need no mask; SDPA then takes its unmasked kernel.
            mask = None
            if attention_mask is not None and not bool(attention_mask.all()):
                mask = attention_mask[:, None, None, :].bool()
            layers: Any = self.layers  # plain nn.Module holders: their attributes are set in __init__
            for layer in layers[:-1]:
                heads = layer.heads
                qkv = layer.qkv(x).view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
                attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
                attended = attended.transpose(1, 2).reshape(batch, length, -1)
                x = layer.attn_norm(layer.attn_out(attended) + x)
                x = layer.out_norm(layer.down(self.act(layer.up(x))) + x)
            # The classifier reads only the [CLS] row of the last layer, so that layer computes keys and values
            # for every token and the rest (query, attention output, FFN) for [CLS] alone: the same numbers,
            # about 5/6 of a layer's work saved (a 3-layer student gains more from it than its 6-layer teacher).
            if len(layers):
                last = layers[-1]
                weight, bias = last.qkv.weight, last.qkv.bias
                heads, rows = last.heads, weight.shape[0] // 3  # rows of the query (= of the key, the value)
                kv = F.linear(x, weight[rows:], bias[rows:]).view(batch, length, 2, heads, -1).permute(2, 0, 3, 1, 4)
                cls = x[:, :1]
                q = F.linear(cls, weight[:rows], bias[:rows]).view(batch, 1, heads, -1).transpose(1, 2)
                attended = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
                x = last.attn_norm(last.attn_out(attended.transpose(1, 2).reshape(batch, 1, -1)) + cls)
                x = last.out_norm(last.down(self.act(last.up(x))) + x)
            pooled = torch.tanh(self.pooler(x[:, 0]))
            return SimpleNamespace(logits=self.classifier(pooled))

    return NativeBertClassifier


def load(folder: Path, *, spec: str, device: str = "auto", dtype: str = "auto", numpy: bool | None = None) -> Any:
    """The classifier in `folder` (see `native_folder`) as a `loading.LoadedModel`, ready to run.

    float32 on the CPU runs in numpy (`NumpyBertClassifier`: no torch import); any other device or dtype runs
    the same forward in torch, in eval mode on its device. `numpy` True/False forces one of the two (tests and
    benchmarks compare them); numpy then needs float32 on the CPU.

    Raises:
        ModelNotFoundError: a damaged weights file, or weights that do not fit the config.
    """
    from llmkit import loading

    started = time.perf_counter()
    config = read_config(folder)
    source = loading.ModelSource(spec, "dir", str(folder))
    if numpy if numpy is not None else runs_in_numpy(device, dtype):
        if device not in ("auto", "cpu") or dtype not in ("auto", "float32"):
            raise ValueError(f"the numpy BERT runs float32 on the CPU, not {dtype} on {device}")
        try:
            weights = read_safetensors_f32(folder / WEIGHTS)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelNotFoundError(f"{spec}: {WEIGHTS} could not be read ({str(exc).splitlines()[0]})") from exc
        try:
            net: Any = NumpyBertClassifier(config, weights)
        except (KeyError, ValueError) as exc:
            raise ModelNotFoundError(f"{spec}: {WEIGHTS} does not match its BERT config.json ({exc})") from exc
        notes = ["run by llmkit's own BERT forward in numpy (bert_native.py); LLMKIT_NATIVE=0 uses transformers"]
        return loading.LoadedModel(net, NativeTokenizer(folder), source, "cpu", "float32",
                                   time.perf_counter() - started, notes)
    from safetensors.torch import load_file

    device = loading.pick_device(device)
    torch_dtype = loading.pick_dtype(dtype, device, low_precision=False)
    try:
        weights = load_file(str(folder / WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise ModelNotFoundError(f"{spec}: {WEIGHTS} could not be read ({str(exc).splitlines()[0]})") from exc
    try:
        model = _model_class()(config, weights)
    except (KeyError, RuntimeError) as exc:
        raise ModelNotFoundError(f"{spec}: {WEIGHTS} does not match its BERT config.json ({exc})") from exc
    model.to(device=device, dtype=torch_dtype)
    model.eval()
    notes = ["run by llmkit's own BERT forward (bert_native.py); LLMKIT_NATIVE=0 uses transformers"]
    return loading.LoadedModel(model, NativeTokenizer(folder), source, device, torch_dtype,
                               time.perf_counter() - started, notes)
