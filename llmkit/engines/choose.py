"""The `--engine auto` rules, one chooser per task, each rule beside the measurement that justifies it.

Choosers read config files and settings only (no torch, no transformers): a task asks, gets a `Choice`, loads
that one engine, and puts the choice's reason into every record it writes.
"""

from __future__ import annotations

from llmkit.engines import Choice
from llmkit.errors import UsageError

# --- encoders: classify, fill-mask, embed ---------------------------------------------------------------------

ENCODER_ENGINES = ("auto", "onnx", "transformers")
# Why auto takes ONNX Runtime for an encoder on the CPU (benchmarks/onnx_engine.py, 2026-12-07, 2 shared cores,
# load 5-7): a fine-tuned MiniLM-L6 classifier on 3,000 mixed-length VADER snippets, whole process, ran in 44.5 s
# against 54.6 s for llmkit's former numpy BERT (1.23x, peak RSS 225 against 258 MiB) and 229 s for
# pipeline("text-classification", batch_size=32) (5.2x), all 3,000 labels equal; fill-mask with a MiniLM-L6 masked
# LM on 1,000 sentences: 3.1x pipeline(batch_size=16), 9.5x its defaults, same top-5 on all. And it runs every
# BERT-like family it exports (tests/test_onnx_engine.py), not BERT alone as the numpy forward did.
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
