"""Benchmark: llmkit classify against pipeline("text-classification", batch_size=32), back to back in one process.

Model: the bundled MiniLM-L6 encoder with a 2-label classification head (random, seeded: speed does not depend
on what the head learned), saved to a temp folder and loaded once for each side. Inputs: a few thousand generated
texts of mixed length (3 to 200 words, most short, as real review or support-ticket data is). Both sides run
float32; the timed part is classification only (model loading is excluded for both). Each side runs `--repeats`
times, alternating, and the best time counts. Agreement is checked: same labels, scores within 1e-4.

--corpus vader uses real text instead: VADER's tweets, movie, Amazon and NYT snippets, shuffled together
(fetched into benchmarks/.cache/). Threads: the pipeline runs with torch's default (one per core); llmkit
picks the free cores (llmkit.threads), so the pipeline also runs at llmkit's thread count, to show both parts
of the gain.

    python benchmarks/classify.py [--corpus generated|vader] [--inputs 3000] [--repeats 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

WORDS = (
    "the a service food movie plot actor was is very really not good bad great terrible slow fast price quality "
    "delivery arrived broken works perfectly never again would recommend staff friendly rude clean dirty room "
    "hotel battery screen sound music story ending boring exciting loved hated okay fine cheap expensive"
).split()


def make_inputs(n: int, seed: int = 0) -> list[str]:
    """Mixed lengths: most texts short, a long tail up to 200 words (log-normal), reproducible."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        length = max(3, min(200, int(rng.lognormvariate(3.0, 0.9))))
        texts.append(" ".join(rng.choice(WORDS) for _ in range(length)) + ".")
    return texts


def vader_inputs(n: int, seed: int = 0) -> list[str]:
    """`n` real snippets of mixed length: VADER's four sets shuffled together (seeded)."""
    sys.path.insert(0, str(HERE))
    import vader

    texts = [text for name in vader.SETS for text, _ in vader.rows(name)]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def build_model(folder: Path) -> Path:
    import torch

    from llmkit import loading

    torch.manual_seed(0)
    lm = loading.load("minilm-l6", "sequence-classification", device="cpu", dtype="float32",
                      model_kwargs={"num_labels": 2})
    lm.model.save_pretrained(str(folder))
    lm.tokenizer.save_pretrained(str(folder))
    return folder


def run_pipeline(pipe, texts: list[str], batch_size: int) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    out = pipe(texts, batch_size=batch_size, truncation=True)
    return time.perf_counter() - started, out


def run_llmkit(loaded, texts: list[str], batch_size: int) -> tuple[float, list]:
    from llmkit.classify import classify

    started = time.perf_counter()
    out = list(classify(texts, loaded=loaded, batch_size=batch_size))
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=["generated", "vader"], default="generated")
    parser.add_argument("--inputs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="Also write the numbers as JSON here.")
    args = parser.parse_args()

    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from llmkit import loading

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import os

    texts = make_inputs(args.inputs) if args.corpus == "generated" else vader_inputs(args.inputs)
    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp) / "minilm-cls")
        pipe = pipeline("text-classification", model=str(folder), device="cpu", dtype=torch.float32)
        # What `llmkit classify -m FOLDER` runs on a CPU: the ONNX engine (exported once into $LLMKIT_HOME);
        # the transformers engine (`--engine transformers`) is timed too.
        from llmkit.engines import onnx

        loaded = onnx.load(str(folder), "sequence-classification")
        loaded_tf = loading.load(str(folder), "sequence-classification", device="cpu", dtype="float32")
        token_counts = [len(ids) for ids in loaded.tokenizer(texts)["input_ids"]]
        # Warm-up (first-call allocations), not timed.
        run_pipeline(pipe, texts[:64], args.batch_size)
        run_llmkit(loaded, texts[:64], args.batch_size)
        run_llmkit(loaded_tf, texts[:64], args.batch_size)
        llmkit_threads = torch.get_num_threads()  # what classify chose (llmkit.threads.use_free_cores)
        times: dict[str, list[float]] = {"pipeline": [], "pipeline-same-threads": [], "llmkit": [],
                                         "llmkit-transformers": []}
        for _ in range(args.repeats):
            torch.set_num_threads(default_threads)
            seconds, expected = run_pipeline(pipe, texts, args.batch_size)
            times["pipeline"].append(seconds)
            torch.set_num_threads(llmkit_threads)
            seconds, _ = run_pipeline(pipe, texts, args.batch_size)
            times["pipeline-same-threads"].append(seconds)
            seconds, got = run_llmkit(loaded, texts, args.batch_size)
            times["llmkit"].append(seconds)
            seconds, got_tf = run_llmkit(loaded_tf, texts, args.batch_size)
            times["llmkit-transformers"].append(seconds)
            llmkit_threads = torch.get_num_threads()

    same_labels = sum(g.label == e["label"] for g, e in zip(got, expected, strict=True))
    max_diff = max(abs(g.score - e["score"]) for g, e in zip(got, expected, strict=True))
    for other in (got_tf,):
        same_labels = min(same_labels, sum(g.label == e["label"] for g, e in zip(other, expected, strict=True)))
        max_diff = max(max_diff, *(abs(g.score - e["score"]) for g, e in zip(other, expected, strict=True)))
    best = {name: min(values) for name, values in times.items()}
    ratio = best["pipeline"] / best["llmkit"]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.corpus}: {args.inputs} inputs, "
          f"{min(token_counts)}-{max(token_counts)} tokens (mean {sum(token_counts) / len(token_counts):.0f}); "
          f"batch size {args.batch_size}; threads: pipeline {default_threads}, llmkit {llmkit_threads}; best of "
          f"{args.repeats}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| run | seconds | inputs/s | speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| pipeline(\"text-classification\", batch_size={args.batch_size}) | {best['pipeline']:.2f} | "
          f"{args.inputs / best['pipeline']:.0f} | 1.00x |")
    print(f"| the same pipeline at llmkit's {llmkit_threads} thread(s) | {best['pipeline-same-threads']:.2f} | "
          f"{args.inputs / best['pipeline-same-threads']:.0f} | "
          f"{best['pipeline'] / best['pipeline-same-threads']:.2f}x |")
    print(f"| llmkit classify --engine transformers | {best['llmkit-transformers']:.2f} | "
          f"{args.inputs / best['llmkit-transformers']:.0f} | {best['pipeline'] / best['llmkit-transformers']:.2f}x |")
    print(f"| llmkit classify (length-grouped, dynamic padding, ONNX Runtime) | {best['llmkit']:.2f} | "
          f"{args.inputs / best['llmkit']:.0f} | {ratio:.2f}x |")
    print(f"\nagreement: {same_labels}/{args.inputs} labels equal, max score difference {max_diff:.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"inputs": args.inputs, "batch_size": args.batch_size, "times": times,
                                        "best": best, "speedup": ratio, "same_labels": same_labels,
                                        "max_score_diff": max_diff}, indent=2) + "\n")
    if same_labels != args.inputs or max_diff > 1e-4:
        raise SystemExit("llmkit and the pipeline disagree")


if __name__ == "__main__":
    main()
