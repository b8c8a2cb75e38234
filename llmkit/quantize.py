"""`llmkit quantize`: a smaller model, with a measured report of what was gained and what was lost.

Methods:
- gguf:          a .gguf file for llama.cpp / Ollama (llama-family causal LMs; see gguf_export.py).
- int8-weight:   torchao int8 weight-only (per output channel), saved as torchao safetensors.
- int4-weight:   torchao int4 weight-only in groups of --group-size (IntxWeightOnlyConfig: runs on CPU too).
- dynamic-int8:  torch.ao dynamic quantization (int8 weights and activations in the linear layers; fbgemm on
CPU),
                 saved as int8 tensors + scales in safetensors and rebuilt by loading.py from the saved
                 settings.
- bnb-8bit/bnb-4bit: bitsandbytes LLM.int8() / NF4, for CUDA.
- onnx-int8:     ONNX Runtime dynamic quantization (int8 weights per output channel, activations quantized per
                 run) of the model's ONNX export, for encoders (classifiers, masked LMs, base encoders): a folder
                 that classify / fill-mask run on ONNX Runtime (see engines/onnx.py). Both sides are measured on
                 ONNX Runtime, the float32 export against the int8 graph.

The report measures the original and the output the way llmkit runs them (load through loading.py, generate
through generate.py): size on disk, load time, speed, quality (perplexity, masked-token perplexity, accuracy
or
agreement) plus top-1 agreement and KL divergence against the original. `max_drop` gates the result: a model
that lost too much is deleted and the call raises QualityGateError (exit 5).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llmkit import signals, tempnames
from llmkit.errors import DataError, MissingDependencyError, QualityGateError, UsageError
from llmkit.fsutil import make_public
from llmkit.int8_format import (  # noqa: F401  (DYNAMIC_WEIGHTS re-exported: the format's file name)
    DYNAMIC_WEIGHTS,
    apply_dynamic_int8,
    save_dynamic_int8,
)
from llmkit.metrics import accuracy, perplexity

METHODS = ("gguf", "int8-weight", "int4-weight", "dynamic-int8", "bnb-8bit", "bnb-4bit", "onnx-int8")
ONNX_TASKS = ("sequence-classification", "masked-lm", "base")  # what --method onnx-int8 quantizes
ONNX_BATCH_SIZE = 32  # inputs per ONNX Runtime run while measuring, as classify batches them
TORCHAO_METHODS = ("int8-weight", "int4-weight")
BNB_METHODS = ("bnb-8bit", "bnb-4bit")
# --skip default: the output head (lm_head, cls.predictions.decoder, classifier): it sees the widest
# activations,
# so int8 costs the most quality there, and it is one layer of many.
DEFAULT_SKIP_HELP = "the output head (lm_head, classifier, ...)"
DEFAULT_GROUP_SIZE = (
    32  # int4-weight: weights per scale; smaller groups are more faithful and a little larger
)
DEFAULT_DTYPE = "float32"  # compute dtype of the original, the quantized model and both measurements
EVAL_MAX_TOKENS = 512  # tokens of evaluation text per measurement (one forward pass)
SPEED_NEW_TOKENS = 32  # tokens generated for the tokens/s measurement (after a short warm-up)
SPEED_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
MASK_EVERY = 7  # masked LMs: every 7th token is masked for the masked-token perplexity (~15%, as in BERT)
REPORT_NAME = "report.json"

# Built-in evaluation text: plain English prose, used when --eval-data is not given.
SAMPLE_TEXT = (
    "The village sat at the edge of a wide valley, where the river slowed and spread into a shallow lake. "
    "Every morning the baker opened his shop before sunrise, and the smell of fresh bread drifted down the "
    "narrow street toward the school. Children walked past in small groups, talking about the weather, their "
    "homework and the football match that had been played the evening before. Their teacher, a patient woman "
    "who had lived in the village all her life, believed that every question deserved a careful answer. "
    "In the spring, farmers planted wheat and barley in the fields above the lake, and in the autumn they "
    "brought the harvest to the market in the main square. Visitors often said that nothing ever changed "
    "there, "
    "but the people who lived in the valley knew better. The old bridge had been rebuilt after a flood, a "
    "new "
    "library had opened in the former post office, and the railway station now had trains to the city every "
    "hour. Many young people left to study at the university, and some of them came back with new ideas "
    "about "
    "farming, energy and tourism. Solar panels appeared on the roofs of the barns, and a small company "
    "began to "
    "make furniture from the wood of fallen trees. When people asked the baker what he thought of all "
    "this, he "
    "would smile and say that bread still needed flour, water, salt and time, and that good work always "
    "takes "
    "as long as it takes. Science helps us understand how the world works. A good experiment starts with a "
    "clear question, measures carefully, and reports what it found, even when the result is a surprise."
)


@dataclass(frozen=True)
class Measurement:
    """One model as llmkit runs it.

    Attributes:
        size_bytes: size on disk (the folder or .gguf file llmkit loads).
        load_seconds: time for loading.load().
        speed: tokens/s (generation) or examples/s (other tasks).
        speed_unit: "tokens/s" or "examples/s".
        quality: the value of `quality_metric`.
        quality_metric: "perplexity" (lower is better), "masked-perplexity" (lower), "accuracy" or "agreement"
            (higher is better).
        engine: what measured it: "transformers", "llama-cpp" (a .gguf run by llama.cpp itself), or
            "transformers (de-quantized)" (a .gguf loaded back as float weights: its speed is not llama.cpp's).
    """

    size_bytes: int | None
    load_seconds: float
    speed: float
    speed_unit: str
    quality: float
    quality_metric: str
    engine: str = "transformers"


@dataclass(frozen=True)
class QuantizeReport:
    """What quantization gained and lost.

    Attributes:
        model: the model spec that was quantized.
        method: one of METHODS; settings: its settings (gguf type, skipped modules, group size, ...).
        output: the folder or .gguf written (None when the quality gate refused it).
        task: what the model does ("causal-lm", "masked-lm", "sequence-classification", "base").
        original / quantized: the two measurements (each names its engine).
        size_ratio / speedup: quantized over original (size) and quantized over original (speed).
        quality_drop_percent: how much worse quality got, in percent (negative: better).
        top1_agreement: fraction of positions/examples where both models pick the same top token/label.
        kl_divergence: mean KL(original || quantized) of the output distributions, in nats (None when
            llama.cpp measured the output: its server returns no full distributions).
        max_drop: the gate, if one was set; passed: whether the output was kept.
        original_gguf: a .gguf original as llama.cpp runs it (size of the file, load, tokens/s, perplexity),
            beside `original` (its de-quantized float weights in transformers, the quality baseline).
    """

    model: str
    method: str
    settings: dict[str, Any]
    output: str | None
    task: str
    original: Measurement
    quantized: Measurement
    size_ratio: float | None
    speedup: float
    quality_drop_percent: float
    top1_agreement: float
    kl_divergence: float | None
    eval_tokens: int
    max_drop: float | None
    passed: bool
    notes: list[str] = field(default_factory=list)
    original_gguf: Measurement | None = None


# --- which modules -------------------------------------------------------------------------------------------


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """A module name matches a --skip pattern as a whole name, a dotted prefix or a dotted suffix."""
    return any(name == p or name.startswith(p + ".") or name.endswith("." + p) for p in patterns)


def linear_names(model: Any, skip: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Names of the nn.Linear modules that a quantizer would convert (those not matched by `skip`)."""
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not _matches(n, skip)]


def default_skip(model: Any, task: str) -> list[str]:
    """The module(s) kept precise unless --skip says otherwise: the output head, found from the model."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        return [n for n, m in model.named_modules() if m is head][:1]
    if (
        task == "sequence-classification"
    ):  # the classifier is the last linear layer (classifier, score, out_proj)
        return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1:]
    return []


# --- measuring ----------------------------------------------------------------------------------------------


@dataclass
class _Eval:
    """Evaluation inputs prepared once with the original tokenizer (both models share it)."""

    task: str
    ids: Any = None  # [1, T] token ids (LMs)
    labels: Any = None  # [1, T] labels for the loss (masked LMs: only masked positions)
    texts: list[str] = field(default_factory=list)  # classifiers / encoders
    gold: list[int] | None = None  # classifier label ids, when the eval data has labels


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != REPORT_NAME)


def _prepare_eval(lm: Any, task: str, texts: list[str] | None, labels: list[str] | None) -> _Eval:
    import torch

    tok = lm.tokenizer
    if task in ("causal-lm", "masked-lm"):
        text = "\n".join(t for t in (texts or [SAMPLE_TEXT]) if t.strip())
        limit = min(
            EVAL_MAX_TOKENS,
            getattr(lm.model.config, "max_position_embeddings", EVAL_MAX_TOKENS) or EVAL_MAX_TOKENS,
        )
        ids = tok(text, truncation=True, max_length=limit, return_tensors="pt")["input_ids"]
        if ids.shape[1] < 2:
            raise DataError("--eval-data has fewer than 2 tokens; give some text to measure perplexity on")
        if task == "causal-lm":
            return _Eval(task, ids=ids, labels=ids.clone())
        if tok.mask_token_id is None:
            raise UsageError("this masked LM's tokenizer has no mask token; it cannot be evaluated")
        special = torch.tensor(
            tok.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True)
        ).bool()
        chosen = (torch.arange(ids.shape[1]) % MASK_EVERY == MASK_EVERY // 2) & ~special
        masked = ids.clone()
        masked[0, chosen] = tok.mask_token_id
        gold = torch.full_like(ids, -100)
        gold[0, chosen] = ids[0, chosen]
        return _Eval(task, ids=masked, labels=gold)
    sample = texts or [s.strip() + "." for s in SAMPLE_TEXT.split(". ") if s.strip()]
    gold_ids = None
    if labels is not None and task == "sequence-classification":
        label2id = {str(k): int(v) for k, v in (lm.model.config.label2id or {}).items()}
        gold_ids = []
        for label in labels:
            if label in label2id:
                gold_ids.append(label2id[label])
            elif label.isdigit() and int(label) < lm.model.config.num_labels:
                gold_ids.append(int(label))
            else:
                raise DataError(f"label {label!r} is not one of the model's labels ({', '.join(label2id)})")
    return _Eval(task, texts=list(sample), gold=gold_ids)


def _outputs(lm: Any, ev: _Eval) -> tuple[Any, float | None]:
    """(logits or embeddings to compare, loss-based quality or None) for one model, under inference_mode."""
    import torch

    net = lm.model
    with torch.inference_mode():
        if ev.task in ("causal-lm", "masked-lm"):
            out = net(input_ids=ev.ids.to(lm.device), labels=ev.labels.to(lm.device))
            logits = out.logits[0].float().cpu()
            if ev.task == "causal-lm":
                logits = logits[:-1]  # position t predicts token t+1
            else:
                logits = logits[(ev.labels[0] != -100)]
            ppl = perplexity(float(out.loss))  # the one metrics module; a diverged loss reads as inf
            return logits, math.inf if ppl is None else ppl
        chunks = []
        for start in range(0, len(ev.texts), 8):
            batch = lm.tokenizer(
                ev.texts[start : start + 8], padding=True, truncation=True, return_tensors="pt"
            )
            batch = {k: v.to(lm.device) for k, v in batch.items()}
            out = net(**batch)
            if ev.task == "sequence-classification":
                chunks.append(out.logits.float().cpu())
            else:  # encoders: the mean of the last hidden states, as sentence embeddings
                mask = batch["attention_mask"].unsqueeze(-1).float()
                chunks.append(((out.last_hidden_state.float() * mask).sum(1) / mask.sum(1)).cpu())
        return torch.cat(chunks), None


def _speed(lm: Any, ev: _Eval) -> tuple[float, str]:
    """tokens/s of greedy generation through llmkit's generate(), or examples/s of forward passes."""
    if ev.task == "causal-lm":
        from llmkit.generate import build_settings, generate

        list(
            generate([SPEED_PROMPT], loaded=lm, settings=build_settings("greedy", max_new_tokens=4))
        )  # warm-up
        result = next(
            generate(
                [SPEED_PROMPT], loaded=lm, settings=build_settings("greedy", max_new_tokens=SPEED_NEW_TOKENS)
            )
        )
        return result.tokens_per_second, "tokens/s"
    texts = ev.texts if ev.task != "masked-lm" else [SAMPLE_TEXT]
    probe = _Eval("base" if ev.task == "masked-lm" else ev.task, texts=texts)
    if ev.task == "masked-lm":  # time the forward pass only
        import torch

        with torch.inference_mode():
            lm.model(input_ids=ev.ids.to(lm.device))
            started = time.perf_counter()
            lm.model(input_ids=ev.ids.to(lm.device))
        return 1 / max(time.perf_counter() - started, 1e-9), "examples/s"
    _outputs(lm, probe)  # warm-up
    started = time.perf_counter()
    _outputs(lm, probe)
    return len(texts) / max(time.perf_counter() - started, 1e-9), "examples/s"


def _measure(lm: Any, ev: _Eval, size: int | None, reference: Any = None) -> tuple[Measurement, Any]:

    outputs, loss_quality = _outputs(lm, ev)
    if loss_quality is not None:
        metric = "perplexity" if ev.task == "causal-lm" else "masked-perplexity"
        quality = loss_quality
    elif ev.gold is not None:
        metric, quality = "accuracy", accuracy(list(ev.gold), outputs.argmax(-1).tolist())
    else:
        metric = "agreement"
        quality = 1.0 if reference is None else _agreement(reference, outputs, ev.task)[0]
    speed, unit = _speed(lm, ev)
    return Measurement(size, round(lm.load_seconds, 3), speed, unit, quality, metric), outputs


def _agreement(before: Any, after: Any, task: str) -> tuple[float, float]:
    """(top-1 agreement, mean KL(before || after) in nats); encoders: (mean cosine similarity, 0)."""
    import torch

    if task == "base":
        return float(torch.nn.functional.cosine_similarity(before, after, dim=-1).mean()), 0.0
    logp = torch.log_softmax(before.float(), -1)
    logq = torch.log_softmax(after.float(), -1)
    kl = float((logp.exp() * (logp - logq)).sum(-1).mean())
    return float((before.argmax(-1) == after.argmax(-1)).float().mean()), max(kl, 0.0)


def quality_drop(before: float, after: float, metric: str) -> float:
    """How much worse `after` is than `before`, in percent (perplexity: relative rise; others: fall)."""
    if before == 0:
        return 0.0 if after == before else math.inf
    if metric.endswith("perplexity"):
        return (after / before - 1) * 100
    return (before - after) / before * 100


# --- the command --------------------------------------------------------------------------------------------


def _check_method(
    method: str,
    out: Path,
    gguf_type: str | None,
    group_size: int | None,
    skip: tuple[str, ...] | None,
    device: str,
) -> None:
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    if gguf_type is not None and method != "gguf":
        raise UsageError("--gguf-type applies to --method gguf only")
    if group_size is not None and method != "int4-weight":
        raise UsageError("--group-size applies to --method int4-weight only")
    if group_size is not None and group_size < 1:
        raise UsageError("--group-size must be at least 1")
    if skip is not None and method == "gguf":
        raise UsageError(
            "--skip does not apply to --method gguf (1-D tensors and embeddings are kept precise already)"
        )
    if method == "gguf" and out.suffix != ".gguf":
        raise UsageError(f"--method gguf writes a file: give --output a .gguf name (not {out})")
    if method != "gguf" and out.suffix == ".gguf":
        raise UsageError(f"--method {method} writes a folder; a .gguf --output needs --method gguf")
    if out.exists():
        raise UsageError(f"{out} already exists; remove it or pick another --output")
    if method == "dynamic-int8" and device not in ("auto", "cpu"):
        raise UsageError("--method dynamic-int8 runs on the CPU only (torch.ao kernels); use --device cpu")
    if method == "onnx-int8":
        if device not in ("auto", "cpu"):
            raise UsageError("--method onnx-int8 makes a model for ONNX Runtime on the CPU; use --device cpu")
        if skip is not None:
            raise UsageError("--skip does not apply to --method onnx-int8 (ONNX Runtime quantizes every MatMul)")
    if method in TORCHAO_METHODS:
        try:
            import torchao  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(
                f"--method {method} needs torchao: pip install 'llmkit[quant]'"
            ) from exc
    if method in BNB_METHODS:
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError(
                f"--method {method} needs a CUDA GPU (bitsandbytes); "
                "on a CPU use --method gguf or dynamic-int8"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(
                f"--method {method} needs bitsandbytes: pip install bitsandbytes"
            ) from exc


def _torchao_config(method: str, group_size: int, skip: list[str]) -> Any:
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup
    from transformers import TorchAoConfig

    if method == "int8-weight":
        quant = Int8WeightOnlyConfig()
    else:
        # Intx, not Int4WeightOnlyConfig: none of the latter's packing formats converted on a CPU with
        # torchao 0.18 (tried plain, plain_int32, opaque); Intx runs everywhere.
        quant = IntxWeightOnlyConfig(
            weight_dtype=torch.int4,  # type: ignore[attr-defined]  # (absent from torch's stubs)
            granularity=PerGroup(group_size),
        )
    return TorchAoConfig(quant_type=quant, modules_to_not_convert=skip)


def _bnb_config(method: str, skip: list[str]) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    if method == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=skip,
    )


def quantize(
    model: str,
    output: Path,
    *,
    method: str,
    gguf_type: str | None = None,
    group_size: int | None = None,
    skip: tuple[str, ...] | None = None,
    eval_texts: list[str] | None = None,
    eval_labels: list[str] | None = None,
    max_drop: float | None = None,
    device: str = "auto",
    dtype: str = DEFAULT_DTYPE,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    progress: Any = None,
    imatrix_texts: list[str] | None = None,
) -> QuantizeReport:
    """Quantize `model` with `method`, write it to `output`, and measure both models.

    Args:
        model: alias, folder, .gguf file or hub id.
        output: the folder to write (a .gguf file for --method gguf); must not exist.
        method: one of METHODS.
        gguf_type: GGUF tensor type (gguf_export.GGUF_TYPES; default q8_0).
        group_size: int4-weight group size (default DEFAULT_GROUP_SIZE).
        skip: module names kept in full precision (dotted prefix or suffix match); default `default_skip()`.
        eval_texts: evaluation text (LMs: joined; classifiers: one example each); default SAMPLE_TEXT.
        eval_labels: gold labels for `eval_texts` (classifiers: quality becomes accuracy).
        max_drop: refuse (delete the output, raise QualityGateError) if quality drops by more than this
        percent.
        device, dtype: where and in what float dtype both models run (dtype applies to unquantized parts).
        progress: called with a short status line at each step (the CLI prints it on stderr).
        imatrix_texts: --method gguf: calibration text for an importance matrix (kquants.compute_imatrix), so
            the 4/5-bit types round the weights that meet large activations more carefully.

    Returns:
        The QuantizeReport (also written as JSON to OUT/report.json, or beside a .gguf as <name>.report.json).

    Raises:
        UsageError, MissingDependencyError, ModelNotFoundError, QualityGateError (exit 5).
    """
    from llmkit import loading
    from llmkit.engines.llama_cpp import EngineLoadError, bindings_installed

    say = progress or (lambda message: None)
    output = Path(output)
    device = _check_args(method, output, gguf_type, group_size, skip, device, dtype, max_drop, eval_texts, eval_labels)
    _check_gguf_extras(method, gguf_type, imatrix_texts)
    task = loading.detect_task(model, revision=revision, trust_remote_code=trust_remote_code)
    if method == "onnx-int8":
        return _quantize_onnx(model, output, task=task, eval_texts=eval_texts, eval_labels=eval_labels,
                              max_drop=max_drop, revision=revision, allow_pickle=allow_pickle,
                              trust_remote_code=trust_remote_code, say=say)
    if task == "seq2seq-lm":
        raise UsageError(
            "quantize measures causal LMs, masked LMs, classifiers and encoders; not seq2seq models"
        )
    common: dict[str, Any] = {
        "revision": revision, "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code
    }

    adapter_source = loading.resolve(model)
    if adapter_source.kind == "adapter":  # refuse prompt/prefix adapters before loading anything
        from llmkit.adapters import read_adapter, refuse_unmergeable

        refuse_unmergeable(read_adapter(adapter_source.location))
    say(f"Loading {model} ({task})...")
    original = loading.load(model, task, device=device, dtype=dtype, **common)
    merged_dir: Path | None = None  # methods that reload the model quantize the merged copy saved here
    tmp: Path | None = None
    converted_cache: Path | None = None
    # Everything this run writes is a tempnames temporary removed in `finally`, whatever stops it (an error,
    # Ctrl-C, SIGTERM, SIGHUP); only `_publish` renames the finished output into place.
    try:
        for removed in _remove_stale_temporaries(output):
            say(tempnames.describe(removed))
        if adapter_source.kind == "adapter":
            from llmkit.adapters import merge_adapter

            # LoRA folds into the base weights; the merged model is both the "original" measured and what is
            # quantized.
            original.model = merge_adapter(original.model)
            output.parent.mkdir(parents=True, exist_ok=True)
            # pid-tagged like the output's own temporary, so a killed run's merged copy is found and removed later
            with signals.deferred():  # a stop signal between creating it and naming it here would leak it
                merged_dir = tempnames.temp_dir(_merged_path(output), journal=tempnames.journal_dir())
            original.model.save_pretrained(str(merged_dir))
            original.tokenizer.save_pretrained(str(merged_dir))
        skip_list = default_skip(original.model, task) if skip is None else list(skip)
        ev = _prepare_eval(original, task, eval_texts, eval_labels)
        say("Measuring the original...")
        before, before_out = _measure(original, ev, _original_size(original.source))

        settings: dict[str, Any] = {"method": method, "compute_dtype": str(original.dtype).replace("torch.", "")}
        notes: list[str] = []
        original_gguf = None
        with signals.deferred():  # a stop signal between creating it and naming it here would leak it
            tmp = _temporary_output(output, method)
        say(f"Quantizing ({method})...")
        if method == "gguf":
            _write_gguf(
                original, tmp, task=task, gguf_type=gguf_type, name=Path(model).stem, settings=settings,
                imatrix_texts=imatrix_texts, say=say,
            )  # fmt: skip
        else:
            _write_quantized_folder(
                original, tmp, model=str(merged_dir) if merged_dir is not None else model, task=task, method=method, group_size=group_size or DEFAULT_GROUP_SIZE,
                skip_list=skip_list, device=device, dtype=dtype, common=common, settings=settings,
            )
        source = original.source
        del original

        say("Measuring the quantized model...")
        measured = False
        if method == "gguf" and bindings_installed():
            try:
                after, agreement_kl = _measure_gguf(tmp, ev, before_out)
                measured = True
                notes.append(
                    "the .gguf was measured under llama.cpp (load, tokens/s, perplexity and top-1 by teacher "
                    "forcing); the original's float weights under transformers; no KL divergence (llama.cpp's "
                    "server returns no full distributions)"
                )
                if source.kind == "gguf":
                    say("Measuring the original .gguf under llama.cpp...")
                    original_gguf, _ = _measure_gguf(Path(source.location), ev, before_out)
            except EngineLoadError as exc:  # e.g. a tokenizer llama.cpp does not know: measure it de-quantized
                notes.append(f"llama.cpp could not load the .gguf ({exc})")
        if not measured:
            if method == "gguf":
                # Measured through its float weights; the de-quantized copy goes when the run ends.
                converted_cache = loading.converted_dir(tmp)
                notes.append(
                    "the .gguf was measured de-quantized through transformers (the llama.cpp bindings are not "
                    "installed or could not load it): its speed is not llama.cpp's"
                )
            after_lm = loading.load(
                str(tmp), task, device=device, dtype=dtype if method == "gguf" else "auto", **common
            )
            after, after_out = _measure(after_lm, ev, _disk_size(tmp), reference=before_out)
            if method == "gguf":
                after = replace(after, engine="transformers (de-quantized)")
            agreement_kl = _agreement(before_out, after_out, task)
            del after_lm
        report = _report(
            model, method, output, task, settings, notes, ev, before, after, agreement_kl, max_drop,
        )
        report = replace(report, original_gguf=original_gguf)
        if not report.passed:
            raise QualityGateError(
                f"quality dropped {quality_drop(before.quality, after.quality, before.quality_metric):.2f}% "
                f"({before.quality_metric} "
                f"{before.quality:.4g} -> {after.quality:.4g}), "
                f"more than --max-drop {max_drop:g}; nothing was written. Try a gentler method "
                "(e.g. --method "
                "int8-weight, --gguf-type q8_0) or --skip more modules"
            )
        _publish(report, tmp, output, method)
        return report
    finally:
        if tmp is not None:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            tempnames.forget(tmp, tempnames.journal_dir())
        if merged_dir is not None:
            shutil.rmtree(merged_dir, ignore_errors=True)
            tempnames.forget(merged_dir, tempnames.journal_dir())
        if converted_cache is not None and converted_cache.exists():  # the float copy made for measuring
            shutil.rmtree(converted_cache, ignore_errors=True)


# --- the steps of quantize() --------------------------------------------------------------------------------


def _check_args(
    method: str,
    output: Path,
    gguf_type: str | None,
    group_size: int | None,
    skip: tuple[str, ...] | None,
    device: str,
    dtype: str,
    max_drop: float | None,
    eval_texts: list[str] | None,
    eval_labels: list[str] | None,
) -> str:
    """Refuse impossible arguments before any model is loaded; return the device to run on."""
    _check_method(method, output, gguf_type, group_size, skip, device)
    if max_drop is not None and max_drop < 0:
        raise UsageError("--max-drop must be >= 0 (a percentage)")
    if eval_labels is not None and eval_texts is not None and len(eval_labels) != len(eval_texts):
        raise DataError("--eval-data: every example needs a label (or none of them)")
    if method in ("dynamic-int8", "onnx-int8"):
        if dtype not in ("auto", "float32"):
            raise UsageError(f"--method {method} computes in float32 where it does not in int8; drop --dtype")
        return "cpu"
    return device


def _original_size(source: Any) -> int | None:
    """Size on disk of what llmkit loads for the original (a GGUF's de-quantized cache; None for hub ids)."""
    from llmkit import loading

    if source.kind == "gguf":
        return _disk_size(loading.convert_gguf(Path(source.location), progress=False))
    if source.kind == "dir":
        return _disk_size(Path(source.location))
    return None


def _remove_stale_temporaries(output: Path) -> list[tempnames.Removed]:
    """Temporaries of earlier runs for the same output whose process is gone (a kill -9 mid-write)."""
    journal = tempnames.journal_dir()
    removed = tempnames.sweep(output, journal=journal) + tempnames.sweep(_merged_path(output), journal=journal)
    if output.suffix == ".gguf":  # its report beside it is written under a temporary name too
        removed += tempnames.sweep(_gguf_report_path(output), journal=journal)
    return removed


def _merged_path(output: Path) -> Path:
    """The name the merged copy of an adapter's model is a temporary of (never renamed into place)."""
    return output.parent / f"{output.name}.merged"


def _temporary_output(output: Path, method: str) -> Path:
    """An empty temporary file (gguf) or folder beside `output`, renamed into place only when all went well.

    Its name carries this process's id and it is recorded in llmkit's journal of temporaries, so that a later
    run (or `llmkit models --clean`) can tell a killed run's leftovers from a live run's file.
    """
    if method == "gguf":
        return tempnames.temp_file(output, ".gguf", journal=tempnames.journal_dir())
    return tempnames.temp_dir(output, journal=tempnames.journal_dir())


def _check_gguf_extras(method: str, gguf_type: str | None, imatrix_texts: list[str] | None) -> None:
    """K-quant types and --imatrix need llama.cpp's ggml: say so (exit 4) before any model is loaded."""
    from llmkit import kquants

    if imatrix_texts is not None:
        if method != "gguf":
            raise UsageError("--imatrix applies to --method gguf only")
        if (gguf_type or "q8_0") in ("f16", "q8_0"):
            raise UsageError(
                "--imatrix changes nothing for f16/q8_0; use it with a 4/5-bit --gguf-type such as q4_k_m"
            )
        if not any(t.strip() for t in imatrix_texts):
            raise DataError("the --imatrix calibration text is empty; give a text file with some paragraphs")
    if method == "gguf" and (gguf_type in kquants.PRESETS or imatrix_texts is not None):
        kquants.require()


def _write_gguf(
    original: Any,
    tmp: Path,
    *,
    task: str,
    gguf_type: str | None,
    name: str,
    settings: dict[str, Any],
    imatrix_texts: list[str] | None = None,
    say: Any = None,
) -> None:
    """--method gguf: write the original causal LM as a GGUF file (records the type in `settings`)."""
    from llmkit import kquants
    from llmkit.gguf_export import DEFAULT_GGUF_TYPE, write_gguf

    if task != "causal-lm":
        raise UsageError(
            "--method gguf writes causal LMs only; use --method dynamic-int8 or int8-weight"
        )
    settings["gguf_type"] = gguf_type or DEFAULT_GGUF_TYPE
    imatrix = None
    if imatrix_texts is not None:
        if say is not None:
            say("Computing the importance matrix on the calibration text...")
        imatrix = kquants.compute_imatrix(original.model, original.tokenizer, imatrix_texts)
        settings["imatrix_tokens"] = len(kquants.calibration_ids(original.tokenizer, imatrix_texts))
    write_gguf(original.model, original.tokenizer, tmp, gguf_type=settings["gguf_type"], name=name, imatrix=imatrix)


def _measure_gguf(path: Path, ev: _Eval, reference: Any) -> tuple[Measurement, tuple[float, float | None]]:
    """A .gguf as llama.cpp runs it: file size, load time, tokens/s on SPEED_PROMPT, teacher-forced perplexity
    of the evaluation tokens, and top-1 agreement with `reference` (the original's logits)."""
    from llmkit import llama_measure

    speed = llama_measure.measure_speed(path, SPEED_PROMPT, new_tokens=SPEED_NEW_TOKENS)
    scores = llama_measure.score_tokens(path, ev.ids[0].tolist())
    top1 = reference.argmax(-1).tolist()
    agreement = sum(a == b for a, b in zip(scores.top1, top1, strict=True)) / len(top1)
    measured = Measurement(
        path.stat().st_size, speed.load_seconds, speed.tokens_per_second, "tokens/s", scores.perplexity,
        "perplexity", engine="llama-cpp",
    )  # fmt: skip
    return measured, (agreement, None)


def _write_quantized_folder(
    original: Any,
    tmp: Path,
    *,
    model: str,
    task: str,
    method: str,
    group_size: int,
    skip_list: list[str],
    device: str,
    dtype: str,
    common: dict[str, Any],
    settings: dict[str, Any],
) -> None:
    """The folder methods: quantize (dynamic-int8 in place; torchao/bnb by loading again) and save to `tmp`.

    dynamic-int8 converts `original.model` in place, so it cannot be measured afterwards.
    """
    from llmkit import loading

    settings["skip"] = skip_list
    names = linear_names(original.model, skip_list)
    unmatched = [
        p for p in skip_list if not any(_matches(n, [p]) for n, _ in original.model.named_modules())
    ]
    if unmatched:
        raise UsageError(
            f"--skip {unmatched[0]!r} matches no module of this model (e.g. lm_head, down_proj)"
        )
    if method == "dynamic-int8":
        apply_dynamic_int8(original.model, names)
        settings["quantized_modules"] = names
        original.model.config.save_pretrained(str(tmp))
        if getattr(original.model, "generation_config", None) is not None:
            original.model.generation_config.save_pretrained(str(tmp))
        save_dynamic_int8(original.model, tmp)
    else:
        if method == "int4-weight":
            settings["group_size"] = group_size
        config = (
            _torchao_config(method, group_size, skip_list)
            if method in TORCHAO_METHODS
            else _bnb_config(method, skip_list)
        )
        quantized_lm = loading.load(
            model,
            task,
            device=device,
            dtype=dtype,
            model_kwargs={"quantization_config": config},
            **common,
        )
        quantized_lm.model.save_pretrained(str(tmp))
        del quantized_lm
    original.tokenizer.save_pretrained(str(tmp))
    (tmp / loading.QUANTIZATION_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _report(
    model: str,
    method: str,
    output: Path,
    task: str,
    settings: dict[str, Any],
    notes: list[str],
    ev: _Eval,
    before: Measurement,
    after: Measurement,
    agreement_kl: tuple[float, float | None],
    max_drop: float | None,
) -> QuantizeReport:
    """The report comparing the two measurements; `passed` applies the --max-drop gate."""
    agreement, kl = agreement_kl
    drop = quality_drop(before.quality, after.quality, before.quality_metric)
    passed = max_drop is None or drop <= max_drop
    return QuantizeReport(
        model=model,
        method=method,
        settings={k: v for k, v in settings.items() if k != "quantized_modules"},
        output=str(output) if passed else None,
        task=task,
        original=before,
        quantized=after,
        size_ratio=round(after.size_bytes / before.size_bytes, 4)
        if before.size_bytes and after.size_bytes
        else None,
        speedup=round(after.speed / before.speed, 3) if before.speed else 0.0,
        quality_drop_percent=round(drop, 3),
        top1_agreement=round(agreement, 4),
        kl_divergence=None if kl is None else round(kl, 5),
        eval_tokens=int(ev.ids.shape[1]) if ev.ids is not None else len(ev.texts),
        max_drop=max_drop,
        passed=passed,
        notes=notes,
    )


def _publish(report: QuantizeReport, tmp: Path, output: Path, method: str) -> None:
    """Write the report and rename the temporary output into place.

    No de-quantized copy of a .gguf is kept: llama.cpp runs the file itself, and a float copy (540 MB for
    SmolLM2) per run piled up under $LLMKIT_HOME/converted.
    """
    text = json.dumps(asdict(report), indent=2) + "\n"
    if method != "gguf":
        (tmp / REPORT_NAME).write_text(text, encoding="utf-8")
        os.replace(tmp, output)
        make_public(output)
        return
    # Two files, two renames: a stop signal waits until both are done, so neither is there without the other.
    report_path = _gguf_report_path(output)
    with signals.deferred(), tempnames.replacing(report_path, journal=tempnames.journal_dir()) as report_tmp:
        report_tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
        make_public(output)


def _gguf_report_path(output: Path) -> Path:
    return output.parent / f"{output.stem}.report.json"


# --- onnx-int8: ONNX Runtime's dynamic quantization of the export, both sides measured on ONNX Runtime -----------


def _quantize_onnx(
    model: str,
    output: Path,
    *,
    task: str,
    eval_texts: list[str] | None,
    eval_labels: list[str] | None,
    max_drop: float | None,
    revision: str | None,
    allow_pickle: bool,
    trust_remote_code: bool,
    say: Any,
) -> QuantizeReport:
    """--method onnx-int8: the float32 export (made now if not cached) quantized by ONNX Runtime into `output`.

    Both the float32 export and the int8 folder are measured as classify / fill-mask run them (ONNX Runtime,
    batches of ONNX_BATCH_SIZE sorted by length): size on disk, load time, examples/s, and quality (accuracy on
    labelled --eval-data for a classifier, masked-token perplexity for a masked LM, else agreement with the
    float32 outputs), plus top-1 agreement and KL divergence against float32.
    """
    from llmkit import loading
    from llmkit.engines import onnx, onnx_export

    if task not in ONNX_TASKS:
        raise UsageError(f"--method onnx-int8 quantizes encoders (classifiers, masked LMs, base encoders), not a "
                         f"{task}; for a causal LM use --method gguf or int8-weight")
    why = onnx.unsupported(model, head=task, revision=revision)
    if why is not None:
        raise UsageError(f"--method onnx-int8 cannot quantize {model}: {why}")
    folder = onnx.model_folder(model, revision)
    assert folder is not None
    say(f"Loading {model} on ONNX Runtime ({task}; exported once if it is not cached)...")
    original = onnx.load(model, task, revision=revision, allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code)
    if original.notes:  # it was exported just now: its load time is that of the cached export, as later runs see
        original = onnx.load(model, task, revision=revision)
    ev = _onnx_eval(original, task, eval_texts, eval_labels)
    say("Measuring the float32 export...")
    before, before_out = _onnx_measure(original, ev, _disk_size(original.model.export.folder))
    for removed in _remove_stale_temporaries(output):
        say(f"Removed {removed.path} ({removed.size_bytes / 1e6:.1f} MB), left by process {removed.owner_pid} "
            "(no longer running) from an earlier run for this output")
    tmp = _temporary_output(output, "onnx-int8")
    try:
        say("Quantizing (onnx-int8: ONNX Runtime dynamic quantization, int8 weights per channel)...")
        settings = onnx_export.quantize_int8(original.model.export, tmp)
        shutil.copyfile(folder / "config.json", tmp / "config.json")  # what the model is, for every tool
        (tmp / loading.QUANTIZATION_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        say("Measuring the int8 model...")
        quantized = onnx.load(str(tmp), task)
        after, after_out = _onnx_measure(quantized, ev, _disk_size(tmp), reference=before_out)
        agreement_kl = _onnx_agreement(before_out, after_out, task)
        notes = ["both models measured on ONNX Runtime (the float32 export and the int8 graph), as classify and "
                 "fill-mask run them"]
        report = _report(model, "onnx-int8", output, task, dict(settings), notes, ev, before, after, agreement_kl,
                         max_drop)
        if not report.passed:
            raise QualityGateError(
                f"quality dropped {report.quality_drop_percent:.2f}% ({before.quality_metric} {before.quality:.4g} "
                f"-> {after.quality:.4g}), more than --max-drop {max_drop:g}; nothing was written. Keep the "
                "float32 model (classify runs it on ONNX Runtime already)"
            )
        _publish(report, tmp, output, "onnx-int8")
        return report
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        tempnames.forget(tmp, tempnames.journal_dir())


def _onnx_eval(lm: Any, task: str, texts: list[str] | None, labels: list[str] | None) -> _Eval:
    """The evaluation inputs of `_prepare_eval`, made with the export's own tokenizer (no transformers)."""
    import numpy as np

    tok = lm.tokenizer
    if task == "masked-lm":
        text = "\n".join(t for t in (texts or [SAMPLE_TEXT]) if t.strip())
        limit = min(EVAL_MAX_TOKENS, int(getattr(lm.model.config, "max_position_embeddings", EVAL_MAX_TOKENS) or
                                         EVAL_MAX_TOKENS))
        ids = np.array([tok(text, truncation=True, max_length=limit)["input_ids"]], dtype=np.int64)
        if ids.shape[1] < 2:
            raise DataError("--eval-data has fewer than 2 tokens; give some text to measure perplexity on")
        if tok.mask_token_id is None:
            raise UsageError("this masked LM's tokenizer has no mask token; it cannot be evaluated")
        special = np.isin(ids[0], list(tok.special_ids()))
        chosen = (np.arange(ids.shape[1]) % MASK_EVERY == MASK_EVERY // 2) & ~special
        masked = ids.copy()
        masked[0, chosen] = tok.mask_token_id
        gold = np.full_like(ids, -100)
        gold[0, chosen] = ids[0, chosen]
        return _Eval(task, ids=masked, labels=gold)
    sample = texts or [s.strip() + "." for s in SAMPLE_TEXT.split(". ") if s.strip()]
    gold_ids = None
    if labels is not None and task == "sequence-classification":
        config = lm.model.config
        label2id = {str(k): int(v) for k, v in (config.label2id or {}).items()}
        gold_ids = []
        for label in labels:
            if label in label2id:
                gold_ids.append(label2id[label])
            elif label.isdigit() and int(label) < config.num_labels:
                gold_ids.append(int(label))
            else:
                raise DataError(f"label {label!r} is not one of the model's labels ({', '.join(label2id)})")
    return _Eval(task, texts=list(sample), gold=gold_ids)


def _onnx_outputs(lm: Any, ev: _Eval) -> tuple[Any, float | None]:
    """(logits or mean-pooled hidden states, masked-token perplexity or None) through ONNX Runtime."""
    import numpy as np

    from llmkit.tokens import pad_batch

    net = lm.model
    if ev.task == "masked-lm":
        mask = np.ones_like(ev.ids)
        logits = net.logits({"input_ids": ev.ids, "attention_mask": mask})[0]
        picked = logits[ev.labels[0] != -100]
        shifted = picked - picked.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        gold = ev.labels[0][ev.labels[0] != -100]
        loss = float(-logp[np.arange(len(gold)), gold].mean())
        ppl = perplexity(loss)
        return picked, math.inf if ppl is None else ppl
    encoded = lm.tokenizer(ev.texts, truncation=True, max_length=_onnx_max_tokens(lm))
    features = [dict(zip(encoded, row, strict=True)) for row in zip(*encoded.values(), strict=True)]
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    chunks = [order[k : k + ONNX_BATCH_SIZE] for k in range(0, len(order), ONNX_BATCH_SIZE)]
    batches = [pad_batch([features[i] for i in chunk], lm.tokenizer, arrays="numpy") for chunk in chunks]
    rows: list[Any] = [None] * len(features)
    for chunk, batch, out in zip(chunks, batches, net.many(batches), strict=True):
        if ev.task == "base":  # sentence embeddings: the mean of the last hidden states over real tokens
            weights = batch["attention_mask"][..., None].astype(np.float32)
            out = (out * weights).sum(1) / weights.sum(1)
        for row, i in enumerate(chunk):
            rows[i] = out[row]
    return np.stack(rows), None


def _onnx_max_tokens(lm: Any) -> int:
    from llmkit.scoring import max_input_tokens

    return max_input_tokens(lm.model, lm.tokenizer)


def _onnx_measure(lm: Any, ev: _Eval, size: int | None, reference: Any = None) -> tuple[Measurement, Any]:
    """One model on ONNX Runtime: its outputs, quality and examples/s (after one untimed warm-up pass)."""
    outputs, loss_quality = _onnx_outputs(lm, ev)
    if loss_quality is not None:
        metric, quality = "masked-perplexity", loss_quality
    elif ev.gold is not None:
        metric, quality = "accuracy", accuracy(list(ev.gold), outputs.argmax(-1).tolist())
    else:
        metric = "agreement"
        quality = 1.0 if reference is None else _onnx_agreement(reference, outputs, ev.task)[0]
    started = time.perf_counter()
    _onnx_outputs(lm, ev)
    seconds = max(time.perf_counter() - started, 1e-9)
    count = 1 if ev.task == "masked-lm" else len(ev.texts)
    measured = Measurement(size, round(lm.load_seconds, 3), count / seconds, "examples/s", quality, metric,
                           engine="onnxruntime")
    return measured, outputs


def _onnx_agreement(before: Any, after: Any, task: str) -> tuple[float, float]:
    """(top-1 agreement, mean KL(before || after) in nats) of numpy outputs; encoders: (mean cosine, 0)."""
    import numpy as np

    if task == "base":
        norms = np.linalg.norm(before, axis=-1) * np.linalg.norm(after, axis=-1)
        return float(((before * after).sum(-1) / np.maximum(norms, 1e-12)).mean()), 0.0

    def log_softmax(x: Any) -> Any:
        shifted = x - x.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    logp, logq = log_softmax(before.astype(np.float64)), log_softmax(after.astype(np.float64))
    kl = float((np.exp(logp) * (logp - logq)).sum(-1).mean())
    return float((before.argmax(-1) == after.argmax(-1)).mean()), max(kl, 0.0)
