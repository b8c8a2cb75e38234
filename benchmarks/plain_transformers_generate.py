"""The peer: what a plain transformers script does to answer prompts (the usual tutorial code).

Prints one JSON object: load seconds, generate seconds, generated tokens. Run by benchmarks/generate.py.
"""

from __future__ import annotations

import argparse
import json
import time

started = time.perf_counter()
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="static KV cache + torch.compile")
    parser.add_argument("prompts", nargs="+")
    args = parser.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    extra = {}
    if args.compile:
        extra = {"cache_implementation": "static", "compile_config": None}
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
    loaded = time.perf_counter()
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in args.prompts
    ]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, **extra)
    done = time.perf_counter()
    new = out[:, batch["input_ids"].shape[1]:]
    eos = tok.eos_token_id
    tokens = 0
    for row in new.tolist():
        tokens += row.index(eos) if eos in row else len(row)
    print(json.dumps({"import_load_s": loaded - started, "generate_s": done - loaded, "tokens": tokens,
                      "total_s": done - started}))


if __name__ == "__main__":
    main()
