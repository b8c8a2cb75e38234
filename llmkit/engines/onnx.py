"""The ONNX Runtime engine for encoders: classify, fill-mask and (soon) embed, without torch or transformers.

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

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from llmkit.errors import ModelNotFoundError, UsageError

NAME = "onnx"  # as --engine spells it
CACHE_DIR = "onnx"  # under $LLMKIT_HOME
MANIFEST = "llmkit_onnx.json"  # in an export (and in an onnx-int8 folder): what it is and its checksums
GRAPH = "model.onnx"
TOKENIZER = "tokenizer.json"
REFUSED_SUFFIX = ".refused.json"  # beside the exports: the export of that key failed, and why
FORMAT_VERSION = 1  # bump when the cache layout or the export recipe changes: old exports are then not found
# The heads an export serves and the graph output each one gives.
OUTPUTS = {"sequence-classification": "logits", "masked-lm": "logits", "base": "last_hidden_state"}
# Version of each library that shapes an export: a new one exports again.
VERSIONED = ("torch", "transformers", "onnx", "onnxruntime")
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CHECKSUM_CHUNK = 1 << 22  # bytes read at a time for the checksum


class ExportError(UsageError):
    """The model could not be exported to ONNX (or the export did not match transformers): exit 2 when
    --engine onnx asked for it; --engine auto runs transformers instead and says why."""


@dataclass(frozen=True)
class Export:
    """An export (or an onnx-int8 folder) on disk and what its manifest says."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def graph(self) -> Path:
        return self.folder / GRAPH


# --- where models and exports are -------------------------------------------------------------------------------


def cache_root() -> Path:
    from llmkit.loading import llmkit_home

    return llmkit_home() / CACHE_DIR


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


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def versions() -> dict[str, str]:
    """Installed versions of the libraries an export depends on (from their metadata: no import)."""
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cache_key(folder: Path, head: str) -> str:
    """The key of `folder`'s export for `head`: its files (name, size, modification time), the head, the
    library versions and FORMAT_VERSION. A changed file or a new library makes a new key."""
    parts = [f"format={FORMAT_VERSION}", f"head={head}", *(f"{k}={v}" for k, v in sorted(versions().items()))]
    for path in sorted(folder.iterdir()):
        if path.is_file():  # follows the hub cache's symlinks to the blobs
            stat = path.stat()
            parts.append(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def export_dir(folder: Path, head: str) -> Path:
    """Where the export of `folder` for `head` lives (it may not exist)."""
    name = folder.name if folder.name not in ("", "model") else folder.parent.name
    if len(folder.parts) >= 3 and folder.parent.name == "snapshots":  # hub cache: models--org--name/snapshots/<sha>
        name = folder.parent.parent.name.removeprefix("models--")
    short = {"sequence-classification": "cls", "masked-lm": "mlm", "base": "base"}[head]
    return cache_root() / f"{name}-{short}-{cache_key(folder, head)}"


def refused_marker(target: Path) -> Path:
    return target.parent / (target.name + REFUSED_SUFFIX)


def refusal(folder: Path, head: str) -> str | None:
    """Why the export of `folder` for `head` failed before (same files and versions), or None."""
    data = read_json(refused_marker(export_dir(folder, head)))
    return str(data.get("reason")) if data else None


def onnx_folder(folder: Path) -> Export | None:
    """The export a model folder itself holds (`quantize --method onnx-int8` output), or None."""
    manifest = read_json(folder / MANIFEST)
    if manifest is None or not (folder / GRAPH).is_file():
        return None
    return Export(folder, manifest)


# --- checksums ------------------------------------------------------------------------------------------------


def checksum(path: Path) -> str:
    """CRC-32 of a file, streamed (35 ms for MiniLM's 90 MB graph: cheap enough to check on every load)."""
    value = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHECKSUM_CHUNK):
            value = zlib.crc32(chunk, value)
    return f"crc32:{value:08x}"


def file_entry(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "checksum": checksum(path)}


def damage(export: Export) -> str | None:
    """What is wrong with an export's files (missing, wrong size or checksum), or None when they are intact."""
    files = export.manifest.get("files")
    if not isinstance(files, dict) or GRAPH not in files or TOKENIZER not in files:
        return "its manifest lists no files"
    for name, entry in files.items():
        path = export.folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("size"):
            return f"{name} has the wrong size"
        if checksum(path) != entry.get("checksum"):
            return f"{name} fails its checksum"
    return None


def cached_export(folder: Path, head: str) -> Export | None:
    """The intact cached export of `folder` for `head`, or None. A damaged one is deleted (and said once on
    stderr), so the caller exports again."""
    target = export_dir(folder, head)
    manifest = read_json(target / MANIFEST)
    if manifest is None:
        if target.exists():  # a folder without a readable manifest: damaged
            shutil.rmtree(target, ignore_errors=True)
        return None
    export = Export(target, manifest)
    broken = damage(export)
    if broken is None:
        return export
    from llmkit.console import warn

    warn(f"the cached ONNX export {target.name} is damaged ({broken}); exporting it again")
    shutil.rmtree(target, ignore_errors=True)
    return None


# --- what the engine cannot run ------------------------------------------------------------------------------


def cuda_provider() -> bool:
    """Whether this onnxruntime build has the CUDA execution provider (onnxruntime-gpu)."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def unsupported(folder: Path | None, head: str | None, *, config: dict[str, Any] | None, adapter: str | None = None,
                dtype: str = "auto", trust_remote_code: bool = False) -> str | None:
    """Why this engine cannot run a model (one line, user-facing), from its files alone; None when it can.

    The device is the chooser's business (choose.py); this looks at the model and the settings.
    """
    del trust_remote_code  # remote code is refused whatever the flag: the exporter needs the stock classes
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


# --- the tokenizer ---------------------------------------------------------------------------------------------


class EncoderTokenizer:
    """The slice of a transformers fast tokenizer that classify and fill-mask use, over the same `tokenizers`
    pipeline transformers built (saved at export time), with the call conventions of transformers 5's
    `TokenizersBackend`: truncation set per call with the tokenizer's truncation side, token type ids only when
    the tokenizer names them as a model input, transformers' decode clean-up where it applies.

    Args:
        path: the saved tokenizer.json.
        settings: what the export recorded about the transformers tokenizer (see onnx_export.tokenizer_settings).
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tok.encode_special_tokens = bool(settings.get("split_special_tokens", False))
        self.settings = settings
        self.model_input_names = list(settings.get("model_input_names") or ["input_ids", "attention_mask"])
        self.model_max_length = int(settings.get("model_max_length") or int(1e30))
        self.padding_side = str(settings.get("padding_side") or "right")
        self.truncation_side = str(settings.get("truncation_side") or "right")
        self.pad_token_id = settings.get("pad_token_id")
        self.pad_token_type_id = int(settings.get("pad_token_type_id") or 0)
        self.mask_token = settings.get("mask_token")
        self.mask_token_id = settings.get("mask_token_id")
        self.unk_token_id = settings.get("unk_token_id")
        self.clean_up = bool(settings.get("clean_up_tokenization_spaces", False))

    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str | None] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_attention_mask: bool | None = None,
    ) -> dict[str, Any]:
        """{"input_ids": ..., and "token_type_ids" when the tokenizer names them} for one text (lists of ints)
        or a list of texts (lists of lists), as transformers' tokenizer call returns them."""
        del return_attention_mask  # the padding step builds the mask
        many = isinstance(text, list)
        texts = text if many else [text]
        pairs = text_pair if isinstance(text_pair, list) else [text_pair] * len(texts)
        # transformers treats an empty second text of a single call as none
        inputs = [t if not p else (t, p) for t, p in zip(texts, pairs, strict=True)]
        if truncation:
            strategy = "longest_first" if truncation is True else str(truncation)
            limit = int(max_length if max_length is not None else self.model_max_length)
            self._tok.enable_truncation(limit, stride=0, strategy=strategy, direction=self.truncation_side)
        try:
            encodings = self._tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            if truncation:
                self._tok.no_truncation()
        out: dict[str, Any] = {"input_ids": [e.ids for e in encodings]}
        if "token_type_ids" in self.model_input_names:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        return out if many else {k: v[0] for k, v in out.items()}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Token ids -> text, as transformers' `decode` (its clean-up of spaces before punctuation included)."""
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def get_vocab(self) -> dict[str, int]:
        return dict(self._tok.get_vocab(with_added_tokens=True))


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
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"ONNX Runtime could not load {export.graph} ({first})") from exc
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

    def many(self, batches: list[dict[str, Any]]) -> list[Any]:
        """`run` on each batch, `threads` at a time (onnxruntime releases the GIL while it runs), in order."""
        workers = max(1, min(self.threads, len(batches)))
        if workers == 1:
            return [self.run(b) for b in batches]
        from concurrent.futures import ThreadPoolExecutor

        # the biggest batches first, so that a worker left without work at the end idles only for a small one
        order = sorted(range(len(batches)), key=lambda i: -batches[i]["input_ids"].size)
        with ThreadPoolExecutor(workers) as pool:
            done = dict(zip(order, pool.map(lambda i: self.run(batches[i]), order), strict=True))
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
    tokenizer = EncoderTokenizer(export.folder / TOKENIZER, export.manifest.get("tokenizer") or {})
    source = loading.ModelSource(spec, "dir", str(folder))
    return loading.LoadedModel(model, tokenizer, source, device, "float32" if not export.manifest.get("quantization")
                               else "int8", time.perf_counter() - started, notes)


# --- `llmkit models`: list and remove exports --------------------------------------------------------------------


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_exports() -> list[dict[str, Any]]:
    """The cached exports as `llmkit models` rows (name, kind "onnx-export", size, path, what it is)."""
    root = cache_root()
    if not root.is_dir():
        return []
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = read_json(folder / MANIFEST) or {}
        what = f"ONNX export of {manifest.get('source', '?')} ({manifest.get('head', '?')})"
        rows.append({"name": folder.name, "kind": "onnx-export", "installed": True, "size_bytes": _tree_size(folder),
                     "path": str(folder), "description": what})
    return rows


def remove_export(name: str) -> tuple[str, int] | None:
    """Delete the export named `name` (and its refusal marker): (path, bytes freed), or None when no such
    export exists."""
    root = cache_root()
    target = root / name
    if "/" in name or name.startswith(".") or not target.is_dir():
        return None
    size = _tree_size(target)
    shutil.rmtree(target)
    refused_marker(target).unlink(missing_ok=True)
    return str(target), size


def clean_exports() -> list[tuple[str, int]]:
    """Delete every export and every refusal marker: (path, bytes freed) each."""
    root = cache_root()
    if not root.is_dir():
        return []
    freed = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue  # temporaries: tempnames' sweep decides which are stale
        size = _tree_size(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        freed.append((str(path), size))
    return freed


def remember_refusal(target: Path, reason: str) -> None:
    """Write the refusal marker of an export that failed (atomically; a failure to write it is ignored)."""
    marker = refused_marker(target)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.pid{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"reason": reason, "versions": versions()}) + "\n", encoding="utf-8")
        os.replace(tmp, marker)
    except OSError:
        pass
