"""The two engines `llmkit serve` could answer concurrent greedy chat requests with, measured in one process before
choosing (issue 26): tokens/s one at a time against N together, on the same N chat prompts x --tokens new tokens.

- llama.cpp (the xllamacpp server loop `llmkit serve` runs for a GGUF model, with --parallel sequences, per-sequence
  KV): the prompts one after another through `complete()`, then from N threads at once (its parallel sequences
  decode them together);
- llmkit's float32 Llama loop (engines/llama_loop.py, on llmkit's float32 copy of the same GGUF): the prompts at
  batch 1, then at batch N.

The four passes are alternated --rounds times (A B C D A B C D ...), so that a change in the machine's load hits
every side; each pass records its wall time, this process's CPU seconds (all threads) and its answers, and the
answers of each side's two forms are compared (greedy: they should be equal). The load average is recorded before
and after.

    .venv/bin/python benchmarks/serve_engines.py                  # 16 prompts x 64 tokens, 2 rounds
    .venv/bin/python benchmarks/serve_engines.py --rounds 3 --out benchmarks/results/serve_engines_quiet.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
import throughput  # noqa: E402  (questions() and float32_copy(): the prompts and weights throughput.py uses)

MODEL = "smollm2-135m-instruct"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn) -> tuple[list[tuple[str, int]], float, float]:  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    answers = fn()
    return answers, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from llmkit.engines import llama_cpp, llama_loop
    from llmkit.engines import transformers as hf
    from llmkit.sampling import GenerationSettings

    prompts = throughput.questions(args.prompts)
    settings = GenerationSettings(max_new_tokens=args.tokens)
    report: dict = {"load_before": load(), "prompts": args.prompts, "tokens": args.tokens, "rounds": args.rounds,
                    "threads": os.environ.get("LLMKIT_THREADS", ""), "model": MODEL}

    engine = llama_cpp.Generator(MODEL, parallel=args.prompts, max_new_tokens=args.tokens, unified=False,
                                 keep_prompts=False)
    lm = llama_loop.load(str(throughput.float32_copy()))
    assert lm is not None, "the float32 copy did not load on the loop"

    def llama_one() -> list[tuple[str, int]]:
        done = [engine.complete(p, settings) for p in prompts]
        return [(d.text, d.completion_tokens) for d in done]

    def llama_together() -> list[tuple[str, int]]:
        with ThreadPoolExecutor(len(prompts)) as pool:
            done = list(pool.map(lambda p: engine.complete(p, settings), prompts))
        return [(d.text, d.completion_tokens) for d in done]

    def loop(batch: int):  # type: ignore[no-untyped-def]
        def run() -> list[tuple[str, int]]:
            done = hf.generate(lm, prompts, settings=settings, batch_size=batch, decoder=lm.model.decoder)
            return [(d.text, d.completion_tokens) for d in done]
        return run

    sides = {"llama.cpp x1": llama_one, f"llama.cpp x{args.prompts}": llama_together,
             "loop batch 1": loop(1), f"loop batch {args.prompts}": loop(args.prompts)}
    # warm-up: first-call costs (thread pools, oneDNN's kernel choice) out of the timings
    short = GenerationSettings(max_new_tokens=4)
    engine.complete(prompts[0], short)
    list(hf.generate(lm, prompts, settings=short, batch_size=args.prompts, decoder=lm.model.decoder))
    passes: dict[str, list[dict]] = {name: [] for name in sides}
    answers: dict[str, list[tuple[str, int]]] = {}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            got, wall, cpu = timed(fn)
            tokens = sum(n for _, n in got)
            passes[name].append({"seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "tokens": tokens,
                                 "tokens_per_s": round(tokens / wall, 1),
                                 "cpu_ms_per_token": round(1000 * cpu / tokens, 2), "load": load()})
            answers.setdefault(name, got)
            print(f"{name:>16}: {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tok/s, "
                  f"{1000 * cpu / tokens:.1f} CPU ms/token, load {load()}", flush=True)
    names = list(sides)
    summary = {}
    for name in names:
        rates = [p["tokens_per_s"] for p in passes[name]]
        summary[name] = {"tokens_per_s_median": sorted(rates)[len(rates) // 2], "tokens_per_s_all": rates,
                         "cpu_ms_per_token_all": [p["cpu_ms_per_token"] for p in passes[name]]}
    report["passes"] = passes
    report["summary"] = summary
    report["same_answers"] = {
        "llama.cpp x1 vs together": sum(a == b for a, b in zip(answers[names[0]], answers[names[1]], strict=True)),
        "loop batch 1 vs batch N": sum(a == b for a, b in zip(answers[names[2]], answers[names[3]], strict=True)),
        "llama.cpp x1 vs loop batch 1": sum(a[0] == b[0] for a, b in zip(answers[names[0]], answers[names[2]], strict=True)),
    }
    report["ratios"] = {
        "llama.cpp together / one": round(summary[names[1]]["tokens_per_s_median"]
                                          / summary[names[0]]["tokens_per_s_median"], 2),
        "loop batch N / llama.cpp one": round(summary[names[3]]["tokens_per_s_median"]
                                              / summary[names[0]]["tokens_per_s_median"], 2),
        "loop batch N / loop batch 1": round(summary[names[3]]["tokens_per_s_median"]
                                             / summary[names[2]]["tokens_per_s_median"], 2),
    }
    report["load_after"] = load()
    print(json.dumps({k: report[k] for k in ("summary", "same_answers", "ratios", "load_before", "load_after")},
                     indent=1))
    out = args.out or ROOT / "benchmarks" / "results" / f"serve_engines_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
