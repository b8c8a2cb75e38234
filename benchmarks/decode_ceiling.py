"""Benchmark: how many tokens/s float32 decoding of the bundled SmolLM2 can reach on this machine (issue 12, goal 6).

Goal 6 asks for 200 tokens/s over 64 prompts in one `llmkit generate` process, reasoning from 0.27 GFLOP per token
and ~170 GFLOP/s for float32 matrix products. This script measures what a decoding step really costs with the
weights llmkit's own Llama loop uses (llama_loop: the de-quantized bundled model, packed for oneDNN), one row per
sequence, the products alone and the whole step:

- the rate of one large square float32 product (2048 x 2048 x 2048; its operands stay in cache), the figure the
  goal reasons from;
- one decoding step's products (every layer's qkv, output, gate/up and down projections, then the vocabulary
  head) at M rows, with all 135M weights read from memory as in a real step, for M = 8 ... 256;
- one whole decoding step (`NativeLlama.forward` on M new tokens over a KV cache of L positions, then the head)
  at M = 64, L = 64 / 100 / 130 (the 64 TREC questions of throughput.py fill 69 prompt slots, and answers add
  up to 64).

Tokens/s ceilings are M / step time: what decoding alone could give, before imports, loading and the prefill.

    python benchmarks/decode_ceiling.py [--json-out benchmarks/results/decode_ceiling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "smollm2-135m-instruct"


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    import torch

    from llmkit import loading, threads
    from llmkit.engines import llama_loop

    threads.use_free_cores()
    loaded = llama_loop.load(MODEL)
    if loaded is None:  # the converted folder does not exist yet: one plain load writes it
        loading.load(MODEL, task="causal-lm", device="cpu", dtype="float32")
        loaded = llama_loop.load(MODEL)
    net = loaded.model.decoder
    hidden = net.embed.shape[1]
    inter = (net.layers[0][5].to_dense() if net.layers[0][5].is_mkldnn else net.layers[0][5]).shape[1]

    linear = llama_loop.linear  # the loop's own product: oneDNN on packed weights
    per_token = 0.0
    for _, qkv, out, _, gate_up, down in net.layers:
        for w in (qkv, out, gate_up, down):
            rows, cols = (w.to_dense() if w.is_mkldnn else w).shape
            per_token += 2 * rows * cols
    head_rows = (net.head.to_dense() if net.head.is_mkldnn else net.head).shape[0]
    per_token += 2 * head_rows * hidden
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
                    "load_average": os.getloadavg()[0], "gflop_per_token": per_token / 1e9}

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    square = best_time(lambda: a @ b, args.repeats)
    report["square_2048_gflops"] = 2 * 2048**3 / square / 1e9

    products = []
    with torch.inference_mode():
        for m in (8, 16, 32, 64, 128, 256):
            x, x_inter = torch.randn(m, hidden), torch.randn(m, inter)

            def step(x=x, x_inter=x_inter) -> None:  # bound now, called at once
                for _, qkv, out, _, gate_up, down in net.layers:
                    linear(x, qkv)
                    linear(x, out)
                    linear(x, gate_up)
                    linear(x_inter, down)
                linear(x, net.head)

            seconds = best_time(step, args.repeats)
            products.append({"rows": m, "ms": seconds * 1e3, "gflops": m * per_token / seconds / 1e9,
                             "tokens_per_s": m / seconds})
        report["products"] = products

        whole = []
        m = 64
        for length in (64, 100, 130):
            cache = [torch.randn(m, net.kv_heads, length + 1, net.head_dim) for _ in range(2 * len(net.layers))]
            mask = torch.ones(m, 1, 1, length + 1, dtype=torch.bool)
            ids = torch.randint(0, head_rows, (m, 1))
            positions = torch.full((m, 1), length)

            def full_step(ids=ids, positions=positions, cache=cache, length=length, mask=mask) -> None:
                h = net.forward(ids, positions, cache, length, mask)
                linear(h, net.head).argmax(-1)

            seconds = best_time(full_step, args.repeats)
            whole.append({"rows": m, "cache": length, "ms": seconds * 1e3, "tokens_per_s": m / seconds})
        report["whole_step"] = whole

    print(f"{report['date']}; {report['threads']} threads; load average {report['load_average']:.2f}; "
          f"{report['gflop_per_token']:.3f} GFLOP of products per token")
    print(f"\nsquare 2048 float32 product: {report['square_2048_gflops']:.0f} GFLOP/s\n")
    print("| rows per step | products ms | GFLOP/s | tokens/s ceiling (products only) |")
    print("|---:|---:|---:|---:|")
    for row in products:
        print(f"| {row['rows']} | {row['ms']:.1f} | {row['gflops']:.0f} | {row['tokens_per_s']:.0f} |")
    print("\n| rows | cache positions | whole step ms | tokens/s ceiling (decoding only) |")
    print("|---:|---:|---:|---:|")
    for row in whole:
        print(f"| {row['rows']} | {row['cache']} | {row['ms']:.1f} | {row['tokens_per_s']:.0f} |")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
