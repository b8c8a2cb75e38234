"""Exporting an encoder to ONNX once, and its int8 form: the half of the ONNX engine that needs torch.

`export` loads the model through loading.py with eager attention (SDPA exports without any Attention fusion),
traces it with torch's TorchScript exporter (`torch.onnx.export(..., dynamo=False)`, opset 17, dynamic batch and
sequence axes), and runs ONNX Runtime's transformer optimizer (`model_type="bert"`), which fuses attention,
skip-layer-norms, bias-GELUs and the embeddings. Measured on MiniLM-L6 (2026-12-07): TorchScript 4.7 s and 6
Attention + 12 SkipLayerNormalization + 6 BiasGelu + the embeddings fused; the dynamo exporter (onnxscript 0.7)
took 29.9 s and left attention and the embeddings unfused, so TorchScript it is.

Nothing is kept unless it matches transformers: the graph's output on three probe batches (padded, unpadded,
one row) must equal the torch model's to 1e-4 of its largest value, no tanh GELU may stand in for an exact one,
and the tokenizer saved beside it must give the ids transformers gives on tricky probe texts. An export that
fails any of these raises `ExportError` and is remembered, so auto runs transformers without trying again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from llmkit import tempnames
from llmkit.engines import onnx_cache as cache
from llmkit.errors import LlmkitError
from llmkit.tokens import EncoderTokenizer

OPSET = 17
TOLERANCE = 1e-4  # largest |ORT - torch| allowed, relative to the largest |torch| output (at least 1)
MAX_GRAPH_BYTES = 2_000_000_000  # ONNX's protobuf limit; larger models would need external data files
EXACT_GELU = ("gelu", "gelu_python")  # transformers' erf GELUs; a FastGelu (tanh form) must not replace them
# Methods of transformers' TokenizersBackend that shape what a tokenizer call or decode returns; a tokenizer
# class that overrides any of them may not give what its saved `tokenizers` pipeline gives.
TOKENIZER_METHODS = ("__call__", "_call_one", "_encode_plus", "encode", "_convert_encoding", "set_truncation_and_padding",
                     "decode", "_decode", "clean_up_tokenization", "convert_tokens_to_string", "tokenize",
                     "prepare_for_model", "build_inputs_with_special_tokens", "create_token_type_ids_from_sequences")
# Texts the saved tokenizer must encode as transformers does: accents, CJK, emoji, a URL, special-token text,
# a long word, control and odd spaces, and text long enough to be cut.
PROBE_TEXTS = (
    "i loved it",
    "Terrible movie, AWFUL plot!! Don't go.",
    "Café naïve résumé — “quotes” and ‘apostrophes’",
    "北京 is the capital of 中国 🙂",
    "see https://example.com/a?b=c&d=e for [SEP] and [MASK] <mask> </s> details",
    "supercalifragilisticexpialidocious" * 3,
    "tabs\tand\u00a0odd\u2009spaces\nand a new line",
    "the food was good but the service was very bad " * 12,
    "ok",
)
PROBE_PAIR = "This example is about sports."


def _refuse(target: Path, reason: str) -> cache.ExportError:
    cache.remember_refusal(target, reason)
    return cache.ExportError(reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def quiet_onnx_logs() -> None:
    """ONNX Runtime's optimizer and quantizer log their progress with `logging` (stderr is llmkit's)."""
    import logging

    for name in ("onnxruntime", "onnx", "onnxscript", "root"):
        logging.getLogger(name if name != "root" else None).setLevel(logging.ERROR)


def tokenizer_settings(tok: Any) -> dict[str, Any]:
    """What EncoderTokenizer needs to call the saved pipeline as transformers calls it."""
    limit = getattr(tok, "model_max_length", None)
    clean = bool(getattr(tok, "clean_up_tokenization_spaces", False))
    if clean and type(tok.backend_tokenizer.model).__name__ == "BPE":
        # transformers skips the clean-up for BPE unless forced (it eats real spaces before punctuation)
        clean = bool(getattr(tok, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
    return {
        "class": type(tok).__name__,
        "model_input_names": list(tok.model_input_names),
        "model_max_length": int(limit) if isinstance(limit, int) and limit < 1_000_000 else None,
        "padding_side": tok.padding_side,
        "truncation_side": tok.truncation_side,
        "pad_token_id": tok.pad_token_id,
        "pad_token_type_id": int(getattr(tok, "pad_token_type_id", 0) or 0),
        "mask_token": tok.mask_token if tok.mask_token_id is not None else None,
        "mask_token_id": tok.mask_token_id,
        "unk_token_id": tok.unk_token_id,
        "split_special_tokens": bool(getattr(tok, "split_special_tokens", False)),
        "clean_up_tokenization_spaces": clean,
    }


def check_tokenizer(tok: Any) -> str | None:
    """Why the tokenizer cannot be used outside transformers (one line), or None."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - transformers 5 has it
        return "this transformers has no TokenizersBackend"
    if not isinstance(tok, TokenizersBackend):
        return f"its tokenizer ({type(tok).__name__}) is not a `tokenizers`-backed one"
    overridden = [m for m in TOKENIZER_METHODS if getattr(type(tok), m, None) is not getattr(TokenizersBackend, m, None)]
    if overridden:
        return f"its tokenizer class {type(tok).__name__} changes {', '.join(overridden)} in Python"
    return None


def compare_tokenizers(theirs: Any, mine: EncoderTokenizer) -> str | None:
    """Where the saved tokenizer gives other ids (or text) than transformers' on the probe texts, or None."""
    texts = list(PROBE_TEXTS)
    pairs = [PROBE_PAIR] * len(texts)

    def outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
        """The ids (and token type ids) a call returns, or the error it raises (the same Rust error on both)."""
        try:
            out = call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - e.g. a pair too long to truncate to max_length
            return f"error: {exc}"
        return {k: [list(x) if isinstance(x, (list, tuple)) else x for x in v] if isinstance(v, (list, tuple)) else v
                for k, v in out.items() if k in ("input_ids", "token_type_ids")}

    checks: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
              ("texts", (texts,), {}), ("pairs", (texts, pairs), {}),
              ("no special tokens", (texts,), {"add_special_tokens": False}),
              ("truncation", (texts[7],), {"truncation": True, "max_length": 24})]
    for strategy in ("only_first", "longest_first"):
        for limit in (24, 40):
            checks.append((f"truncation {strategy}", (texts, pairs), {"truncation": strategy, "max_length": limit}))
    for what, args, kwargs in checks:
        if outcome(theirs, *args, return_attention_mask=False, **kwargs) != outcome(mine, *args, **kwargs):
            return f"its tokenizer gives other ids outside transformers ({what})"
    for row in mine(texts)["input_ids"]:
        for skip in (False, True):
            if theirs.decode(row, skip_special_tokens=skip) != mine.decode(row, skip_special_tokens=skip):
                return "its tokenizer decodes differently outside transformers"
        if theirs.decode(row[1:2]) != mine.decode(row[1:2]):
            return "its tokenizer decodes single tokens differently outside transformers"
    if theirs.get_vocab() != mine.get_vocab():
        return "its vocabulary differs outside transformers"
    return None


def _dims(config: Any) -> tuple[int, int]:
    """(attention heads, hidden size) for the optimizer's attention fusion; 0 lets it guess."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    return int(heads), int(hidden)


def _probe_batches(tok: EncoderTokenizer, names: list[str]) -> list[dict[str, Any]]:
    """Three padded batches unlike each other: mixed lengths with padding, a pair batch without padding, one row."""
    from llmkit.tokens import pad_batch

    def batch(texts: list[str], pairs: list[str | None] | None = None) -> dict[str, Any]:
        encoded = tok(texts, pairs, truncation="longest_first", max_length=48)
        features = [dict(zip(encoded, row, strict=True)) for row in zip(*encoded.values(), strict=True)]
        padded = pad_batch(features, tok, arrays="numpy")
        return {k: v for k, v in padded.items() if k in names}

    return [
        batch([PROBE_TEXTS[0], PROBE_TEXTS[3], PROBE_TEXTS[7]]),
        batch([PROBE_TEXTS[7][:120]] * 2, [PROBE_TEXTS[1], PROBE_TEXTS[1]]),
        batch([PROBE_TEXTS[1]]),
    ]


def export(spec: str, folder: Path, head: str, target: Path, *, revision: str | None = None,
           allow_pickle: bool = False, trust_remote_code: bool = False) -> cache.Export:
    """Export `spec` (in `folder`) for `head` into `target`, checked against transformers; say so on stderr.

    Returns:
        The export, renamed into place.

    Raises:
        ExportError: the exporter, the optimizer or a check failed (remembered beside `target`).
        LlmkitError: the model could not be loaded at all (what transformers would say; not remembered).
    """
    from llmkit import loading
    from llmkit.console import info

    started = time.perf_counter()
    quiet_onnx_logs()
    try:
        lm = loading.load(spec, head, device="cpu", dtype="float32", revision=revision, allow_pickle=allow_pickle,
                          trust_remote_code=trust_remote_code, model_kwargs={"attn_implementation": "eager"})
    except LlmkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. an architecture without eager attention
        raise _refuse(target, f"transformers could not load it for export ({_first_line(exc)})") from exc
    why = check_tokenizer(lm.tokenizer)
    if why is not None:
        raise _refuse(target, why)
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    if weights > MAX_GRAPH_BYTES:
        raise _refuse(target, f"its {weights / 1e9:.1f} GB of weights exceed ONNX's 2 GB single-file limit")
    journal = loading.llmkit_home() / tempnames.JOURNAL
    tmp = tempnames.temp_dir(target, journal=journal)
    try:
        tok_path = tmp / cache.TOKENIZER
        tok_path.write_text(lm.tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
        settings = tokenizer_settings(lm.tokenizer)
        mine = EncoderTokenizer(tok_path, settings)
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the long probe text is longer than some models: no warning for it
        try:
            why = compare_tokenizers(lm.tokenizer, mine)
        finally:
            hf_logging.set_verbosity(level)
        if why is not None:
            raise _refuse(target, why)
        manifest = _export_graph(lm, head, tmp, mine, target)
        manifest.update(
            format=cache.FORMAT_VERSION, spec=spec, source=str(folder), head=head, output=cache.OUTPUTS[head],
            tokenizer=settings, versions=cache.versions(), quantization=None,
            config=json.loads(lm.model.config.to_json_string(use_diff=False)),
            files={name: cache.file_entry(tmp / name) for name in (cache.GRAPH, cache.TOKENIZER)},
        )
        manifest["export_seconds"] = round(time.perf_counter() - started, 1)
        (tmp / cache.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if cache.read_json(target / cache.MANIFEST) is None:  # not a lost race with another process: a failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        tempnames.forget(tmp, journal)
    info(f"Exported {spec} to ONNX in {manifest['export_seconds']:.1f} s (once: later runs load {target})")
    return cache.Export(target, cache.read_json(target / cache.MANIFEST) or manifest)


def _export_graph(lm: Any, head: str, tmp: Path, tok: EncoderTokenizer, target: Path) -> dict[str, Any]:
    """Trace, optimize and check the graph into tmp/model.onnx; returns the manifest's export fields."""
    import inspect

    import numpy as np
    import torch

    model = lm.model
    output = cache.OUTPUTS[head]
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in accepted and (n != "token_type_ids" or n in tok.model_input_names)]
    probes = _probe_batches(tok, names)

    class Traced(torch.nn.Module):
        """The model with positional inputs in `names` order and one output: the graph's signature."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *tensors: Any) -> Any:
            return getattr(self.inner(**dict(zip(names, tensors, strict=True)), return_dict=True), output)

    traced = Traced().eval()
    raw = tmp / "raw.onnx"
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if head == "sequence-classification" else {0: "batch", 1: "sequence"}
    exporter = f"torch.onnx.export (TorchScript, opset {OPSET})"
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            sample = tuple(torch.from_numpy(probes[0][n]) for n in names)
            torch.onnx.export(traced, sample, str(raw), input_names=names, output_names=[output], opset_version=OPSET,
                              dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds of errors for what it cannot trace
        raise _refuse(target, f"torch's ONNX exporter refused {type(model).__name__} ({_first_line(exc)})") from exc

    wants = []
    with torch.inference_mode():
        for probe in probes:
            wants.append(traced(*(torch.from_numpy(probe[n]) for n in names)).float().numpy())
    fusions, optimizer_note = _optimize(raw, tmp / cache.GRAPH, model.config)
    raw.unlink(missing_ok=True)
    worst = _max_difference(tmp / cache.GRAPH, probes, wants)
    scale = max(1.0, max(float(np.abs(w).max()) for w in wants))
    if not worst <= TOLERANCE * scale:
        raise _refuse(target, f"its ONNX graph differs from transformers by {worst:.2g} (more than {TOLERANCE:g} of "
                              f"{scale:.3g})")
    return {"exporter": exporter, "optimizer": optimizer_note, "fusions": fusions, "inputs": names,
            "max_abs_difference": float(f"{worst:.3g}")}


def _optimize(raw: Path, out: Path, config: Any) -> tuple[dict[str, int], str]:
    """ONNX Runtime's transformer optimizer on `raw`, written to `out`; the unoptimized graph when the optimizer
    fails or puts a tanh GELU where the model has an exact one. Returns (fused operators, what was done)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _dims(config)
    options = FusionOptions("bert")
    options.enable_gelu_approximation = False  # already the default: say it, exact GELU must stay exact
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0,
                                       optimization_options=options)
        fusions = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    except Exception as exc:  # noqa: BLE001 - the optimizer raises what its passes raise
        shutil.copyfile(raw, out)
        return {}, f"not optimized: onnxruntime's optimizer failed ({_first_line(exc)})"
    tanh = sum(fusions.get(k, 0) for k in ("FastGelu", "BiasFastGelu", "GemmFastGelu"))
    act = str(getattr(config, "hidden_act", getattr(config, "activation", "gelu")))
    if tanh and act in EXACT_GELU:
        shutil.copyfile(raw, out)
        return {}, f"not optimized: the optimizer fused {tanh} tanh GELU(s) into a model with exact GELU"
    optimized.save_model_to_file(str(out))
    return fusions, "onnxruntime.transformers.optimizer (model_type bert)"


def _max_difference(graph: Path, probes: list[dict[str, Any]], wants: list[Any]) -> float:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for probe, want in zip(probes, wants, strict=True):
        got = session.run(None, {i.name: probe[i.name] for i in session.get_inputs()})[0]
        if got.shape != want.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got.astype(np.float32) - want).max()))
    return worst


# --- int8 ------------------------------------------------------------------------------------------------------


def quantize_int8(export: cache.Export, out: Path, *, per_channel: bool = True) -> dict[str, Any]:
    """ONNX Runtime dynamic quantization of an export into folder `out` (int8 weights, per output channel;
    activations quantized on the fly): graph, tokenizer and manifest, loadable by `onnx.load` like any model.

    Returns:
        The settings recorded in the manifest's "quantization".
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet_onnx_logs()
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The fused operators (Attention, SkipLayerNormalization, ...) are ONNX Runtime's own, which onnx's shape
        # inference does not type: their outputs are float32.
        quantize_dynamic(str(export.graph), str(out / cache.GRAPH), per_channel=per_channel,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": TensorProto.FLOAT})
    shutil.copyfile(export.folder / cache.TOKENIZER, out / cache.TOKENIZER)
    settings = {"method": "onnx-int8", "tool": "onnxruntime.quantization.quantize_dynamic",
                "weight_type": "int8", "per_channel": per_channel, "activations": "uint8, quantized per run"}
    manifest = dict(export.manifest, quantization=settings,
                    files={name: cache.file_entry(out / name) for name in (cache.GRAPH, cache.TOKENIZER)})
    (out / cache.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return settings
