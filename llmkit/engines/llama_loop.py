"""llmkit's float32 Llama loop: greedy decoding (and per-input sampling) of Llama-architecture causal LMs in plain
torch, the engine `--engine auto` picks for a file of prompts on a CPU (engines/choose.py, FILE_PROMPTS).

Why: on a CPU, batched generation is bound by the weight matrices' products, and transformers' per-step machinery
(a growing DynamicCache, mask building, hooks) adds to it. This module takes the weights of a Llama (read straight
from model.safetensors, or from an already loaded `LlamaForCausalLM`) and runs the textbook decoder loop: one fused
QKV and one fused gate/up product per layer, RoPE, grouped-query SDPA over a KV cache allocated once for the whole
run, RMSNorm and SiLU, with the linear weights laid out once for oneDNN (`_pack`: its blocked layout, 1.31x the
plain oneDNN layout at batch 16, which itself halved the time of the 49,152-row output projection at batch 8-64 on
AVX2). Rows that have finished (EOS or a stop string) leave the batch, so long answers do not pay for short ones.
Measured in benchmarks/generate.py and benchmarks/throughput.py
(against llama.cpp and CTranslate2; docs/performance.md); the chooser keeps it only where that table has it ahead.

Used only where it gives transformers' greedy answers: float32 weights on the CPU, a plain `LlamaForCausalLM`
(no attention or MLP bias, SiLU, default/linear/llama3 RoPE), greedy search or llmkit's sampling (one random
stream per input: seeded_sampling.py), with no repetition penalty, n-gram ban, beams or n-best, and no adapter.
The batches, stop strings, streaming and records are the transformers engine's (engines/transformers.py): this
loop only takes the place of `model.generate`. Parity with transformers' greedy output (token for token, with left
padding, stop strings, EOS and streaming) is pinned by tests/test_llama_loop.py on tiny models and on the bundled
SmolLM2. `LLMKIT_NATIVE=0` turns the loop off. Built from a folder (`load`), the model is read one matrix at a
time and holds about one copy (0.98 GB RSS for the bundled SmolLM2 after loading). Packed from a transformers
model, the packed weights are a second copy of the linear layers: when the model was loaded for this run, each of
its matrices is dropped once packed, but weights transformers mapped from a safetensors file stay mapped (clean
pages the kernel can reclaim), so the peak RSS at batch 8 is 1.56 GB against 1.05 GB through `generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

# one switch and one list of folders to leave to transformers, shared by every engine
from llmkit.engines import NATIVE_ENV, NOT_NATIVE_FILES, native_enabled

NAME = "llama-loop"
ARCHITECTURE = "LlamaForCausalLM"
WEIGHTS = "model.safetensors"
ROPE_TYPES = ("default", "linear", "llama3")  # an inverse-frequency table fixed at load; "dynamic" etc. change it
# A prefill pass costs its padded positions (rows x longest suffix) plus about this many positions' worth of fixed
# work (one pass over 30 layers of small kernels took 0.11 s on 24 tokens: ~50 positions of SmolLM2's products).
PREFILL_PASS_COST = 64
MIN_SHARED = 4  # a common prefix shorter than this is not worth computing apart


def _shared_prefix(input_ids: Any, lengths: Any) -> int:
    """How many leading real tokens all left-padded rows share (0 below MIN_SHARED); each row keeps one of its own."""
    import torch

    width = int(lengths.min()) - 1
    if width < MIN_SHARED:
        return 0
    prompt_len = input_ids.shape[1]
    starts = prompt_len - lengths
    heads = torch.gather(input_ids, 1, starts[:, None] + torch.arange(width)[None, :])
    same = (heads == heads[:1]).all(0).long().cumprod(0).sum()
    return int(same) if int(same) >= MIN_SHARED else 0


def prefill_groups(lengths: list[int], pass_cost: int | None = None) -> list[tuple[int, int]]:
    """Split prompts sorted by length (longest first) into prefill passes [(start, end), ...] of least cost.

    A pass pads every row to its first (longest) row; the cost of a split is its padded positions plus
    `pass_cost` per pass, minimised exactly by dynamic programming (64 TREC questions after a shared system turn:
    1,372 positions in 4 passes, against 1,568 in 4 passes of 16 rows).
    """
    pass_cost = PREFILL_PASS_COST if pass_cost is None else pass_cost
    n = len(lengths)
    best = [0] * (n + 1)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        best[end], cut[end] = min((best[a] + lengths[a] * (end - a) + pass_cost, a) for a in range(end))
    groups = []
    while n:
        groups.append((cut[n], n))
        n = cut[n]
    return groups[::-1]


def _drop_rows(finished: Any, written: int, rows: Any, token: Any, next_pos: Any, valid: Any,
               cache: list[Any]) -> tuple[Any, Any, Any, Any, list[Any]]:
    """The batch without its `finished` rows: each finished row among the first n (n rows remain) takes a live row
    from beyond n, and every tensor is cut to its first n rows (views: no copy of the cache, whose slots
    [written, ...) are still empty and are not moved). Row order changes; `rows` says which input each holds."""
    alive = ~finished
    n = int(alive.sum())
    holes = finished[:n].nonzero().squeeze(1)
    movers = alive[n:].nonzero().squeeze(1) + n
    if len(holes):
        for tensor in (rows, token, next_pos, valid):
            tensor[holes] = tensor[movers]
        for c in cache:
            c[holes, :, :written] = c[movers, :, :written]
    return rows[:n], token[:n], next_pos[:n], valid[:n], [c[:n] for c in cache]


def _rope_type(config: Any) -> str:
    """The RoPE type of a config object or a config.json dict."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    params = get("rope_parameters") or get("rope_scaling") or {}
    return str(params.get("rope_type", params.get("type", "default"))) if isinstance(params, dict) else "unknown"


def unsupported_model(net: Any) -> str | None:
    """Why `net` cannot run natively (a short phrase), or None when it can."""
    import torch

    if not native_enabled():
        return f"{NATIVE_ENV}=0"
    config = getattr(net, "config", None)
    if type(net).__name__ != ARCHITECTURE or getattr(config, "model_type", None) != "llama":
        return f"not a {ARCHITECTURE}"
    if getattr(net, "peft_config", None) is not None or getattr(net, "hf_quantizer", None) is not None:
        return "an adapter or a quantized model"
    try:
        weight = net.get_input_embeddings().weight
    except AttributeError:
        return "no input embeddings"
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        return "not float32 on the CPU"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "biased projections"
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return "an activation or tensor-parallel layout other than Llama's"
    if _rope_type(config) not in ROPE_TYPES:
        return f"{_rope_type(config)} RoPE"
    for module in net.modules():  # a quantized or otherwise swapped projection would be bypassed
        if "Linear" in type(module).__name__ and type(module) is not torch.nn.Linear:
            return f"a {type(module).__name__} layer"
    return None


def unsupported_call(kwargs: dict[str, Any]) -> str | None:
    """Why these `model.generate` keyword arguments need transformers (a short phrase), or None."""
    if kwargs.get("do_sample") or kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
        return "sampling or beam search"
    if kwargs.get("repetition_penalty", 1.0) not in (None, 1.0) or kwargs.get("no_repeat_ngram_size") not in (None, 0):
        return "a repetition penalty or n-gram ban"
    if kwargs.get("output_scores") or kwargs.get("return_dict_in_generate"):
        return "scores"
    known = {"max_new_tokens", "do_sample", "num_beams", "num_return_sequences", "repetition_penalty",
             "no_repeat_ngram_size", "temperature", "top_k", "top_p", "min_p", "typical_p", "pad_token_id",
             "stopping_criteria", "streamer", "input_ids", "attention_mask", "logits_processor"}
    extra = sorted(k for k, v in kwargs.items() if k not in known and v is not None)
    return f"generate() arguments {extra}" if extra else None


def unsupported_settings(settings: Any) -> str | None:
    """Why these `GenerationSettings` need transformers' `generate` (a short phrase), or None.

    The same rule as `unsupported_call` on the arguments generate() builds from them: sampling runs through
    llmkit's per-input sampler as greedy steps, so only beams, n-best and penalties are left out.
    """
    if settings.num_beams != 1 or settings.num_return_sequences != 1:
        return "beam search or n-best"
    if settings.repetition_penalty not in (None, 1.0) or settings.no_repeat_ngram_size not in (None, 0):
        return "a repetition penalty or n-gram ban"
    return None


def _rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)


def unsupported_config(config: dict[str, Any]) -> str | None:
    """Why a config.json cannot be built straight from its weights by `NativeLlama.from_folder`, or None."""
    if config.get("architectures") != [ARCHITECTURE] or config.get("model_type") != "llama":
        return f"not a plain {ARCHITECTURE}"
    why = unsupported_architecture(config)
    if why is not None:
        return why
    if _rope_type(config) != "default":
        return "scaled RoPE"  # transformers' own table is used for those (NativeLlama(net))
    return None


def unsupported_architecture(config: dict[str, Any]) -> str | None:
    """Why a model with this config.json, once loaded by transformers, is not one the loop runs (the config half
    of `unsupported_model`, answered before anything loads), or None."""
    if config.get("model_type") != "llama":
        return f"not a {ARCHITECTURE}"
    if config.get("auto_map") or config.get("quantization_config"):
        return "remote code or a quantized model"
    if config.get("attention_bias") or config.get("mlp_bias"):
        return "biased projections"
    if config.get("hidden_act", "silu") != "silu" or config.get("pretraining_tp", 1) != 1:
        return "an activation or tensor-parallel layout other than Llama's"
    if _rope_type(config) not in ROPE_TYPES:
        return f"{_rope_type(config)} RoPE"
    return None


def unsupported_source(spec: str, *, revision: str | None = None) -> str | None:
    """Why the model `spec` names is not a plain Llama the loop runs, read from its files before anything loads
    (config.json, a converted GGUF's config.json, or the GGUF header), or None when it is.

    A hub model whose config.json is not in the local cache cannot be told apart: it runs through transformers.
    """
    import json
    from pathlib import Path

    from llmkit import loading

    try:
        source = loading.resolve(spec)
    except Exception:  # noqa: BLE001 - loading.load reports bad specs with its own messages
        return "not a model llmkit can find"
    folder: Path | None = None
    if source.kind == "dir":
        folder = Path(source.location)
    elif source.kind == "gguf":
        gguf = Path(source.location)
        folder = loading.converted_dir(gguf)
        if not (folder / "config.json").is_file():  # not converted yet: the header names the architecture
            from llmkit.engines.llama_cpp import read_gguf_info

            try:
                architecture = read_gguf_info(gguf).architecture
            except Exception:  # noqa: BLE001 - a damaged file: transformers' conversion says what is wrong
                return "an unreadable GGUF file"
            return None if architecture == "llama" else f"a {architecture or 'unknown'} GGUF model"
    elif source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.location, "config.json", revision=revision)
        if not isinstance(cached, str):
            return "a hub model whose config.json is not cached here"
        folder = Path(cached).parent
    else:
        return f"a {source.kind} model"
    if (folder / "adapter_config.json").exists() or (folder / loading.QUANTIZATION_SETTINGS).exists():
        return "an adapter or a quantized model"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable config.json"
    return unsupported_architecture(config) if isinstance(config, dict) else "no readable config.json"


class NativeModel:
    """What `generate()` reads of a transformers model (config, generation_config), around a NativeLlama."""

    def __init__(self, config: dict[str, Any], generation: dict[str, Any], decoder: NativeLlama) -> None:
        from types import SimpleNamespace

        self.config = SimpleNamespace(is_encoder_decoder=False, eos_token_id=config.get("eos_token_id"))
        self.generation_config = SimpleNamespace(eos_token_id=generation.get("eos_token_id"))
        self.decoder = decoder


def generate(
    prompts: Iterable[Any],
    *,
    model: str,
    settings: Any,
    system: str | None = None,
    raw: bool = False,
    batch_size: int = 64,
    on_text: Callable[[int, str], None] | None = None,
    reason: str = "",
    loaded: Any = None,
    device: str = "cpu",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Iterator[Any]:
    """Generate with the loop: load the model (straight from its folder where `load` can, else through
    transformers, then pack it) and run the transformers engine's batches with this loop as their decoder.

    Args:
        prompts / settings / system / raw / batch_size / on_text: as for `llmkit.generate.generate`.
        model: the model spec; reason: why the loop runs, for the records.
        loaded: an already loaded float32 transformers `LoadedModel` to pack (kept usable), or None.
        device / revision / allow_pickle / trust_remote_code: for loading through transformers.

    Returns:
        An iterator of `Generation` (engine "transformers": the loop gives transformers' greedy tokens).
    """
    from llmkit.engines import transformers as hf

    lm = loaded or load(model) or hf.load_generator(model, device=device, dtype="float32", revision=revision,
                                                    allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    net = lm.model
    if isinstance(net, NativeModel):
        decoder: NativeLlama | None = net.decoder
    elif unsupported_model(net) is None:
        decoder = NativeLlama(net, release=loaded is None)  # net is ours alone then
    else:
        # The files said Llama but the loaded model is not one the loop runs exactly (e.g. a swapped layer):
        # transformers' own generate gives the answers, as the chooser would have picked had it known.
        decoder = None
    yield from hf.generate(lm, prompts, settings=settings, system=system, raw=raw, batch_size=batch_size,
                           on_text=on_text, reason=reason, decoder=decoder)


def load(spec: str) -> Any:
    """A `LoadedModel` whose model is a `NativeModel`, for a local Llama folder (or converted GGUF); else None.

    transformers' model classes are never imported on this path (about 4 s of a process on the 2-core machine):
    the weights come from model.safetensors, and the tokenizer from tokenizer.json through `tokenizers` where
    transformers would use that file as it is (`NativeChatTokenizer`), else through AutoTokenizer. A folder it cannot
    build exactly (see `unsupported_config`), or weights it cannot read, return None so that `loading.load` runs
    and reports as before.
    """
    import json
    import time
    from pathlib import Path

    import torch

    from llmkit import loading

    if not native_enabled():
        return None
    started = time.perf_counter()
    loading.quiet_library_logs()
    try:
        source = loading.resolve(spec)
    except Exception:  # noqa: BLE001 - loading.load reports bad specs with its own messages
        return None
    if source.kind == "dir":
        folder = Path(source.location)
    elif source.kind == "gguf":
        folder = loading.converted_dir(Path(source.location))  # not converted yet: loading.load converts it
    else:
        return None
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS).is_file():
        return None
    if any((folder / name).exists() for name in (*NOT_NATIVE_FILES, loading.QUANTIZATION_SETTINGS)):
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        generation_file = folder / "generation_config.json"
        generation = json.loads(generation_file.read_text(encoding="utf-8")) if generation_file.is_file() else {}
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or unsupported_config(config) is not None:
        return None
    try:
        decoder = NativeLlama.from_folder(folder, config)
    except Exception:  # noqa: BLE001 - damaged or unusual weights: transformers loads them and says what is wrong
        return None
    tokenizer = NativeChatTokenizer.for_folder(folder) or loading.load_tokenizer(source)
    notes = [f"run by llmkit's own Llama decoder from {folder} (engines/llama_loop.py); {NATIVE_ENV}=0 uses transformers"]
    return loading.LoadedModel(NativeModel(config, generation, decoder), tokenizer, source, "cpu", torch.float32,
                               time.perf_counter() - started, notes)


class _Padded(dict):  # type: ignore[type-arg]
    """What `tokenizer.pad(..., return_tensors="pt")` returns, as far as generate uses it."""

    def to(self, device: Any) -> _Padded:
        return _Padded({k: v.to(device) for k, v in self.items()})


class NativeChatTokenizer:
    """The slice of a transformers tokenizer that generate uses, over a folder's tokenizer.json used as it is.

    That is what transformers 5 does for a generic fast tokenizer (`TokenizersBackend`,
    `PreTrainedTokenizerFast`), and it saves importing transformers (1-2 s). Encoding, decoding, the special
    tokens and the chat template (rendered as `apply_chat_template` renders it) give the same results; a folder
    with settings that change the file's behaviour in transformers (added BOS/EOS, space clean-up, a prefix
    space, another tokenizer class) gets AutoTokenizer instead (`for_folder` returns None).
    """

    GENERIC = ("TokenizersBackend", "PreTrainedTokenizerFast")
    CHANGES_BEHAVIOUR = ("add_bos_token", "add_eos_token", "add_prefix_space", "clean_up_tokenization_spaces",
                         "legacy", "auto_map")

    def __init__(self, folder: Any, settings: dict[str, Any], template: str | None) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.chat_template = template
        self.padding_side = "left"

        def text(value: Any) -> str | None:
            value = value.get("content") if isinstance(value, dict) else value
            return value if isinstance(value, str) else None

        self.bos_token, self.eos_token, self.unk_token, self.pad_token = (
            text(settings.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token"))

    @classmethod
    def for_folder(cls, folder: Any) -> NativeChatTokenizer | None:
        """The tokenizer of `folder` when transformers would use its tokenizer.json unchanged, else None."""
        import json

        try:
            settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            if not (folder / "tokenizer.json").is_file() or not isinstance(settings, dict):
                return None
            if settings.get("tokenizer_class") not in cls.GENERIC:
                return None
            if any(settings.get(name) for name in cls.CHANGES_BEHAVIOUR):
                return None
            template = settings.get("chat_template")
            if (folder / "chat_template.jinja").is_file():
                template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
            if template is not None and not isinstance(template, str):
                return None  # named templates (a list): transformers picks among them
            return cls(folder, settings, template)
        except Exception:  # noqa: BLE001 - unreadable settings or a tokenizer.json `tokenizers` cannot read:
            return None  # AutoTokenizer loads it or says what is wrong

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str:
        from llmkit.sampling import render_chat_template

        if not add_generation_prompt or tokenize or self.chat_template is None:
            raise NotImplementedError("only the text of a chat with a generation prompt")
        tokens = {name: value for name in ("bos_token", "eos_token", "unk_token", "pad_token")
                  if (value := getattr(self, name)) is not None}
        return render_chat_template(self.chat_template, messages, **tokens)

    def pad(self, features: dict[str, list[list[int]]], return_tensors: str = "pt") -> _Padded:
        from llmkit.tokens import pad_batch  # the one padding routine (pad id, pad side, attention mask)

        return _Padded(pad_batch([{"input_ids": row} for row in features["input_ids"]], self))

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows: Any, skip_special_tokens: bool = False) -> list[str]:
        rows = rows.tolist() if hasattr(rows, "tolist") else [list(r) for r in rows]
        return self._tok.decode_batch(rows, skip_special_tokens=skip_special_tokens)


PACK_BATCH = 16  # the rows oneDNN lays the weights out for (see _pack)


def _pack(weight: Any) -> Any:
    """A weight in oneDNN's blocked layout for products of about PACK_BATCH rows (a private copy), else in its plain
    oneDNN layout, else the plain tensor where oneDNN's linear is missing.

    Why blocked: a weight in the plain layout (`to_mkldnn()`) is reordered by oneDNN inside every product of 2 rows
    or more, a pass over the whole matrix per call. `_reorder_linear_weight` (what torch.compile's freezing pass
    uses) does it once, at load: products of 2 rows and more give the same bits as before, and the bundled
    SmolLM2 decodes 16 rows at 1.31x the tokens/s (283 against 216), prefills 16 prompts in 0.53 s against 0.63,
    and one row at 1.04x, choosing the same tokens (benchmarks/llama_pack.py, llama_pack_20261208-0052*.json).
    One row alone runs another kernel than a batch, in either layout (last-bit differences, as before).
    """
    import torch

    plain = weight.detach()
    if not torch.backends.mkldnn.is_available():
        return plain
    packers = (lambda w: torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), PACK_BATCH),
               lambda w: w.to_mkldnn())
    for pack in packers:
        try:
            packed = pack(plain)
            torch.ops.mkldnn._linear_pointwise(plain[:2], packed, None, "none", [None], "")
        except (RuntimeError, AttributeError, NotImplementedError):  # a torch build without the kernel
            continue
        return packed
    return plain


def linear(x: Any, weight: Any) -> Any:
    """x @ weight.T; a packed weight goes through oneDNN (dense in, dense out: no layout conversions per call)."""
    import torch
    import torch.nn.functional as F

    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [None], "")
    return F.linear(x, weight)


class NativeLlama:
    """The decoder of a loaded `LlamaForCausalLM`, run with a preallocated KV cache (see the module docstring)."""

    def __init__(self, net: Any, *, release: bool = False) -> None:
        """Pack the weights of `net`; with `release`, drop each of net's projection matrices once packed.

        `release` frees what is not mapped from a file (a model converted or cast at load), and leaves `net`
        unusable: only for a model loaded for this run alone.
        """
        inner = net.model
        rotary = inner.rotary_emb
        output = net.get_output_embeddings()
        tied = output.weight is inner.embed_tokens.weight
        modules = dict(net.named_modules())

        def take(name: str) -> Any:
            module_name, _, _ = name.rpartition(".")
            weight = modules[module_name].weight.detach()
            if release and (module_name.startswith("model.layers.") or (name == "lm_head.weight" and not tied)):
                modules[module_name].weight = None
            return weight

        self._build(net.config.to_dict(), take, rotary.inv_freq.detach().float(),
                    float(getattr(rotary, "attention_scaling", 1.0)), tied=tied)

    @classmethod
    def from_folder(cls, folder: Any, config: dict[str, Any]) -> NativeLlama:
        """Build straight from a folder's model.safetensors (float32), without transformers' model classes."""
        import torch
        from safetensors import safe_open

        self = cls.__new__(cls)
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        theta = _rope_theta(config)
        # transformers' default RoPE table, computed the same way (float32 from int64 steps)
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        # One matrix at a time, each copied out of the file's memory map (`clone`): nothing kept refers to the
        # map, so it is released and the process holds about one copy of the model.
        with safe_open(str(folder / WEIGHTS), framework="pt") as weights:
            tied = "lm_head.weight" not in weights.keys()
            self._build(config, lambda name: weights.get_tensor(name).float().clone(), inv_freq, 1.0, tied=tied)
        return self

    def _build(self, config: dict[str, Any], take: Callable[[str], Any], inv_freq: Any, rope_scale: float, *,
               tied: bool) -> None:
        """Fuse and pack the weights that `take(name)` returns (transformers' parameter names)."""
        import torch

        self.heads = int(config["num_attention_heads"])
        self.kv_heads = int(config.get("num_key_value_heads") or self.heads)
        self.head_dim = int(config.get("head_dim") or config["hidden_size"] // self.heads)
        self.eps = float(config["rms_norm_eps"])
        self.scale = self.head_dim**-0.5
        self.inv_freq = inv_freq
        self.rope_scale = rope_scale
        self.embed = take("model.embed_tokens.weight")
        self.head = _pack(self.embed if tied else take("lm_head.weight"))
        self.norm = take("model.norm.weight")
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"model.layers.{i}."
            qkv = torch.cat([take(p + "self_attn.q_proj.weight"), take(p + "self_attn.k_proj.weight"),
                             take(p + "self_attn.v_proj.weight")])
            gate_up = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
            self.layers.append((take(p + "input_layernorm.weight"), _pack(qkv), _pack(take(p + "self_attn.o_proj.weight")),
                                take(p + "post_attention_layernorm.weight"), _pack(gate_up),
                                _pack(take(p + "mlp.down_proj.weight"))))
            del qkv, gate_up

    def running_batch(self, pad_token_id: int) -> RunningBatch:
        """An empty `RunningBatch` on this decoder (continuous batching: engines/transformers.Generator)."""
        return RunningBatch(self, pad_token_id)

    @staticmethod
    def supports(settings: Any) -> bool:
        """Whether this loop gives transformers' tokens for these `GenerationSettings` (`unsupported_settings`)."""
        return unsupported_settings(settings) is None

    def _rms(self, x: Any, weight: Any) -> Any:
        import torch

        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _rope(self, positions: Any) -> tuple[Any, Any]:
        import torch

        freqs = positions[..., None].float() * self.inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)
        return (angles.cos() * self.rope_scale)[:, None], (angles.sin() * self.rope_scale)[:, None]

    @staticmethod
    def _rotate(x: Any, cos: Any, sin: Any) -> Any:
        import torch

        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    def forward(self, ids: Any, positions: Any, cache: list[Any], start: int, mask: Any) -> Any:
        """Run `ids` [B, T] at `positions`, writing keys/values at cache[..., start:start+T]; the last hidden states.

        `mask` [B, 1, T, start+T] is True where a query may attend to a key.
        """
        import torch
        import torch.nn.functional as F

        batch, steps = ids.shape
        x = F.embedding(ids, self.embed)
        # SDPA turns a boolean mask into an additive one at every call: do it once for all layers (same result).
        mask = torch.zeros(mask.shape, dtype=x.dtype).masked_fill_(~mask, float("-inf"))
        cos, sin = self._rope(positions)
        q_end = self.heads * self.head_dim
        k_end = q_end + self.kv_heads * self.head_dim
        end = start + steps
        for i, (norm1, qkv, out, norm2, gate_up, down) in enumerate(self.layers):
            y = linear(self._rms(x, norm1), qkv)
            q = y[..., :q_end].view(batch, steps, self.heads, self.head_dim).transpose(1, 2)
            k = y[..., q_end:k_end].view(batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            v = y[..., k_end:].view(batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            keys, values = cache[2 * i], cache[2 * i + 1]
            keys[:, :, start:end] = self._rotate(k, cos, sin)
            values[:, :, start:end] = v
            a = F.scaled_dot_product_attention(self._rotate(q, cos, sin), keys[:, :, :end], values[:, :, :end],
                                               attn_mask=mask, scale=self.scale,
                                               enable_gqa=self.kv_heads != self.heads)
            x = x + linear(a.transpose(1, 2).reshape(batch, steps, q_end), out)
            gate, up = linear(self._rms(x, norm2), gate_up).chunk(2, dim=-1)
            x = x + linear(F.silu(gate) * up, down)
        return x[:, -1]

    def _prefill(self, input_ids: Any, attention_mask: Any, cache: list[Any], valid: Any) -> tuple[Any, Any, Any]:
        """Run the left-padded prompts into `cache`; return (output row of each batch position, last hidden states,
        next positions), with the batch positions sorted by prompt length.

        Cache layout: a prefix that every prompt shares (a chat template's system turn) sits once in slots
        [0, shared), computed for one row and copied; each prompt's remaining tokens sit at the end of the
        prompt slots, as in the left-padded input. The rest runs in passes of rows of similar length (`prefill_groups`),
        so little of the work is padding. Positions count each row's real tokens, as transformers does.
        """
        import torch

        batch, prompt_len = input_ids.shape
        lengths = attention_mask.long().sum(-1)
        order = torch.argsort(lengths, descending=True, stable=True)
        input_ids, lengths = input_ids[order], lengths[order]
        shared = _shared_prefix(input_ids, lengths) if batch > 1 else 0
        if shared:
            first = input_ids[:1, prompt_len - int(lengths[0]) : prompt_len - int(lengths[0]) + shared]
            causal = torch.ones(shared, shared, dtype=torch.bool).tril()
            self.forward(first, torch.arange(shared)[None], [c[:1] for c in cache], 0, causal[None, None])
            for c in cache:
                c[1:, :, :shared] = c[:1, :, :shared]
            valid[:, :shared] = True
        suffix = lengths - shared
        slots = torch.arange(prompt_len)
        valid[:, :prompt_len] |= slots[None, :] >= (prompt_len - suffix)[:, None]
        hidden = []
        for a, b in prefill_groups(suffix.tolist()):
            width = int(suffix[a])  # the longest suffix of the group (rows are sorted)
            first_slot = prompt_len - width
            mine = valid[a:b, first_slot:prompt_len]
            positions = (shared + mine.long().cumsum(-1) - 1).masked_fill(~mine, 1)
            queries = slots[first_slot:, None]
            # causal over the prompt slots, real keys only; a padding query sees only itself (it is never read)
            mask = (valid[a:b, None, :prompt_len] & (slots[None, :] <= queries)) | (slots[None, :] == queries)
            hidden.append(self.forward(input_ids[a:b, first_slot:], positions, [c[a:b] for c in cache], first_slot,
                                       mask[:, None]))
        return order, torch.cat(hidden), shared + suffix

    def greedy(
        self,
        input_ids: Any,
        attention_mask: Any,
        *,
        max_new_tokens: int,
        eos: set[int],
        pad_token_id: int,
        stopping_criteria: Callable[[Any, Any], Any] | None = None,
        streamer: Any = None,
        logits_processor: Callable[[Any, Any], Any] | None = None,
    ) -> Any:
        """Greedy search as transformers' `generate(do_sample=False)` does it: prompt + new tokens, [B, P + n].

        A row that produced an EOS token (kept) or met `stopping_criteria` is finished: it leaves the batch and
        its later positions hold `pad_token_id`. Stops when every row has finished or after `max_new_tokens`.
        `logits_processor` (llmkit's per-input sampler) sees every row in batch order, as in transformers' loop;
        rows that have finished get zero logits there, and what it draws for them is dropped. A `streamer` with a
        `put_rows(rows, tokens)` method gets each step's tokens with their batch rows (rows leave as they finish);
        any other streamer gets transformers' calls (batch size 1).
        """
        import torch

        batch, prompt_len = input_ids.shape
        total = prompt_len + max_new_tokens
        out = torch.full((batch, total), pad_token_id, dtype=input_ids.dtype)
        out[:, :prompt_len] = input_ids
        if streamer is not None:
            streamer.put(input_ids.cpu())
        # Zeros, not empty: slots a row never writes (between a shared prefix and its suffix) are masked, and a
        # masked NaN would still poison the softmax.
        cache = [torch.zeros(batch, self.kv_heads, total, self.head_dim) for _ in range(2 * len(self.layers))]
        valid = torch.zeros(batch, total, dtype=torch.bool)
        eos_ids = torch.tensor(sorted(eos), dtype=input_ids.dtype)
        rows, hidden, next_pos = self._prefill(input_ids, attention_mask, cache, valid)
        produced = 0
        while True:
            logits = linear(self._rms(hidden, self.norm), self.head)
            if logits_processor is not None:
                every = logits.new_zeros(batch, logits.shape[-1])
                every[rows] = logits
                logits = logits_processor(out[:, : prompt_len + produced], every)[rows]
            token = logits.argmax(-1)
            out[rows, prompt_len + produced] = token
            produced += 1
            if streamer is not None:
                # a streamer of several rows (transformers.RowStreams) is told which batch row each token is for
                if hasattr(streamer, "put_rows"):
                    streamer.put_rows(rows.tolist(), token.tolist())
                else:
                    streamer.put(token.cpu())
            finished = torch.isin(token, eos_ids)
            if stopping_criteria is not None:
                finished |= stopping_criteria(out[rows, : prompt_len + produced], None)
            if produced >= max_new_tokens or bool(finished.all()):
                break
            step = prompt_len + produced - 1  # the cache slot of the token just chosen
            # Finished rows leave the batch at once: the last live rows move into their places (only the slots
            # written so far), and every tensor keeps the first rows that remain. Copying the whole cache at each
            # finish (index_select) took 1.8 s of a 30 s run of 64 TREC prompts; keeping finished rows until a
            # quarter had finished measured the same as that copy.
            if bool(finished.any()):
                rows, token, next_pos, valid, cache = _drop_rows(finished, step, rows, token, next_pos, valid, cache)
            valid[:, step] = True
            hidden = self.forward(token[:, None], next_pos[:, None], cache, step, valid[:, None, None, : step + 1])
            next_pos = next_pos + 1
        if streamer is not None:
            streamer.end()
        return out[:, : prompt_len + produced]


class RunningBatch:
    """Rows decoded together that join and leave at step boundaries: continuous batching, for a server.

    Each call to `admit` prefills its prompts together (`NativeLlama._prefill`, left padding as in `greedy`) and
    lays their KV rows into the running cache so that every prompt ends at the slot the next step writes: the
    alignment `greedy` gives prompts of different lengths at the start, done at a later step. A row's positions
    count its own tokens and its attention mask covers only its own slots, so a row decodes the tokens it decodes
    alone (greedy; tests/test_llama_loop.py). `tokens()` gives each row's next token; `advance(token, keep)` drops
    the rows not kept (their clients get their answers at once) and runs one step for the rest.

    Each row has a budget (the most tokens it may still make): the cache is sized at each `admit` for the rows'
    largest budget, so no step runs past it until the next `admit` reallocates it.
    """

    def __init__(self, decoder: NativeLlama, pad_token_id: int) -> None:
        self.decoder = decoder
        self.pad_token_id = pad_token_id
        self.handles: list[Any] = []  # the caller's row objects, in batch order
        self.budgets: list[int] = []
        self.cache: list[Any] = []
        self.valid: Any = None
        self.hidden: Any = None
        self.next_pos: Any = None
        self.written = 0  # cache slots [0, written) hold keys/values; the next step writes slot `written`

    def __len__(self) -> int:
        return len(self.handles)

    def admit(self, prompts: list[list[int]], handles: list[Any], budgets: list[int]) -> None:
        """Prefill `prompts` (token ids) as one left-padded batch and add them as rows (`handles`, in order)."""
        import torch

        d = self.decoder
        n, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        fresh = [torch.zeros(n, d.kv_heads, width, d.head_dim) for _ in range(2 * len(d.layers))]
        fresh_valid = torch.zeros(n, width, dtype=torch.bool)
        order, hidden, next_pos = d._prefill(ids, mask, fresh, fresh_valid)
        # the rows as they stand, and the new ones (in `_prefill`'s order: its cache rows are sorted by length)
        old = len(self.handles)
        first = self.written
        if old:
            used = self.valid[:, : self.written].any(0).nonzero()
            first = int(used[0]) if len(used) else self.written
        kept = self.written - first  # slots of the running rows still needed
        room = max(kept, width)  # the new `written`: both blocks end there
        new_handles = self.handles + [handles[int(i)] for i in order]
        new_budgets = self.budgets + [budgets[int(i)] for i in order]
        capacity = room + max(new_budgets) + 1
        cache = [torch.zeros(old + n, d.kv_heads, capacity, d.head_dim) for _ in fresh]
        valid = torch.zeros(old + n, capacity, dtype=torch.bool)
        for c, running, new in zip(cache, self.cache or [None] * len(fresh), fresh, strict=True):
            if old:
                c[:old, :, room - kept : room] = running[:, :, first : self.written]
            c[old:, :, room - width : room] = new
        if old:
            valid[:old, room - kept : room] = self.valid[:, first : self.written]
        valid[old:, room - width : room] = fresh_valid
        self.cache, self.valid, self.written = cache, valid, room
        self.handles, self.budgets = new_handles, new_budgets
        self.hidden = hidden if not old else torch.cat([self.hidden, hidden])
        self.next_pos = next_pos if not old else torch.cat([self.next_pos, next_pos])

    def tokens(self) -> Any:
        """Each row's next token (greedy), in batch order; each row's budget goes down by one."""
        d = self.decoder
        self.budgets = [b - 1 for b in self.budgets]
        return linear(d._rms(self.hidden, d.norm), d.head).argmax(-1)

    def advance(self, token: Any, keep: list[bool]) -> None:
        """Drop the rows not kept, then run the others' `token` (from `tokens()`) through one step."""
        import torch

        if not all(keep):
            finished = torch.tensor([not k for k in keep])
            rows = torch.arange(len(keep))
            rows, token, self.next_pos, self.valid, self.cache = _drop_rows(
                finished, self.written, rows, token, self.next_pos, self.valid, self.cache)
            self.hidden = None
            self.handles = [self.handles[int(i)] for i in rows]
            self.budgets = [self.budgets[int(i)] for i in rows]
        if not self.handles:
            self.cache, self.valid, self.hidden, self.next_pos, self.written = [], None, None, None, 0
            return
        step = self.written
        self.valid[:, step] = True
        self.hidden = self.decoder.forward(token[:, None], self.next_pos[:, None], self.cache, step,
                                           self.valid[:, None, None, : step + 1])
        self.next_pos = self.next_pos + 1
        self.written += 1
