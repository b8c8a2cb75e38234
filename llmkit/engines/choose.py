"""The chooser: every `--engine auto` rule, each next to the measurement that made it.

A task asks here which engine runs and why (a `Choice`), then loads that engine once and calls it. The engines
themselves only say what they can and cannot run (their `unsupported_*` facts); which one is preferred when
several could run is decided here, so that a reader finds every auto rule, and its reason, in one file.

Torch-free at import, like the engines package: `llmkit --help` imports the task modules, which import this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmkit.engines import Choice, native_enabled
from llmkit.errors import LlmkitError, MissingDependencyError, UsageError
from llmkit.sampling import GenerationSettings

# =================================================================================================================
# generate: llama.cpp, transformers, or llmkit's float32 Llama loop
# =================================================================================================================

GENERATE_ENGINES = ("auto", "transformers", "llama-cpp")  # what --engine accepts (the loop is auto's, see below)
# The engines a generate Choice can name. "llama-loop" answers token for token as transformers' greedy search
# does (tests/test_llama_loop.py), so its records say engine "transformers", as they always have.
LLAMA_CPP, TRANSFORMERS, LLAMA_LOOP = "llama-cpp", "transformers", "llama-loop"

DEFAULT_BATCH_SIZE = 8  # prompts per forward pass when many are piped in
# --engine auto with a GGUF model, a CPU and no --batch-size: this many prompts or more in the first window run on
# llmkit's float32 Llama loop at FILE_BATCH_SIZE instead of llama.cpp at DEFAULT_BATCH_SIZE. Measured on 64 TREC
# questions x 64 new tokens, one whole `llmkit generate -i FILE` process each (benchmarks/throughput.py):
#   2026-11-29, quiet: the loop at batch 64 150-184 tokens/s against llama.cpp Q4_1 x8's 84 (docs/performance.md);
#   2026-12-07, quiet (issue 23): the loop 14.6 s; CTranslate2 4.8.5 float32 21.2 s, int8 13.1 s;
#   2026-12-07, load average 11-16, 1 thread (benchmarks/results/throughput_ctranslate2.json): the loop 109 s;
#   CTranslate2 float32 118 s, the same 64 answers; int8 68 s, 0 of 64 answers the same; llama.cpp x8 222 s.
#   2026-12-08, quiet, 2 threads, best of 3, with the loop's blocked weight layout (throughput_20261208-quiet.json):
#   the loop 11.7 s; CTranslate2 float32 18.2 s, int8 11.4 s (0 of 64 answers the same); llama.cpp x8 28.5 s.
# The loop is kept only while that table has it ahead of every peer that gives the same answers (transformers'
# greedy ones): CTranslate2's int8 is faster, but it answers differently.
FILE_PROMPTS = 32
FILE_BATCH_SIZE = 64
# Only small GGUF files: the float32 copy that loop runs is about 4x the file (measured on the 98 MB bundled model).
FILE_MAX_GGUF_BYTES = 300 * 1024**2
FILE_RULE_REASON = (f"auto: {FILE_PROMPTS}+ prompts on the CPU run on llmkit's float32 Llama loop at batch "
                    f"{FILE_BATCH_SIZE} (measured 2.4x llama.cpp's batch {DEFAULT_BATCH_SIZE} on 64 prompts; "
                    "--engine llama-cpp keeps llama.cpp)")


@dataclass(frozen=True)
class GenerateChoice(Choice):
    """A `Choice` for generate, with what the rules also settled: the batch size and the weights' dtype.

    Attributes:
        batch_size: prompts decoded together (the FILE_BATCH_SIZE rule can raise the default).
        dtype: --dtype for loading transformers weights ("float32" where the dtype rule picked it).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    dtype: str = "auto"


def choose_generate(
    model: str,
    settings: GenerationSettings,
    *,
    requested: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    adapter: str | None = None,
    loaded: Any = None,
    lookup: int = 0,
    streaming: bool = False,
    available: Callable[[int], int] | None = None,
    revision: str | None = None,
    llama_cpp_failed: str | None = None,
) -> GenerateChoice:
    """Pick the engine, batch size and dtype of a generate run, and say why.

    Args:
        model: what --model names (alias, .gguf file, folder, hub id).
        settings: the `GenerationSettings` of the run.
        requested: --engine (auto|transformers|llama-cpp).
        device / dtype / batch_size / adapter / lookup / revision: as given to `generate()` (None: not given).
        loaded: an already loaded transformers `LoadedModel`, or None.
        streaming: whether text deltas are wanted as they come (batch size 1).
        available: how many prompts there are, up to n (reads ahead; called only by the rules that need a
            count). None: one prompt.
        llama_cpp_failed: set when llama.cpp was chosen and could not load the file (one line): auto then
            takes transformers, and `fallback` says so.

    Returns:
        A `GenerateChoice`; its `reason` goes into every record.

    Raises:
        UsageError: an unknown --engine, or an explicit engine or --lookup that cannot run this (exit 2).
        MissingDependencyError: --engine llama-cpp without the llama.cpp bindings (exit 4).
    """
    if requested not in GENERATE_ENGINES:
        raise UsageError(f"unknown --engine {requested!r}; use one of {', '.join(GENERATE_ENGINES)}")
    count = available or (lambda n: min(n, 1))
    batch = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    fallback = None
    if adapter is not None:
        if requested == LLAMA_CPP:
            raise UsageError("--adapter runs on the transformers engine; drop --engine llama-cpp")
        reason = "a peft adapter runs on the transformers engine"
    elif loaded is not None:
        reason = "an already loaded transformers model was passed"
    elif llama_cpp_failed is not None:
        reason = f"auto: llama.cpp could not load the file ({llama_cpp_failed}); transformers ran"
        # said once per run: the engine changes speed and can change answers (docs/concepts/engines.md)
        fallback = f"{llama_cpp_failed}; running it with transformers instead (--engine auto)"
    elif requested == TRANSFORMERS:
        reason = "asked for with --engine transformers"
    else:
        refusal = _llama_cpp_refusal(model, settings, device, dtype)
        if refusal is None:
            why = "GGUF model, bindings installed, all settings supported"
            if requested == LLAMA_CPP:
                why = "asked for with --engine llama-cpp; " + why
            # The file rule: a file of prompts with no --batch-size runs faster on the loop (see FILE_PROMPTS).
            elif (batch_size is None and not lookup and not streaming and count(FILE_PROMPTS) >= FILE_PROMPTS
                    and file_runs_on_loop(model, settings, device)):
                return GenerateChoice(LLAMA_LOOP, FILE_RULE_REASON, batch_size=FILE_BATCH_SIZE, dtype="float32")
            if batch_size is None:
                # No more parallel sequences than prompts: llama.cpp sets up a slot per sequence and a KV pool for
                # all of them before the first token. A bare xllamacpp process answering one prompt (1 token) took
                # 0.66 s CPU / 2.05 s wall at 8 sequences and 4608 tokens of KV against 0.58 / 1.86 at 1 sequence
                # and 256 (medians of 9, interleaved, 2026-12-07, load average 9-12; /tmp script, same BARE as
                # benchmarks/startup_generate.py).
                batch = max(1, count(DEFAULT_BATCH_SIZE))
            return GenerateChoice(LLAMA_CPP, why, batch_size=batch, dtype=dtype)
        reason, error = refusal
        if requested == LLAMA_CPP:
            raise error
    if lookup:
        raise UsageError(f"--lookup runs on the llama.cpp engine, and {model} runs on transformers here "
                         f"({reason}); give a GGUF model or drop --lookup")
    load_dtype = _dtype_by_batch(dtype, device, batch, count, loaded)
    engine = TRANSFORMERS
    if _loop_runs(model, settings, load_dtype, device, adapter, loaded, revision):
        engine = LLAMA_LOOP
    return GenerateChoice(engine, reason, fallback, batch_size=batch, dtype=load_dtype)


# llmkit serve, --engine auto, a GGUF model the loop runs (file_runs_on_loop) on a CPU: with --max-concurrency of
# SERVE_LOOP_MIN_CONCURRENCY or more, the model is served by llmkit's float32 Llama loop, greedy requests decoded
# in continuous batches (engines/transformers.Generator, max_batch), instead of by llama.cpp's parallel sequences.
# Decided per server at start, never per request, so an answer does not depend on the load: every request of that
# server runs on the loop, one at a time or together. Measured on 16 TREC questions x 64 greedy tokens, both
# engines in one process, passes alternated (benchmarks/serve_engines.py; CPU ms per token is this process's CPU
# time, robust to the load):
#   2026-12-08, quiet (load average 1.2-1.6; benchmarks/results/serve_engines_20261208-003621.json), with the loop's
#   weights in oneDNN's blocked layout (llama_loop._pack), CPU ms per token, 2 rounds: llama.cpp Q4_1 one at a
#   time 24.1 / 23.5, 16 parallel sequences 15.6 / 15.1; the loop at batch 1 64.2 / 70.8, at batch 16 7.9 / 7.4:
#   2x less CPU per token than llama.cpp's 16 sequences and 3x less than llama.cpp one at a time (tokens/s: the
#   loop at 16 194.6 / 209.6, llama.cpp one at a time 65.3 / 69.0, 16 sequences 115.1 / 120.4), the loop's 16
#   answers the same at batch 1 and 16. (2026-12-07, before the blocked layout, loaded: the loop at 16 11.2 / 11.0
#   CPU ms per token against llama.cpp's 14.2 / 14.3; serve_engines_20261207-194054.json.)
#   Its cost: one request alone takes about 3x llama.cpp's CPU (float32 weights, 4x the file, read per token), so
#   the rule asks for a server sized for many concurrent requests.
# llama.cpp batches the bundled Q4_1 file poorly: its fast batched matmul (llamafile's tinyBLAS, ggml-cpu
# llamafile/sgemm.cpp) takes F32, F16, BF16, Q8_0, Q4_0, Q5_0 and IQ4_NL weights, not Q4_1, so 16 sequences run
# the row-by-row Q4_1 dot products. Below that concurrency llama.cpp stays: faster for one stream, and the answers
# `llmkit generate "a prompt"` gives.
SERVE_LOOP_MIN_CONCURRENCY = 16
SERVE_RULE_REASON = (f"auto: served with {SERVE_LOOP_MIN_CONCURRENCY}+ concurrent requests, this GGUF model runs on "
                     "llmkit's float32 Llama loop, greedy requests in continuous batches (measured 2x less CPU per "
                     "token than llama.cpp's 16 parallel sequences on a 2-core CPU; --engine llama-cpp keeps llama.cpp)")


def choose_served(model: str, *, requested: str = "auto", device: str = "auto", dtype: str = "auto",
                  concurrency: int = 1, revision: str | None = None,
                  llama_cpp_failed: str | None = None) -> GenerateChoice:
    """The engine `llmkit serve` loads a generative model on, and why: `generate`'s choice for one streamed
    prompt, except where the SERVE_LOOP_MIN_CONCURRENCY rule puts a GGUF model on the loop (batch_size: the
    largest batch).

    Args:
        model: the -m model spec.
        requested / device / dtype / revision / llama_cpp_failed: as for `choose_generate`.
        concurrency: the server's --max-concurrency.
    """
    settings = GenerationSettings()
    choice = choose_generate(model, settings, requested=requested, device=device, dtype=dtype, batch_size=1,
                             streaming=True, revision=revision, llama_cpp_failed=llama_cpp_failed)
    if (choice.engine == LLAMA_CPP and requested == "auto" and concurrency >= SERVE_LOOP_MIN_CONCURRENCY
            and dtype in ("auto", "float32") and file_runs_on_loop(model, settings, device)):
        return GenerateChoice(LLAMA_LOOP, SERVE_RULE_REASON, batch_size=concurrency, dtype="float32")
    return choice


def _dtype_by_batch(dtype: str, device: str, batch: int, count: Callable[[int], int], loaded: Any) -> str:
    """--dtype auto on a CPU: float32 where batches will hold more than one prompt, else auto (bfloat16).

    bfloat16 pays at batch 1 (memory-bound) and loses at batch 8 (compute-bound on AVX2), where float32 also lets
    the Llama loop run (docs/performance.md). A model passed in already loaded keeps its own dtype.
    """
    if dtype != "auto" or loaded is not None or batch <= 1 or not _on_cpu(device):
        return dtype
    return "float32" if count(2) > 1 else dtype


def _loop_runs(model: str, settings: GenerationSettings, load_dtype: str, device: str, adapter: str | None,
               loaded: Any, revision: str | None) -> bool:
    """The loop-vs-generate rule: greedy and per-input sampling of a plain Llama in float32 on the CPU run on
    llmkit's own loop (the same tokens as transformers' generate; 1.5-2x its speed at batch 8-64 on 2 cores,
    benchmarks/generate.py), everything else through transformers' `model.generate`."""
    from llmkit.engines import llama_loop

    if not native_enabled() or llama_loop.unsupported_settings(settings) is not None:
        return False
    if loaded is not None:
        return llama_loop.unsupported_model(loaded.model) is None
    if adapter is not None or load_dtype != "float32" or not _on_cpu(device):
        return False
    return llama_loop.unsupported_source(model, revision=revision) is None


def _on_cpu(device: str) -> bool:
    """Whether transformers would run on the CPU; torch is asked only where an accelerator is visible."""
    if device != "auto":
        return device == "cpu"
    from llmkit import loading

    return not loading.accelerator_visible() or loading.pick_device(device) == "cpu"


def file_runs_on_loop(model: str, settings: GenerationSettings, device: str) -> bool:
    """Whether a file of prompts for this GGUF model would run on llmkit's float32 Llama loop here: a CPU run
    (no GPU visible for auto), settings the loop supports, and a Llama GGUF of at most FILE_MAX_GGUF_BYTES."""
    from llmkit import loading
    from llmkit.engines import llama_cpp, llama_loop

    if device not in ("auto", "cpu") or (device == "auto" and loading.accelerator_visible()):
        return False
    if llama_loop.unsupported_settings(settings) is not None or not native_enabled():
        return False
    gguf = llama_cpp.gguf_for(model)
    if gguf is None or gguf.stat().st_size > FILE_MAX_GGUF_BYTES:
        return False
    return llama_cpp.read_gguf_info(gguf).architecture == "llama"


def _llama_cpp_refusal(model: str, settings: GenerationSettings, device: str,
                       dtype: str) -> tuple[str, LlmkitError] | None:
    """Why llama.cpp cannot run this: (auto's reason for the record, the error for --engine llama-cpp); None
    when it can. Auto prefers llama.cpp wherever it can run: on the GGUF's own weights it is several times
    faster than transformers on a CPU and imports no torch (benchmarks/generate_llama.py)."""
    from llmkit.engines import llama_cpp

    if not llama_cpp.bindings_installed():
        return ("llama.cpp bindings not installed", MissingDependencyError(
            f"--engine llama-cpp needs the llama.cpp bindings; install them: {llama_cpp.INSTALL_HINT}"))
    if llama_cpp.gguf_for(model) is None:
        return ("not a GGUF model (llama.cpp runs .gguf files and the bundled GGUF alias)", UsageError(
            f"--engine llama-cpp runs GGUF models (a .gguf file or {_bundled_gguf_aliases()}); "
            f"{model} is a transformers model: use --engine transformers"))
    missing = llama_cpp.unsupported_settings(settings)
    if missing:
        return (f"{', '.join(missing)} needs transformers", UsageError(
            f"llama.cpp has no {', '.join(missing)}; drop it or use --engine transformers (or auto)"))
    if dtype != "auto":
        return (f"--dtype {dtype} is a transformers setting", UsageError(
            f"--dtype {dtype} does not apply to llama.cpp (it runs the GGUF's own weight types); "
            "drop --dtype or use --engine transformers"))
    if _gpu_wanted(device) and not llama_cpp.bindings_have_gpu():
        return (f"--device {device}: the llama.cpp build here is CPU-only", UsageError(
            f"the installed llama.cpp build is CPU-only; use --device cpu or --engine transformers "
            f"for --device {device}"))
    return None


def _gpu_wanted(device: str) -> bool:
    """Whether `device` asks for (or, for auto, would get) a GPU; checked without importing torch."""
    if device in ("cuda", "mps"):
        return True
    if device != "auto":
        return False
    from llmkit.loading import nvidia_gpu_visible

    return nvidia_gpu_visible()


def _bundled_gguf_aliases() -> str:
    from llmkit.loading import BUNDLED

    return "the alias " + ", ".join(m.alias for m in BUNDLED.values() if m.kind == "gguf")


# =================================================================================================================
# classify, fill-mask, embed: ONNX Runtime or transformers
# =================================================================================================================

# --- encoders: classify, fill-mask, embed ---------------------------------------------------------------------

ENCODER_ENGINES = ("auto", "onnx", "transformers")
# Why auto takes ONNX Runtime for an encoder on the CPU (benchmarks/onnx_engine.py, 2026-12-07, 2 shared cores,
# load 5-7): a fine-tuned MiniLM-L6 classifier on 3,000 mixed-length VADER snippets, whole process, ran in 44.5 s
# against 54.6 s for llmkit's former numpy BERT (1.23x, peak RSS 225 against 258 MiB) and 229 s for
# pipeline("text-classification", batch_size=32) (5.2x), all 3,000 labels equal; fill-mask with a MiniLM-L6 masked
# LM on 1,000 sentences: 3.1x pipeline(batch_size=16), 9.5x its defaults, same top-5 on all. And it runs every
# BERT-like family it exports (tests/test_onnx_engine.py), not BERT alone as the numpy forward did.
# embed (head "base", benchmarks/embed.py --parts speed --speed-texts 1000 --threads 1, 2026-12-07, loaded machine,
# load 4-12, best of 2, export cached): all-MiniLM-L6-v2 on 1,000 mixed-length real texts, whole process, 19.6 s
# (16.2 CPU s) against 26.5 s (21.7) for embed on transformers and 32.5 s (26.3) for sentence-transformers'
# encode: 1.66x it (1.62x in CPU time), the same vectors (cosine 1.000000 to both; benchmarks/results/
# embed-20261207-170618.json).
ONNX_REASON = "auto: an encoder on the CPU runs on ONNX Runtime (exported once, float32, same scores as transformers)"
ONNX_FOLDER_REASON = "an ONNX model folder (llmkit quantize --method onnx-int8) runs on ONNX Runtime"


def choose_encoder(
    spec: str,
    head: str | None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    requested: str = "auto",
    adapter: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Choice:
    """The engine for an encoder task (classify, fill-mask, embed) on `spec`.

    Args:
        spec: the model spec as typed.
        head: the head the task needs: "sequence-classification" (classify, also zero-shot NLI), "masked-lm"
            (fill-mask) or "base" (embed); None when the task cannot tell yet.
        device, dtype: the --device and --dtype settings.
        requested: the --engine setting: auto, onnx or transformers.
        adapter: a peft adapter put on `spec`.

    Returns:
        A `Choice`. Its `fallback` is set when auto preferred ONNX Runtime and something about this model or this
        machine kept it from it (remote code, an export that failed before, a GPU without onnxruntime's CUDA
        provider): the task says that once on stderr.

    Raises:
        UsageError: an unknown engine, --engine onnx on what ONNX Runtime cannot run, or --engine transformers
            on an ONNX-only folder.
    """
    from llmkit import loading
    from llmkit.engines import onnx, onnx_cache

    del trust_remote_code  # remote code goes to transformers whatever the flag: the exporter takes stock classes

    if requested not in ENCODER_ENGINES:
        raise UsageError(f"unknown --engine {requested!r}; use one of {', '.join(ENCODER_ENGINES)}")
    folder = onnx.model_folder(spec, revision) if adapter is None else None
    if folder is not None and onnx_cache.onnx_folder(folder) is not None:  # quantize --method onnx-int8 output
        if requested == "transformers":
            raise UsageError(f"{spec} holds an ONNX graph only (quantize --method onnx-int8); run it with "
                             "--engine auto or onnx")
        if device in ("cuda", "mps") and not (device == "cuda" and onnx.cuda_provider()):
            raise UsageError(f"{spec} is an ONNX int8 model, which runs on the CPU; drop --device {device}")
        return Choice("onnx", ONNX_FOLDER_REASON if requested == "auto" else "asked for with --engine onnx")
    if requested == "transformers":
        return Choice("transformers", "asked for with --engine transformers")
    if folder is None and adapter is None:
        elsewhere = onnx.not_local(spec)
        if requested == "onnx":
            raise UsageError(f"--engine onnx cannot run {spec}: {elsewhere}; use --engine auto or transformers")
        return Choice("transformers", f"auto: {elsewhere}; transformers runs it")
    config = onnx_cache.read_json(folder / "config.json") if folder is not None else None
    found = onnx.head_of_config(config) if config is not None else None
    why = onnx.folder_unsupported(folder, head, config=config, adapter=adapter, dtype=dtype)
    fallback: str | None = None  # set where auto wanted ONNX Runtime and this model or machine kept it from it
    if config is not None and config.get("auto_map"):
        fallback = why
    elif why is None and found == "causal-lm":
        why = "a causal LM runs on transformers (the ONNX engine runs encoders)"
    elif why is None and found != head and head != "base":  # any encoder gives hidden states
        why = f"it is a {found or 'model of another kind'}, not a {head} model"
    if why is None and folder is not None and head is not None:
        previous = onnx_cache.refusal(folder, head)
        if previous is not None:
            why = fallback = f"its ONNX export failed before ({previous}; `llmkit models --clean` lets it try again)"
    if why is None:
        gpu = device == "cuda" or (device == "auto" and loading.nvidia_gpu_visible())
        if device == "mps" or (device == "auto" and not gpu and loading.accelerator_visible()):
            why = "the ONNX engine runs on the CPU or CUDA, not MPS"
        elif gpu and not onnx.cuda_provider():
            why = fallback = "a CUDA GPU is here and this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
    if requested == "onnx":
        if why is not None:
            raise UsageError(f"--engine onnx cannot run {spec}: {why}; use --engine auto or transformers")
        return Choice("onnx", "asked for with --engine onnx")
    if why is not None:
        return Choice("transformers", f"auto: {why}; transformers runs it",
                      fallback=None if fallback is None else f"{spec}: {fallback}; transformers runs it")
    return Choice("onnx", ONNX_REASON)


def load_chosen_encoder(
    spec: str,
    head: str,
    *,
    engine: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    adapter: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    warn_fallback: bool = True,
) -> tuple[Any, Choice]:
    """Choose the engine for an encoder task and, when it is ONNX Runtime, load it: (the ONNX handle, its Choice),
    or (None, the Choice) when transformers is to run (the caller loads it its own way). A failed export under
    auto falls back to transformers; the fallback is said once on stderr when `warn_fallback`."""
    choice = choose_encoder(spec, head, device=device, dtype=dtype, requested=engine, adapter=adapter,
                            revision=revision, trust_remote_code=trust_remote_code)
    if choice.engine == "onnx":
        from llmkit.engines import onnx as onnx_engine

        try:
            loaded = onnx_engine.load(spec, head, revision=revision, allow_pickle=allow_pickle,
                                      trust_remote_code=trust_remote_code, device=onnx_device(device))
            return loaded, choice
        except onnx_engine.ExportError as exc:
            if engine == "onnx":
                raise
            choice = fell_back(spec, exc.message)
    if choice.fallback is not None and warn_fallback:
        from llmkit.console import warn

        warn(choice.fallback)  # once per run: the engine changes speed (and the reason is in every record)
    return None, choice


def fell_back(spec: str, failure: str) -> Choice:
    """The choice when auto picked ONNX Runtime and the export (or the graph) failed: transformers, saying why."""
    message = f"{spec} could not run on ONNX Runtime ({failure}); transformers runs it (--engine auto)"
    return Choice("transformers", f"auto: the ONNX export failed ({failure}); transformers ran", fallback=message)


def onnx_device(device: str) -> str:
    """The device an ONNX choice runs on: "cuda" where a GPU was asked for or is visible (the chooser checked the
    provider), else "cpu"."""
    from llmkit import loading

    if device == "cuda" or (device == "auto" and loading.nvidia_gpu_visible()):
        return "cuda"
    return "cpu"
