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
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llmkit.errors import ModelNotFoundError

NATIVE_ENV = "LLMKIT_NATIVE"  # "0" loads every classifier through transformers
ARCHITECTURE = "BertForSequenceClassification"
ACTIVATIONS = ("gelu", "relu")  # transformers' "gelu" is the exact (erf) GELU
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")  # transformers uses tokenizer.json as is
NOT_NATIVE_FILES = ("adapter_config.json", "model.safetensors.index.json")


def native_enabled() -> bool:
    """False when LLMKIT_NATIVE turns llmkit's own forward passes off (bert_native and llama_native)."""
    return os.environ.get(NATIVE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


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


def load(folder: Path, *, spec: str, device: str = "auto", dtype: str = "auto") -> Any:
    """The classifier in `folder` (see `native_folder`) as a `loading.LoadedModel`, in eval mode on its device.

    Raises:
        ModelNotFoundError: a damaged weights file, or weights that do not fit the config.
    """
    from safetensors.torch import load_file

    from llmkit import loading

    started = time.perf_counter()
    device = loading.pick_device(device)
    torch_dtype = loading.pick_dtype(dtype, device, low_precision=False)
    config = read_config(folder)
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
    tokenizer = NativeTokenizer(folder)
    source = loading.ModelSource(spec, "dir", str(folder))
    notes = ["run by llmkit's own BERT forward (bert_native.py); LLMKIT_NATIVE=0 uses transformers"]
    return loading.LoadedModel(model, tokenizer, source, device, torch_dtype, time.perf_counter() - started, notes)

