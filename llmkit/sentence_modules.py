"""What a model folder says about turning token vectors into a sentence vector (sentence-transformers' files).

A sentence-transformers folder lists its steps in `modules.json`: the Transformer (with `sentence_bert_config.json`:
the maximum sequence length, lower-casing), `Pooling` (`1_Pooling/config.json`), optional `Dense` layers
(`2_Dense/config.json` and weights) and `Normalize`; `config_sentence_transformers.json` adds named prompts.
`read()` turns those files into a `pooling.Head` plus the tokenizer settings, without torch. A module llmkit cannot
run is refused by name, never skipped (pipelines that drop a Dense layer give vectors unrelated to the model's).
A plain transformers folder (no `modules.json`) gets sentence-transformers' own default for such a folder: mean
pooling, not normalised; `note` then says so, for the one stderr line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.pooling import POOLING_MODES, DenseLayer, Head, activation_name

MODULES_FILE = "modules.json"
DEFAULT_POOLING = "mean"  # sentence-transformers' Pooling default, and what it builds for a plain folder
# --pooling spellings: sentence-transformers' names plus the short one llama.cpp and TEI use.
POOLING_ALIASES = {"mean_sqrt_len": "mean_sqrt_len_tokens", "last": "lasttoken"}
_LEGACY_POOLING_KEYS = {  # the older 1_Pooling/config.json booleans, in sentence-transformers' concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_PASSIVE_MODULES = ("Dropout",)  # no effect at inference


@dataclass(frozen=True)
class SentenceConfig:
    """How to embed with one model.

    Attributes:
        head: pooling, Dense layers and normalisation.
        encoder_path: the folder (relative to the model's) that holds the transformer ("" for the model's own).
        max_seq_length: the longest input in tokens (sentence_bert_config.json), None for the tokenizer's own.
        do_lower_case: lower-case texts before tokenizing.
        prompts: named prompts (config_sentence_transformers.json).
        default_prompt: the prompt applied when none is asked for, if the model names one.
        from_model: True when the head came from the model's files (modules.json), False for the default.
        note: one line for stderr when the model gave no pooling information (what was used instead).
    """

    head: Head
    encoder_path: str = ""
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt: str | None = None
    from_model: bool = True
    note: str | None = None


def pooling_modes(value: str) -> tuple[str, ...]:
    """`--pooling mean` or `cls+mean` -> sentence-transformers' mode names.

    Raises:
        UsageError: an unknown mode (the message lists them).
    """
    modes = []
    for part in value.replace(",", "+").split("+"):
        name = POOLING_ALIASES.get(part.strip().lower(), part.strip().lower())
        if name not in POOLING_MODES:
            raise UsageError(f"unknown --pooling {part.strip()!r}; use one of {', '.join(POOLING_MODES)}")
        modes.append(name)
    return tuple(modes)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc}); the model folder is damaged") from None


def _pooling(config: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    """(modes, include_prompt) from a 1_Pooling/config.json of either generation."""
    mode = config.get("pooling_mode")
    if mode is None:
        legacy = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key))
        modes = legacy or (DEFAULT_POOLING,)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    for name in modes:
        if name not in POOLING_MODES:
            raise UsageError(f"pooling mode {name!r} in the model's Pooling config is not one of {', '.join(POOLING_MODES)}")
    return modes, bool(config.get("include_prompt", True))


def _dense(folder: Path, *, allow_pickle: bool) -> DenseLayer:
    config = _read_json(folder / "config.json")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise UsageError(f"{folder.name}: a Dense layer on {config[key]!r} (per-token vectors) is not a "
                             "sentence embedding; llmkit embed cannot run this model")
    activation = activation_name(config.get("activation_function"))
    if activation is None:
        raise UsageError(f"{folder.name}: Dense activation {config.get('activation_function')!r} is not supported "
                         "(identity, tanh, relu, sigmoid, gelu)")
    weights = _dense_weights(folder, allow_pickle=allow_pickle)
    weight = weights["linear.weight"]
    if weight.shape != (config["out_features"], config["in_features"]):
        raise UsageError(f"{folder.name}: weights of shape {weight.shape} do not match the config's "
                         f"{config['in_features']} -> {config['out_features']}")
    residual: Any = None
    if config.get("use_residual"):
        residual = weights.get("residual.weight", "identity")
    bias = weights.get("linear.bias") if config.get("bias", True) else None
    return DenseLayer(weight=weight, bias=bias, activation=activation, residual=residual)


def _dense_weights(folder: Path, *, allow_pickle: bool) -> dict[str, Any]:
    import numpy as np

    safetensors = folder / "model.safetensors"
    if safetensors.exists():
        from safetensors.numpy import load_file

        return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(safetensors)).items()}
    pickled = folder / "pytorch_model.bin"
    if pickled.exists():
        if not allow_pickle:
            raise UsageError(f"{folder}: the Dense weights are a pickle (pytorch_model.bin); pass --allow-pickle "
                             "if you trust the model")
        import torch

        state = torch.load(str(pickled), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise UsageError(f"{folder}: no Dense weights (model.safetensors); the model folder is incomplete")


def read_folder(folder: Path, *, allow_pickle: bool = False) -> SentenceConfig:
    """The `SentenceConfig` of a local model folder.

    Args:
        folder: the model's folder.
        allow_pickle: permit Dense weights stored as a pickle.

    Raises:
        UsageError: a module llmkit cannot run, or damaged files.
    """
    folder = Path(folder)
    st_config = folder / "config_sentence_transformers.json"
    prompts: dict[str, str] = {}
    default_prompt = None
    if st_config.exists():
        extra = _read_json(st_config)
        prompts = {str(k): str(v) for k, v in (extra.get("prompts") or {}).items()}
        name = extra.get("default_prompt_name")
        default_prompt = prompts.get(name) if name else None
    modules_file = folder / MODULES_FILE
    if not modules_file.exists():
        return replace(plain(folder.name), prompts=prompts, default_prompt=default_prompt)
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise UsageError(f"{modules_file}: expected a list of modules")
    encoder_path = ""
    max_seq_length = None
    lower = False
    pooling: tuple[str, ...] | None = None
    include_prompt = True
    dense: list[DenseLayer] = []
    normalize = False
    seen_transformer = False
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = folder / str(module.get("path", ""))
        if kind == "Transformer" and not seen_transformer:
            seen_transformer = True
            encoder_path = str(module.get("path", ""))
            bert = path / "sentence_bert_config.json"
            if bert.exists():
                settings = _read_json(bert)
                max_seq_length = settings.get("max_seq_length")
                lower = bool(settings.get("do_lower_case", False))
        elif kind == "Pooling" and pooling is None and not dense:
            pooling, include_prompt = _pooling(_read_json(path / "config.json") if (path / "config.json").exists() else {})
        elif kind == "Dense" and pooling is not None:
            dense.append(_dense(path, allow_pickle=allow_pickle))
        elif kind == "Normalize" and pooling is not None:
            normalize = True
        elif kind in _PASSIVE_MODULES:
            continue
        else:
            raise UsageError(f"{folder.name}: the sentence-transformers module {kind or module!r} (step "
                             f"{module.get('idx')}) is not one llmkit embed runs (Transformer, Pooling, Dense, "
                             "Normalize); use sentence-transformers for this model")
    if not seen_transformer:
        raise UsageError(f"{modules_file}: no Transformer module; llmkit embed runs transformer encoders")
    if pooling is None:
        raise UsageError(f"{modules_file}: no Pooling module; give --pooling (one of {', '.join(POOLING_MODES)})")
    return SentenceConfig(
        head=Head(pooling=pooling, dense=tuple(dense), normalize=normalize, include_prompt=include_prompt),
        encoder_path=encoder_path,
        max_seq_length=int(max_seq_length) if max_seq_length else None,
        do_lower_case=lower,
        prompts=prompts,
        default_prompt=default_prompt,
    )


def plain(name: str) -> SentenceConfig:
    """The settings for a model with no pooling information: sentence-transformers' default for a plain
    transformers model (mean pooling, not normalised), and the one line that says so."""
    return SentenceConfig(
        head=Head(pooling=(DEFAULT_POOLING,), normalize=False),
        from_model=False,
        note=(f"{name} has no pooling information (no {MODULES_FILE}): mean pooling, not normalised, as "
              "sentence-transformers does for a plain model; --pooling and --normalize choose"),
    )


_HUB_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def hub_folder(repo: str, *, revision: str | None = None) -> Path | None:
    """A local folder with a hub model's sentence-transformers files (from the HF cache or the hub), or None
    when the repo has no `modules.json`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=[*_HUB_FILES, "*/config.json",
                                                                                   "*/model.safetensors"]))
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError):
        return None
    return folder if (folder / MODULES_FILE).exists() else None
