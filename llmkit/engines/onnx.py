"""The ONNX Runtime engine for encoders: classify, fill-mask and embed, without torch or transformers.

A model folder is exported once (onnx_export.py: torch.onnx.export, then ONNX Runtime's transformer optimizer)
into a cache under $LLMKIT_HOME/onnx/, keyed by the model's files (names, sizes, modification times), the head,
and the versions of torch, transformers, onnx and onnxruntime. The cache holds the graph, the tokenizer exactly
as transformers builds it (its `tokenizers` pipeline, saved from the loaded tokenizer), and a manifest with the
checksums of both. Later runs check the checksums, then load the graph into an `InferenceSession` and tokenize
with the `tokenizers` library: neither torch nor transformers is imported. A cached export whose checksum does
not match is deleted and made again; an export that fails is remembered (a `.refused.json` beside the exports)
so that `--engine auto` does not try it again on every run.

A folder written by `llmkit quantize --method onnx-int8` carries the same manifest, graph and tokenizer, and
loads the same way (no export).

Importing this module is cheap: onnxruntime and tokenizers are imported when a model loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from llmkit.engines.onnx_cache import (
    OUTPUTS,
    TOKENIZER,
    Export,
    ExportError,
    cached_export,
    damage,
    export_dir,
    onnx_folder,
    read_json,
    refusal,
)
from llmkit.errors import ModelNotFoundError, UsageError, library_words

NAME = "onnx"  # as --engine spells it
name = NAME  # the engine protocol's attribute (llmkit.engines.Engine): this module is the engine
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


# --- where models are, and what they are ------------------------------------------------------------------------


def model_folder(spec: str, revision: str | None = None) -> Path | None:
    """The local folder a spec names (a folder, a bundled folder alias, or a hub id already in the Hugging Face
    cache), or None (a .gguf file, an adapter, a hub id not downloaded yet, or nothing at all)."""
    from llmkit import loading

    try:
        source = loading.resolve(spec)
    except Exception:  # noqa: BLE001 - loading reports bad specs with its own messages when transformers runs
        return None
    if source.kind == "dir":
        return Path(source.location)
    if source.kind != "hub":
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(source.location, "config.json", revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def not_local(spec: str) -> str:
    """Why a spec that `model_folder` did not find is not for this engine (one line)."""
    from llmkit import loading

    try:
        kind = loading.resolve(spec).kind
    except Exception:  # noqa: BLE001 - transformers' loading says what is wrong with the spec
        return "not a model folder"
    return {
        "gguf": "a GGUF file is a causal LM",
        "adapter": "a peft adapter runs on transformers",
        "hub": "not downloaded yet (transformers downloads it; later runs export it to ONNX)",
    }.get(kind, "not a model folder")


def head_of_config(config: dict[str, Any]) -> str | None:
    """The head a config.json names, read by suffix alone (no transformers import): "sequence-classification",
    "masked-lm", "causal-lm", "base", or None when it names something else (transformers then decides)."""
    archs = config.get("architectures") or []
    if not archs:
        return None if config.get("is_encoder_decoder") else "base"
    arch = str(archs[0])
    for suffix, head in (("ForSequenceClassification", "sequence-classification"), ("ForMaskedLM", "masked-lm"),
                         ("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm")):
        if arch.endswith(suffix):
            return head
    if arch.endswith("Model") and not config.get("is_encoder_decoder"):
        return "base"
    return None


def config_namespace(config: dict[str, Any]) -> SimpleNamespace:
    """config.json as attributes, the label maps typed as transformers types them (id2label: int keys; without
    any, num_labels (default 2) labels LABEL_0, LABEL_1, ...)."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    if not id2label:
        id2label = {i: f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}
    label2id = {str(k): int(v) for k, v in (config.get("label2id") or {}).items()} or {v: k for k, v in id2label.items()}
    fields = dict(config, id2label=id2label, label2id=label2id, num_labels=len(id2label))
    fields.setdefault("problem_type", None)
    return SimpleNamespace(**fields)


# --- what the engine cannot run ------------------------------------------------------------------------------


def cuda_provider() -> bool:
    """Whether this onnxruntime build has the CUDA execution provider (onnxruntime-gpu)."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def unsupported(spec: str, **settings: Any) -> str | None:
    """The engine protocol's question: why this engine cannot run `spec` for settings["head"] with these settings
    (adapter, dtype, revision), or None. Config files only; the device is the chooser's (choose.py)."""
    adapter, revision = settings.get("adapter"), settings.get("revision")
    folder = model_folder(spec, revision) if adapter is None else None
    if folder is None and adapter is None:
        return not_local(spec)
    config = read_json(folder / "config.json") if folder is not None else None
    return folder_unsupported(folder, settings.get("head"), config=config, adapter=adapter,
                              dtype=settings.get("dtype", "auto"))


def folder_unsupported(folder: Path | None, head: str | None, *, config: dict[str, Any] | None,
                       adapter: str | None = None, dtype: str = "auto") -> str | None:
    """Why this engine cannot run the model in `folder` (one line, user-facing), from its files alone; None when
    it can. Remote code is refused whatever --trust-remote-code says: the exporter takes the stock classes."""
    if adapter is not None:
        return "a peft adapter runs on transformers"
    if folder is None:
        return "not a model folder"
    if dtype not in ("auto", "float32"):
        return f"--dtype {dtype}: the ONNX engine runs float32 (or an onnx-int8 folder)"
    if config is None:
        return "its config.json is unreadable"
    if config.get("auto_map"):
        return "it ships its own model code (remote code), which the exporter does not take"
    if config.get("quantization_config") or (folder / "llmkit_quantization.json").exists():
        return "it is quantized for transformers (llmkit quantize); quantize --method onnx-int8 makes an ONNX one"
    if head not in OUTPUTS:
        return f"it has no encoder head the ONNX engine runs ({head or 'unknown architecture'})"
    if not any((folder / name).is_file() for name in WEIGHT_NAMES):
        return "no weights file in the folder (sharded or unusual layout)"
    return None


# --- the model ---------------------------------------------------------------------------------------------------


class OnnxEncoder:
    """An exported encoder in an `InferenceSession`: padded numpy batches in, float32 numpy out.

    Attributes:
        config: the model's config (labels, max positions, ...), as classify reads it from a transformers model.
        input_names: the graph's inputs (RoBERTa and DistilBERT graphs take no token type ids).
        output: "logits" or "last_hidden_state".
        threads: batches run at once on worker threads, one core each (`many`).
    """

    engine: ClassVar[str] = NAME

    def __init__(self, export: Export, threads: int, provider: str = "CPUExecutionProvider") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One core per run, several runs at once (`many`): on 2 cores this beat one run on 2 intra-op threads,
        # whose spinning workers stall when another process holds a core (as the numpy BERT measured before).
        options.intra_op_num_threads = 1 if threads > 1 else max(threads, 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: stderr is llmkit's
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(export.graph), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(f"ONNX Runtime could not load {export.graph} ({library_words(exc)})") from exc
        self.export = export
        self.threads = max(threads, 1)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output = str(export.manifest.get("output") or self.session.get_outputs()[0].name)
        self.config = config_namespace(export.manifest.get("config") or {})

    def run(self, batch: dict[str, Any]) -> Any:
        """The graph's output (float32 numpy) for one padded batch (int64 arrays by input name); a graph input
        the batch lacks (token type ids of a tokenizer that gives none) is zeros, as transformers' models use."""
        import numpy as np

        ids = batch["input_ids"]
        feed = {}
        for name in self.input_names:
            value = batch.get(name)
            feed[name] = np.zeros_like(ids) if value is None else np.ascontiguousarray(value, dtype=np.int64)
        return self.session.run([self.output], feed)[0].astype(np.float32, copy=False)

    def logits(self, batch: dict[str, Any]) -> Any:
        """Classifier logits [batch, labels] or MLM logits [batch, length, vocab]."""
        return self.run(batch)

    def hidden_states(self, batch: dict[str, Any]) -> Any:
        """The last hidden states [batch, length, hidden] of a base-model export."""
        return self.run(batch)

    def many(self, batches: list[dict[str, Any]], finish: Callable[[dict[str, Any], Any], Any] | None = None) -> list[Any]:
        """`run` on each batch, `threads` at a time (onnxruntime releases the GIL while it runs), in order.

        Args:
            batches: padded batches; hand over many at once: a worker takes the next one as soon as it is free.
            finish: `finish(batch, output)` runs on the worker thread right after each batch, and its result is
                returned instead of the output (embed pools there, so only `threads` hidden states live at once).
        """
        def one(batch: dict[str, Any]) -> Any:
            output = self.run(batch)
            return output if finish is None else finish(batch, output)

        workers = max(1, min(self.threads, len(batches)))
        if workers == 1:
            return [one(b) for b in batches]
        from concurrent.futures import ThreadPoolExecutor

        # the biggest batches first, so that a worker left without work at the end idles only for a small one
        order = sorted(range(len(batches)), key=lambda i: -batches[i]["input_ids"].size)
        with ThreadPoolExecutor(workers) as pool:
            done = dict(zip(order, pool.map(lambda i: one(batches[i]), order), strict=True))
        return [done[i] for i in range(len(batches))]


def load(
    spec: str,
    head: str,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    threads: int | None = None,
) -> Any:
    """`spec` on ONNX Runtime for `head`, exported first when no intact export is cached.

    Args:
        spec: a model folder (or alias / cached hub id) that `choose.choose_encoder` accepted.
        head: "sequence-classification", "masked-lm" or "base".
        device: "cpu", or "cuda" (the CUDA execution provider, where onnxruntime-gpu is installed).
        threads: batches run at once (default: llmkit.threads.cpu_threads()).

    Returns:
        A `loading.LoadedModel` whose model is an `OnnxEncoder` and whose tokenizer is an `EncoderTokenizer`.

    Raises:
        ExportError: the export failed (also remembered, see `refusal`), or the graph would not load.
        LlmkitError: the model itself could not be loaded to export it (as transformers would say).
    """
    from llmkit import loading
    from llmkit.threads import cpu_threads

    started = time.perf_counter()
    folder = model_folder(spec, revision)
    if folder is None:
        raise ModelNotFoundError(f"{spec}: not a local model folder, so the ONNX engine cannot run it")
    notes: list[str] = []
    export = onnx_folder(folder)
    if export is not None:
        broken = damage(export)
        if broken is not None:
            raise ModelNotFoundError(f"{spec}: {broken}; make the folder again (llmkit quantize --method onnx-int8)")
        if export.manifest.get("head") != head:
            raise UsageError(f"{spec} is an ONNX {export.manifest.get('head')} model, not a {head} one")
    else:
        export = cached_export(folder, head)
        if export is None:
            previous = refusal(folder, head)
            if previous is not None:
                raise ExportError(previous)
            from llmkit.engines import onnx_export

            export = onnx_export.export(spec, folder, head, export_dir(folder, head), revision=revision,
                                        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
            notes.append(f"exported to ONNX in {export.manifest.get('export_seconds')} s")
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    model = OnnxEncoder(export, cpu_threads() if threads is None else threads, provider)
    from llmkit.tokens import EncoderTokenizer

    tokenizer = EncoderTokenizer(export.folder / TOKENIZER, export.manifest.get("tokenizer") or {})
    source = loading.ModelSource(spec, "dir", str(folder))
    return loading.LoadedModel(model, tokenizer, source, device, "float32" if not export.manifest.get("quantization")
                               else "int8", time.perf_counter() - started, notes)


class OnnxFeatures:
    """The feature-extraction handle `embed` takes (as transformers_encoder.TransformersEncoder offers it): a base
    export's last hidden states for padded numpy batches, the tokenizer, and the model's position limit.

    Attributes:
        model: the `OnnxEncoder` (its `config` says the model type, for the position offset of RoBERTa-likes).
        tokenizer: the export's `EncoderTokenizer` (its `backend_tokenizer` is the `tokenizers` pipeline).
        max_positions: config.json's max_position_embeddings, if any.
    """

    name: ClassVar[str] = NAME

    def __init__(self, loaded: Any) -> None:
        self.model: OnnxEncoder = loaded.model
        self.tokenizer = loaded.tokenizer
        positions = getattr(self.model.config, "max_position_embeddings", None)
        self.max_positions = int(positions) if isinstance(positions, int) else None

    def hidden_states(self, batch: dict[str, Any]) -> Any:
        """float32 [batch, length, hidden] for one padded batch of int64 arrays."""
        return self.model.hidden_states(batch)

    def many(self, batches: list[dict[str, Any]], finish: Callable[[dict[str, Any], Any], Any] | None = None) -> list[Any]:
        """`hidden_states` of several batches, run on the worker threads at once, in order (`finish`: see
        `OnnxEncoder.many`)."""
        return self.model.many(batches, finish)


def load_encoder(
    spec: str,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    threads: int | None = None,
) -> OnnxFeatures:
    """`spec` as a base encoder on ONNX Runtime (exported once; an onnx-int8 folder of a base model loads as it
    is), for embed. Raises as `load` does."""
    return OnnxFeatures(load(spec, "base", revision=revision, allow_pickle=allow_pickle,
                             trust_remote_code=trust_remote_code, device=device, threads=threads))
