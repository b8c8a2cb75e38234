"""`llmkit pretrain`: a small BERT-style encoder (ModernBERT, masked LM) or Llama (causal LM) trained from nothing.

The steps: read the corpus (corpus.py) -> train a tokenizer on it (tokenizer_training.py) or reuse one -> a
model from a size preset or a config file -> pack the text into fixed-length blocks and hold some out ->
train with the transformers Trainer through training.py (the machinery finetune uses: settings precedence,
checkpoints and --resume, accelerate, progress, the all-or-nothing output folder) -> report.json with the
validation perplexity before and during training and a sample cloze or generation.

The output folder is a plain transformers model folder (config, safetensors, tokenizer files), so every other
command loads it: fill-mask/generate, finetune, distill, quantize, embed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llmkit import training
from llmkit.allocator import keep_freed_memory
from llmkit.corpus import Corpus, Packing, pack_blocks, read_corpus, split_blocks
from llmkit.errors import DataError, NotFoundError, UsageError
from llmkit.masking import BlockCollator, EpochCallback, Masking, mask_validation, masked_lm_loss
from llmkit.metrics import perplexity, round_metric
from llmkit.tokenizer_training import OBJECTIVES, check_reused, train_tokenizer
from llmkit.training import TrainSettings

DEFAULT_SIZE = "tiny"
# 4096: on BBC News the tiny causal LM after 240 steps reached 0.49x the perplexity of a unigram model of its own
# tokenizer, against 0.56x with 8192, and its steps are faster (the output layer is half the size).
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_BLOCK_SIZE = 128  # tokens per training example
DEFAULT_VALIDATION_SPLIT = 0.05  # share of the blocks held out
# Twice BERT's 15%: a model trained from nothing for minutes learns from the masked tokens alone, so each step
# gives it twice as many to learn from (Wettig et al. 2023, "Should You Mask 15% in Masked Language Modeling?").
DEFAULT_MLM_PROBABILITY = 0.3
DEFAULT_EVALUATIONS = 5  # evaluations spread over a run when --eval-steps is not given (plus one before)
SAMPLE_NEW_TOKENS = 40  # length of the sample generation in the report
SAMPLE_PROMPT_TOKENS = 12

# Trainer defaults for training from scratch (finetune's suit a pretrained model): one epoch, warm-up then
# linear decay, weight decay. Batch size and peak learning rate go with the size (SIZE_TRAIN_DEFAULTS).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 1.0,
    "warmup_ratio": 0.05,
    "weight_decay": 0.01,
    "group_by_length": False,  # every block has the same length
}
# tiny: measured on BBC News (benchmarks/results/pretrain_hparams_20261207.json): after the same 246k tokens the
# tiny causal LM reached validation perplexity 728 with batch 8 at 3e-3, against 1,376 with batch 32 at 1e-3
# and 1,144 with batch 32 at 3e-3 (unigram: 1,311); more, smaller steps learn more from a CPU's few tokens.
# small and base: the usual ranges for models of their size (GPT-2 small 6e-4, BERT-base 1e-4), not measured.
SIZE_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"batch_size": 8, "learning_rate": 3e-3},
    "small": {"batch_size": 16, "learning_rate": 1e-3},
    "base": {"batch_size": 32, "learning_rate": 3e-4},
}
# Where an objective's model wants other values than its size's. The tiny ModernBERT at the size's 3e-3 stayed on
# the unigram plateau: after 800 steps (BBC News, vocabulary 4096, 30% masked, batch 8) its perplexity on held-out
# blocks with 15% of the tokens masked was 931 (unigram: 939), against 549 at 1e-3 and 751 at 5e-4.
OBJECTIVE_TRAIN_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("mlm", "tiny"): {"learning_rate": 1e-3},
}
CONFIG_TRAIN_DEFAULTS = SIZE_TRAIN_DEFAULTS["small"]  # with --model-config


# Size presets. Masked LM: ModernBERT (pre-norm layers, rotary positions, GeGLU, no biases; tied embeddings) with
# the depth and width of Google's BERT-tiny (L2/H128), BERT-small (L4/H512) and bert-base (L12/H768), and a GeGLU
# width of 1.5-2x hidden, as ModernBERT's own. Not BERT itself: a BERT trained from nothing on a CPU budget never
# left the unigram plateau (on BBC News after 4,800 steps, and on a corpus where the masked word is fixed by its
# neighbours after 400), post-norm or pre-norm (RoBERTa-PreLayerNorm), at every masking rate, batch and learning
# rate tried: learned absolute positions start as noise, so nothing tells a masked token where its neighbours
# are; rotary positions do from the first step (benchmarks/pretrain_mlm_check.py).
# Causal LM: Llama shapes (rotary positions, SwiGLU, RMSNorm; tied embeddings), the architecture of the bundled
# SmolLM2, which llmkit's generate, quantize and GGUF export all handle. tiny trains in minutes on 2 CPU cores.
# ModernBERT has no dropout by default (minutes of training never see a block twice: nothing to regularise).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "mlm": {
        "tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 256},
        "small": {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 768},
        "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 1152},
    },
    "clm": {
        "tiny": {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 384},
        "small": {"num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 1536},
        "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 2048},
    },
}
SIZE_NAMES = tuple(SIZES["mlm"])
ARCHITECTURES = {"mlm": "modernbert", "clm": "llama"}
TOKENIZER_FOLDER = "tokenizer"  # inside OUTPUT.checkpoints: the run's tokenizer, for other processes and --resume


@dataclass(frozen=True)
class PretrainOptions:
    """What to build and how the text becomes examples (the Trainer knobs are `TrainSettings`)."""

    objective: str | None = None
    size: str = DEFAULT_SIZE
    model_config: str | None = None  # a config.json (or a model folder holding one) instead of a preset
    tokenizer: str | None = None  # reuse this model's tokenizer instead of training one
    vocab_size: int = DEFAULT_VOCAB_SIZE
    block_size: int = DEFAULT_BLOCK_SIZE
    validation_split: float = DEFAULT_VALIDATION_SPLIT
    mlm_probability: float = DEFAULT_MLM_PROBABILITY
    text_column: str | None = None

    def validate(self) -> PretrainOptions:
        """Raise UsageError for impossible values; return self."""
        if self.objective is None:
            raise UsageError("give --objective mlm (a BERT-style masked LM) or clm (a GPT-style causal LM)")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown --objective {self.objective!r}; use mlm or clm")
        if self.model_config is None and self.size not in SIZE_NAMES:
            raise UsageError(
                f"unknown --size {self.size!r}; use one of {', '.join(SIZE_NAMES)} (or --model-config FILE)"
            )
        if self.vocab_size < 1:
            raise UsageError("--vocab-size must be >= 1")
        if self.block_size < 8:
            raise UsageError("--block-size must be >= 8 tokens")
        if not 0 <= self.validation_split < 1:
            raise UsageError("--validation-split must be in [0, 1) (e.g. 0.05; 0 turns evaluation off)")
        if not 0 < self.mlm_probability < 1:
            raise UsageError("--mlm-probability must be between 0 and 1 (e.g. 0.15)")
        return self


@dataclass(frozen=True)
class Architecture:
    """The model a run builds, as printed before training."""

    model_type: str
    size: str  # a preset name, or the --model-config path
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab_size: int
    context: int
    parameters: int

    def line(self) -> str:
        return (
            f"{self.model_type} ({self.size}): {self.layers} layers, hidden {self.hidden}, {self.heads} heads, "
            f"feed-forward {self.intermediate}, vocabulary {self.vocab_size:,}, context {self.context}: "
            f"{self.parameters:,} parameters"
        )


@dataclass(frozen=True)
class PretrainPlan:
    """What a run would do (`--dry-run`): the tokenizer is trained in memory, nothing is written."""

    objective: str
    output: str
    architecture: Architecture
    corpus: dict[str, int]
    tokenizer: str
    blocks: dict[str, int]
    tokens_per_step: int
    steps: int
    epochs: float
    total_tokens: int
    batch_size: int
    learning_rate: float
    precision: str
    memory_estimate_bytes: dict[str, int]
    notes: list[str] = field(default_factory=list)
    dry_run: bool = True


@dataclass(frozen=True)
class Evaluation:
    """One validation pass: after `step` optimizer steps and `tokens` training tokens."""

    step: int
    tokens: int
    loss: float
    perplexity: float


@dataclass(frozen=True)
class PretrainResult:
    """A finished run: where the model is, what it saw and how validation perplexity went."""

    output: str
    objective: str
    architecture: Architecture
    tokenizer: str
    blocks: dict[str, int]
    steps: int
    epochs: float
    tokens_per_step: int
    tokens_seen: int
    train_seconds: float  # wall time of training, evaluations during it included
    eval_seconds: float  # the part of train_seconds spent evaluating
    tokens_per_second: float  # training tokens / (train_seconds - eval_seconds)
    train_loss: float | None
    evaluations: list[Evaluation]
    perplexity_before: float | None
    perplexity_after: float | None
    sample: dict[str, Any] | None
    resumed_from_step: int = 0
    processes: int = 1
    notes: list[str] = field(default_factory=list)


# --- settings -----------------------------------------------------------------------------------------------


def build_settings(config_file: Path | None, cli: dict[str, Any]) -> dict[str, Any]:
    """pretrain()'s keyword arguments from defaults < TRAIN_DEFAULTS < TOML `config_file` < `cli`.

    Args:
        config_file: a `--config` TOML file, or None.
        cli: the command's values, None for those not given; `bf16`/`fp16`/`fp32` are booleans.

    Returns:
        corpus, output, options, settings and device, ready for `pretrain(**kwargs)`.

    Raises:
        UsageError: an unknown key, two precisions, no corpus. NotFoundError: no such config file.
    """
    from llmkit.config import check_config_keys, load_config, settings_from

    file_values = load_config(config_file)
    check_config_keys(file_values, known_config_keys(), config_file)
    cli = dict(cli)
    flags = [name for name in ("bf16", "fp16", "fp32") if cli.pop(name, False)]
    if len(flags) > 1:
        raise UsageError("give at most one of --bf16, --fp16, --fp32")
    cli["precision"] = flags[0] if flags else None
    for flag in ("bf16", "fp16", "fp32"):
        if file_values.pop(flag, False):
            file_values.setdefault("precision", flag)
    if (cli.get("size") or file_values.get("size")) and (cli.get("model_config") or file_values.get("model_config")):
        raise UsageError("give --size or --model-config, not both")
    corpus = cli.get("corpus") or file_values.get("corpus")
    if corpus is None:
        raise UsageError("no corpus: give text files, a folder or a table (or `corpus = ...` in --config)")
    output = cli.get("output") or file_values.get("output")
    options = settings_from(PretrainOptions, file_values, cli)
    settings = settings_from(TrainSettings, {**train_defaults(options), **file_values}, cli)
    device = cli.get("device") or "auto"
    return {
        "corpus": corpus,
        "output": Path(output) if output is not None else None,
        "options": options,
        "settings": replace(settings, max_length=options.block_size),
        "device": device if device != "auto" else file_values.get("device", "auto"),
    }


def train_defaults(options: PretrainOptions) -> dict[str, Any]:
    """TrainSettings values a run starts from: TRAIN_DEFAULTS with its size's batch size and learning rate."""
    if options.model_config:
        return {**TRAIN_DEFAULTS, **CONFIG_TRAIN_DEFAULTS}
    by_size = SIZE_TRAIN_DEFAULTS.get(options.size, {})
    return {**TRAIN_DEFAULTS, **by_size, **OBJECTIVE_TRAIN_DEFAULTS.get((options.objective or "", options.size), {})}


def known_config_keys() -> set[str]:
    """Every key a `--config` TOML file may set for pretrain."""
    # max_length is --block-size here; every block has the same length; no early stopping (one pass, usually)
    train = {f.name for f in fields(TrainSettings)} - {"max_length", "group_by_length", "early_stopping_patience"}
    return train | {f.name for f in fields(PretrainOptions)} | {
        "corpus", "output", "device", "bf16", "fp16", "fp32",
    }  # fmt: skip


# --- tokenizer ----------------------------------------------------------------------------------------------


def _reused_tokenizer(spec: str, objective: str, block_size: int) -> Any:
    """`--tokenizer`: a model spec (alias, model folder, hub id, .gguf), or a folder of tokenizer files alone."""
    from llmkit.loading import load_tokenizer, resolve

    folder = Path(spec).expanduser()
    if folder.is_dir() and not (folder / "config.json").exists() and any(
        (folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        tokenizer = _load_saved_tokenizer(folder)
    else:
        tokenizer = load_tokenizer(resolve(spec))
    check_reused(tokenizer, objective)
    if tokenizer.pad_token is None:  # GPT-style tokenizers often lack one; blocks never need padding anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    tokenizer.model_max_length = block_size
    return tokenizer


def _load_saved_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def process_state(device: str) -> Any:
    """accelerate's `PartialState` of this process, for the device the run trains on.

    On the CPU it must be asked for: a plain `PartialState()` on a machine without a GPU reports one
    undistributed process in every rank of an `accelerate launch` (each its own main process) until the
    Trainer's arguments set it up for the CPU, which is after the tokenizer is made.
    """
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def _run_tokenizer(
    corpus: Corpus, options: PretrainOptions, *, output: Path, checkpoint: Path | None, dry_run: bool, device: str
) -> tuple[Any, str]:
    """The run's tokenizer and a description of it.

    A resumed run takes the one saved in its checkpoint. Otherwise the main process trains (or loads) it and
    saves it in OUTPUT.checkpoints/tokenizer, where the other processes of a distributed run read it: the
    WordPiece trainer is not deterministic, so each process training its own could number tokens differently
    (and two processes saving into one folder at once fail).
    """
    assert options.objective is not None
    kind = (
        f"reused from {options.tokenizer}"
        if options.tokenizer
        else ("WordPiece (uncased), trained on the corpus" if options.objective == "mlm"
              else "byte-level BPE, trained on the corpus")
    )  # fmt: skip
    if checkpoint is not None:
        return _load_saved_tokenizer(checkpoint), kind

    def make() -> Any:
        if options.tokenizer:
            return _reused_tokenizer(options.tokenizer, options.objective or "", options.block_size)
        return train_tokenizer(corpus.texts, options.objective or "", options.vocab_size,
                               max_length=options.block_size)  # fmt: skip

    if dry_run:
        return make(), kind
    state = process_state(device)
    saved = training.checkpoint_dir(output) / TOKENIZER_FOLDER
    with state.main_process_first():
        if state.is_main_process:
            tokenizer = make()
            if saved.exists():
                shutil.rmtree(saved)
            tokenizer.save_pretrained(str(saved))
        else:
            tokenizer = _load_saved_tokenizer(saved)
    return tokenizer, kind


# --- blocks -------------------------------------------------------------------------------------------------


def packing_for(tokenizer: Any, objective: str, block_size: int) -> Packing:
    """BERT: `[CLS] text [SEP] text [SEP] ... [SEP]` per block; GPT: texts each followed by EOS."""
    if objective == "mlm":
        cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        return Packing(block_size, separator=sep, prefix=(cls,) if cls is not None else (),
                       suffix=(sep,) if sep is not None else ())  # fmt: skip
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return Packing(block_size, separator=eos)


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (the tokenizers backend encodes in parallel)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


@dataclass
class Blocks:
    train: list[list[int]]
    validation: list[list[int]]
    tokens: int  # corpus tokens (separators included)
    dropped: int


def make_blocks(corpus: Corpus, tokenizer: Any, options: PretrainOptions, seed: int) -> Blocks:
    """Tokenize, pack and split.

    Raises:
        DataError: fewer tokens than one block, or too few blocks to hold one out.
    """
    assert options.objective is not None
    packing = packing_for(tokenizer, options.objective, options.block_size)
    packed = pack_blocks(encode_texts(tokenizer, corpus.texts), packing)
    if not packed.blocks:
        raise DataError(
            f"{corpus.source}: {packed.tokens:,} tokens, fewer than one block of {options.block_size}; "
            "add text or lower --block-size"
        )
    train_idx, val_idx = split_blocks(len(packed.blocks), options.validation_split, seed)
    return Blocks(
        train=[packed.blocks[i] for i in train_idx],
        validation=[packed.blocks[i] for i in val_idx],
        tokens=packed.tokens,
        dropped=packed.dropped,
    )


def masking_for(tokenizer: Any, options: PretrainOptions, seed: int) -> Masking:
    """The masked-LM masking of a run (special tokens are never chosen)."""
    return Masking(
        mask_id=int(tokenizer.mask_token_id),
        vocab_size=len(tokenizer),
        probability=options.mlm_probability,
        special_ids=frozenset(int(i) for i in tokenizer.all_special_ids),
        seed=seed,
    )


# --- model --------------------------------------------------------------------------------------------------


def read_model_config(path: str | Path) -> dict[str, Any]:
    """A model config as a dict: a config.json file, or a model folder holding one.

    Raises:
        NotFoundError: no such file. UsageError: not JSON, or no `model_type`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise NotFoundError(f"model config not found: {path}")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a JSON config ({exc})") from None
    if not isinstance(values, dict) or "model_type" not in values:
        raise UsageError(f"{path}: a transformers config.json needs a \"model_type\" (e.g. \"bert\", \"llama\")")
    return values


def model_config(options: PretrainOptions, tokenizer: Any) -> Any:
    """The transformers config of the model to build: a preset (or --model-config) with the tokenizer's
    vocabulary size and special ids, and the block size as its context.

    Raises:
        UsageError: a config whose model type has no head for the objective, or a context below the block.
    """
    from transformers import AutoConfig

    objective = options.objective or ""
    special = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
        "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
    }
    if options.model_config is not None:
        values = read_model_config(options.model_config)
        model_type = values.pop("model_type")
        for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
            values.pop(key, None)
        try:
            config = AutoConfig.for_model(model_type, **{**values, **special})
        except (ValueError, KeyError) as exc:
            raise UsageError(f"--model-config: {str(exc).splitlines()[0]}") from None
        for key in ("cls_token_id", "sep_token_id"):  # ModernBERT's (its defaults are its own vocabulary's)
            if getattr(config, key, None) is not None and getattr(tokenizer, key, None) is not None:
                setattr(config, key, getattr(tokenizer, key))
        context = getattr(config, "max_position_embeddings", None)
        if context is not None and context < options.block_size:
            raise UsageError(
                f"--model-config allows {context} positions, fewer than --block-size {options.block_size}"
            )
        return config
    shape: dict[str, Any] = dict(SIZES[objective][options.size])
    if objective == "mlm":
        from transformers import ModernBertConfig

        return ModernBertConfig(
            **shape,
            max_position_embeddings=options.block_size,
            # every layer attends to the whole block (ModernBERT's sliding layers matter for 8k contexts)
            layer_types=["full_attention"] * shape["num_hidden_layers"],
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            **special,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        **shape,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=options.block_size,
        tie_word_embeddings=True,
        **special,
    )


def build_model(config: Any, objective: str, seed: int) -> Any:
    """A freshly initialised model with the objective's head (seeded).

    Raises:
        UsageError: the config's model type has no masked-LM / causal-LM head.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from llmkit.loading import set_seed

    set_seed(seed)
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    try:
        return auto.from_config(config)
    except ValueError as exc:
        head = "masked-LM" if objective == "mlm" else "causal-LM"
        raise UsageError(
            f"--model-config: model type {config.model_type!r} has no {head} head "
            f"({str(exc).splitlines()[0]}); use a {ARCHITECTURES[objective]}-style config"
        ) from None


def describe_model(model: Any, options: PretrainOptions) -> Architecture:
    from llmkit.strategies import count_trainable

    config = model.config
    return Architecture(
        model_type=config.model_type,
        size=str(options.model_config) if options.model_config else options.size,
        layers=int(getattr(config, "num_hidden_layers", 0) or 0),
        hidden=int(getattr(config, "hidden_size", 0) or 0),
        heads=int(getattr(config, "num_attention_heads", 0) or 0),
        intermediate=int(getattr(config, "intermediate_size", 0) or 0),
        vocab_size=int(config.vocab_size),
        context=options.block_size,
        parameters=count_trainable(model).total,
    )


def _check_same_model(checkpoint: Path, config: Any) -> None:
    saved = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
        if saved.get(key) != getattr(config, key, None):
            raise UsageError(
                f"--resume: {checkpoint} holds a model with {key}={saved.get(key)!r}, this command builds "
                f"{getattr(config, key, None)!r}; resume with the settings of the interrupted run"
            )


# --- samples ------------------------------------------------------------------------------------------------


def sample_generation(model: Any, tokenizer: Any, block: list[int], seed: int) -> dict[str, Any]:
    """Continue the start of a validation block (seeded sampling, top-k 50, temperature 0.8)."""
    import torch

    separator = tokenizer.eos_token_id
    start = block.index(separator) + 1 if separator in block[: len(block) // 2] else 0  # begin at a text's start
    prompt = block[start : start + SAMPLE_PROMPT_TOKENS]
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(
            torch.tensor([prompt], device=device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
            max_new_tokens=SAMPLE_NEW_TOKENS,
            do_sample=True,
            top_k=50,
            temperature=0.8,
            pad_token_id=tokenizer.pad_token_id,
        )
    return {
        "prompt": tokenizer.decode(prompt),
        "completion": tokenizer.decode(out[0, len(prompt) :].tolist()),
    }


def sample_cloze(model: Any, tokenizer: Any, block: list[int], top_k: int = 5) -> dict[str, Any] | None:
    """Mask one whole word in the middle of a validation block and show the model's top-k for it."""
    import torch

    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(block)
    middle = len(block) // 2
    order = sorted(range(len(block)), key=lambda i: abs(i - middle))
    position = next(
        (
            i for i in order
            if block[i] not in special and tokens[i].isalpha() and not tokens[i].startswith("##")
            and (i + 1 >= len(block) or not tokens[i + 1].startswith("##")) and len(tokens[i]) > 2
        ),
        None,
    )  # fmt: skip
    if position is None:
        return None
    start, end = max(1, position - 24), min(len(block) - 1, position + 24)
    window = [tokenizer.cls_token_id, *block[start:end], tokenizer.sep_token_id]
    at = position - start + 1
    window[at] = tokenizer.mask_token_id
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([window], device=device)).logits[0, at]
    probs = logits.softmax(-1)
    top = probs.topk(top_k)
    return {
        "text": tokenizer.decode(window[1:-1]),
        "answer": tokens[position],
        "top": [
            {"token": tokenizer.convert_ids_to_tokens(int(i)), "probability": round(float(p), 4)}
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ],
    }


# --- the task function --------------------------------------------------------------------------------------


def _evaluations(log_history: list[dict[str, Any]], tokens_per_step: int) -> list[Evaluation]:
    seen: dict[int, Evaluation] = {}
    for record in log_history:
        if "eval_loss" in record:
            step = int(record.get("step", 0))
            loss = float(record["eval_loss"])
            seen[step] = Evaluation(step, step * tokens_per_step, round_metric(loss), round_metric(perplexity(loss)))
    return [seen[s] for s in sorted(seen)]


def pretrain(
    corpus: str | Path | Sequence[str | Path],
    *,
    output: str | Path,
    options: PretrainOptions,
    settings: TrainSettings | None = None,
    device: str = "auto",
    dry_run: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    json_log: bool = False,
    announce: Any = None,
) -> PretrainPlan | PretrainResult:
    """Pre-train a model from nothing on `corpus` and write it to `output`.

    Args:
        corpus: text file(s) (one text per line), a folder of them, or a table (`options.text_column`).
        output: the folder to create (written under a temporary name and renamed when complete).
        options: objective, size or config, tokenizer, vocabulary, block size, validation share, masking rate.
        settings: Trainer settings (`max_length` is taken from the block size); None: `train_defaults(options)`.
        device: auto|cpu|cuda|mps.
        dry_run: plan only (tokenizer trained in memory; blocks, steps, parameters, memory); nothing written.
        resume: continue from the newest checkpoint in `OUTPUT.checkpoints`.
        overwrite: replace an existing `output` (only once the new one is complete).
        json_log: training log records as JSON lines on stdout.
        announce: called with the model's one-line description before training (default: print it to stderr
            on the main process).

    Returns:
        PretrainPlan for a dry run, else PretrainResult.

    Raises:
        UsageError, DataError, NotFoundError.
    """
    from llmkit.loading import pick_device

    training.quiet_libraries()
    options = options.validate()
    if settings is None:
        settings = TrainSettings(**train_defaults(options))
    settings = replace(settings, max_length=options.block_size).validate()
    objective = options.objective or ""
    output = Path(output)
    if not dry_run:
        training.check_output(output, overwrite=overwrite, resume=resume)
    device = pick_device(device)
    precision = training.resolve_precision(settings.precision, device)
    main = int(os.environ.get("RANK", "0")) == 0
    if device == "cpu" and not dry_run:
        keep_freed_memory()  # each step's logits would otherwise be a fresh mmap, faulted in page by page

    text = read_corpus(corpus, text_column=options.text_column)
    notes = text.notes()
    checkpoint = training.last_checkpoint(output) if resume and not dry_run else None
    if resume and checkpoint is None and not dry_run:
        notes.append(f"--resume: no checkpoint in {training.checkpoint_dir(output)}, started from the beginning")
    ckpt_dir = training.checkpoint_dir(output)
    fresh = not ckpt_dir.exists()
    try:
        tokenizer, tokenizer_kind = _run_tokenizer(
            text, options, output=output, checkpoint=checkpoint, dry_run=dry_run, device=device
        )
        blocks = make_blocks(text, tokenizer, options, settings.seed)
        config = model_config(options, tokenizer)
        if checkpoint is not None:
            _check_same_model(checkpoint, config)
        model = build_model(config, objective, settings.seed)
    except BaseException:
        if fresh and main:  # the saved tokenizer of a run that never started is not worth keeping
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        raise
    if blocks.dropped:
        notes.append(f"the last {blocks.dropped} token(s), less than a block, were left out")
    architecture = describe_model(model, options)
    if announce is not None:
        announce(f"model: {architecture.line()}")
    elif main:
        _stderr_line(f"model: {architecture.line()}")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokens_per_step = settings.batch_size * settings.gradient_accumulation * world * options.block_size
    steps = training.total_steps(settings, len(blocks.train), world)
    eval_steps = settings.eval_steps or max(1, math.ceil(steps / DEFAULT_EVALUATIONS))
    run_settings = replace(settings, precision=precision, eval_steps=eval_steps, group_by_length=False)
    block_counts = {"train": len(blocks.train), "validation": len(blocks.validation)}

    if dry_run:
        return PretrainPlan(
            objective=objective,
            output=str(output),
            architecture=architecture,
            corpus={"files": text.files, "texts": len(text.texts), "characters": text.characters,
                    "tokens": blocks.tokens},  # fmt: skip
            tokenizer=tokenizer_kind,
            blocks=block_counts,
            tokens_per_step=tokens_per_step,
            steps=steps,
            epochs=round(steps * tokens_per_step / (len(blocks.train) * options.block_size), 4),
            total_tokens=steps * tokens_per_step,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            precision=precision,
            memory_estimate_bytes=training.estimate_memory_bytes(model, run_settings, options.block_size),
            notes=notes,
        )

    masking = masking_for(tokenizer, options, settings.seed) if objective == "mlm" else None
    train_ds, val_ds = block_datasets(blocks, masking)
    trainer, args, progress = _build_trainer(
        model, tokenizer, train_ds, val_ds, masking, run_settings, output=output, device=device,
        json_log=json_log, tokens_per_step=tokens_per_step, evaluate_first=checkpoint is None,
    )  # fmt: skip
    resumed_from = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    started = time.perf_counter()
    train_output = training.run_trainer(trainer, checkpoint)  # a stop signal saves a checkpoint first
    seconds = time.perf_counter() - started
    # Evaluations inside train() (the one before training included) are not training: their time is left out
    # of tokens/s, so the speed is the same whatever --eval-steps is.
    eval_seconds = sum(
        float(r.get("eval_runtime", 0.0))
        for r in trainer.state.log_history
        if "eval_loss" in r and (int(r.get("step", 0)) > resumed_from or checkpoint is None)
    )

    if blocks.validation and not any(
        "eval_loss" in r and r.get("step") == trainer.state.global_step for r in trainer.state.log_history
    ):
        trainer.evaluate()
    evaluations = _evaluations(trainer.state.log_history, tokens_per_step)
    trained = trainer.state.global_step - resumed_from
    sample = None
    if trainer.is_world_process_zero():
        net = trainer.accelerator.unwrap_model(trainer.model)
        net.eval()
        source = blocks.validation[0] if blocks.validation else blocks.train[0]
        sample = (
            sample_cloze(net, tokenizer, source) if objective == "mlm"
            else sample_generation(net, tokenizer, source, settings.seed)
        )  # fmt: skip
    before = next((e.perplexity for e in evaluations if e.step == 0), None)
    from llmkit.plot import missing_note

    if missing_note():
        notes.append(str(missing_note()))
    result = PretrainResult(
        output=str(output),
        objective=objective,
        architecture=architecture,
        tokenizer=tokenizer_kind,
        blocks=block_counts,
        steps=trainer.state.global_step,
        epochs=round(float(trainer.state.epoch or 0.0), 4),
        tokens_per_step=tokens_per_step,
        tokens_seen=trainer.state.global_step * tokens_per_step,
        train_seconds=round(seconds, 3),
        eval_seconds=round(eval_seconds, 3),
        tokens_per_second=round(trained * tokens_per_step / max(seconds - eval_seconds, 1e-9), 1),
        train_loss=float(train_output.training_loss) if train_output.training_loss is not None else None,
        evaluations=evaluations,
        perplexity_before=before,
        perplexity_after=evaluations[-1].perplexity if evaluations else None,
        sample=sample,
        resumed_from_step=resumed_from,
        processes=int(trainer.args.world_size),
        notes=notes,
    )
    report = {
        "result": asdict(result),
        "corpus": {"source": text.source, "files": text.files, "texts": len(text.texts),
                   "characters": text.characters, "tokens": blocks.tokens, "skipped_empty": text.skipped_empty,
                   "replaced_bytes": text.replaced_bytes},  # fmt: skip
        "validation": {
            "blocks": len(blocks.validation),
            "scored_tokens": _scored_tokens(val_ds, objective),
        },
        "options": asdict(options),
        "settings": asdict(run_settings),
        "task": "masked-lm" if objective == "mlm" else "causal-lm",  # as finetune names them (llmkit plot)
        "log": [r for r in trainer.state.log_history if "loss" in r and "eval_loss" not in r],
        # every evaluation of the run (the one before training, and those before a --resume), for curves.png
        "evaluations": _evaluation_records(trainer.state.log_history),
    }
    training.save_trained_model(trainer, tokenizer, args, report, output=output, overwrite=overwrite)
    return result


def _evaluation_records(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Trainer's evaluation records (`step`, `eval_loss`, ...) with `eval_perplexity`, one per step."""
    seen: dict[int, dict[str, Any]] = {}
    for record in log_history:
        if "eval_loss" in record:
            step = int(record.get("step", 0))
            seen[step] = {"step": step, "epoch": record.get("epoch"), "eval_loss": round_metric(record["eval_loss"]),
                          "eval_perplexity": round_metric(perplexity(record["eval_loss"]))}  # fmt: skip
    return [seen[s] for s in sorted(seen)]


def _scored_tokens(val_ds: Any, objective: str) -> int:
    """Tokens each evaluation scores: the masked ones (mlm) or every next token (clm)."""
    if val_ds is None:
        return 0
    if objective == "mlm":
        return sum(sum(1 for t in row if t != -100) for row in val_ds["labels"])
    return sum(len(row) - 1 for row in val_ds["input_ids"])


def _stderr_line(line: str) -> None:
    from llmkit.console import stderr_console

    stderr_console().print(line, highlight=False, markup=False)


def block_datasets(blocks: Blocks, masking: Masking | None) -> tuple[Any, Any]:
    """Train and validation `datasets.Dataset`s of blocks: train rows carry their `index` (the key of their
    masks); validation is None when nothing is held out, and masked once for mlm (`masking.mask_validation`)."""
    import datasets

    train_ds = datasets.Dataset.from_dict({"input_ids": blocks.train, "index": list(range(len(blocks.train)))})
    if not blocks.validation:
        return train_ds, None
    columns = mask_validation(blocks.validation, masking) if masking else {"input_ids": blocks.validation}
    return train_ds, datasets.Dataset.from_dict(columns)


def _build_trainer(
    model: Any, tokenizer: Any, train_ds: Any, val_ds: Any, masking: Masking | None, settings: TrainSettings, *,
    output: Path, device: str, json_log: bool, tokens_per_step: int, evaluate_first: bool,
) -> tuple[Any, Any, Any]:
    """The Trainer over the blocks, with llmkit's progress (tokens/s) and timed checkpoints."""
    args = training.build_training_args(
        settings,
        training.checkpoint_dir(output),
        has_eval=val_ds is not None,
        device=device,
        train_rows=len(train_ds),
        remove_unused_columns=False,  # the collator reads each row's `index`, and returns model inputs only
        eval_on_start=evaluate_first and val_ds is not None,
    )
    progress = training.ProgressCallback.create(
        json_log=json_log, description="pretrain", perplexity_metric=True, tokens_per_step=tokens_per_step
    )
    collator = BlockCollator(masking)
    trainer = training.trainer_class()(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        callbacks=[progress, training.TimedCheckpoint.create(settings), EpochCallback.create(collator)],
        compute_loss_func=masked_lm_loss if masking is not None else None,
    )
    training.drop_default_printers(trainer)
    if masking is not None:
        # a masked-LM head would take num_items_in_batch in **kwargs and ignore it; the loss is masked_lm_loss's.
        trainer.model_accepts_loss_kwargs = False
    return trainer, args, progress


# --- rendering ----------------------------------------------------------------------------------------------


def describe(plan_or_result: PretrainPlan | PretrainResult) -> str:
    """One line for `--format text`."""
    if isinstance(plan_or_result, PretrainPlan):
        p = plan_or_result
        return (
            f"plan: {p.objective}, {p.architecture.line()}; {p.blocks} blocks, {p.steps} steps x "
            f"{p.tokens_per_step:,} tokens = {p.total_tokens:,} tokens"
        )
    r = plan_or_result
    return (
        f"{r.output}: {r.objective}, {r.architecture.parameters:,} parameters, {r.steps} steps, "
        f"{r.tokens_seen:,} tokens in {r.train_seconds:.1f} s ({r.tokens_per_second:,.0f} tokens/s), "
        f"validation perplexity {_num(r.perplexity_before)} -> {_num(r.perplexity_after)}"
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def renderable(plan_or_result: PretrainPlan | PretrainResult) -> Any:
    """Terminal view: a summary table; for a run, the evaluations and the sample."""
    from rich.console import Group
    from rich.table import Table

    plan = isinstance(plan_or_result, PretrainPlan)
    table = Table(show_header=False, title="Pre-training plan" if plan else "Pre-trained", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for f in fields(plan_or_result):
        if f.name in ("evaluations", "sample", "notes", "dry_run"):
            continue
        value = getattr(plan_or_result, f.name)
        if f.name == "architecture":
            value = value.line()
        elif f.name == "memory_estimate_bytes":
            value = f"~{value['total'] / 2**20:.0f} MiB"
        elif isinstance(value, float):
            value = f"{value:,.4g}"
        elif isinstance(value, int):
            value = f"{value:,}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in value.items())
        table.add_row(f.name.replace("_", " "), str(value))
    parts: list[Any] = [table]
    if not plan:
        result = plan_or_result
        assert isinstance(result, PretrainResult)
        if result.evaluations:
            evals = Table(title="Validation", title_justify="left")
            for name in ("step", "tokens", "loss", "perplexity"):
                evals.add_column(name, justify="right")
            for e in result.evaluations:
                evals.add_row(f"{e.step:,}", f"{e.tokens:,}", f"{e.loss:.4f}", f"{e.perplexity:,.2f}")
            parts.append(evals)
        if result.sample:
            parts.append(_sample_text(result.sample))
    return Group(*parts)


def _sample_text(sample: dict[str, Any]) -> str:
    if "top" in sample:
        guesses = ", ".join(f"{t['token']} {t['probability']:.2f}" for t in sample["top"])
        return f"cloze: {sample['text']}\n  answer {sample['answer']!r}; top: {guesses}"
    return f"sample: {sample['prompt']}[{sample['completion']}]"
