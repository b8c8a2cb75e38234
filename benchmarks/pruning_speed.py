"""End-to-end `llmkit classify` speed of pruned MiniLM students, without training (speed does not depend on the
weights): the half of benchmarks/pruning.py that a busy machine can still measure.

Builds, from the bundled MiniLM-L6 with a 2-label head: the teacher (6 layers, FFN 1536), depth (3 layers),
width (FFN 768, importance on the texts) and both; then times the whole `llmkit classify` command (start-up,
load, tokenization, batches of 32) on N Rotten Tomatoes snippets, models interleaved over --rounds rounds,
best round each. Accuracy needs training: see benchmarks/pruning.py.

    python benchmarks/pruning_speed.py --texts 500 --rounds 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora  # noqa: E402


def build(work: Path, texts: list[str]) -> dict[str, Path]:
    """Save the teacher and the three pruned students under `work`; return name -> folder."""
    import copy

    from llmkit.loading import load
    from llmkit.pruning import prune
    from llmkit.student import drop_layers

    lm = load("minilm-l6", "sequence-classification", device="cpu", dtype="float32",
              model_kwargs={"num_labels": 2, "id2label": {0: "fresh", 1: "rotten"},
                            "label2id": {"fresh": 0, "rotten": 1}})
    models = {"teacher": lm.model}
    models["depth"] = drop_layers(lm.model, 3)[0]
    width = copy.deepcopy(lm.model)
    prune(width, lm.tokenizer, texts, ffn_keep=0.5)
    models["width"] = width
    both = drop_layers(lm.model, 3)[0]
    prune(both, lm.tokenizer, texts, ffn_keep=0.5)
    models["both"] = both
    folders = {}
    for name, model in models.items():
        folder = work / name
        model.eval().save_pretrained(str(folder))
        lm.tokenizer.save_pretrained(str(folder))
        folders[name] = folder
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmkit-bench-pruning-speed"))
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = corpora.rotten_tomatoes()[: args.texts]
    table = args.workdir / "texts.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text"])
        writer.writeheader()
        writer.writerows({"text": r["text"]} for r in rows)
    folders = build(args.workdir, [r["text"] for r in rows])
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    seconds: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(args.rounds):
        for name, folder in folders.items():
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "llmkit", "classify", "--model", str(folder), "-i", str(table), "--batch-size",
                 "32", "--device", "cpu", "--json"],
                capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)},
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            seconds[name].append(round(time.perf_counter() - t0, 2))
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    best = {name: min(v) for name, v in seconds.items()}
    record = {"date": started, "load_average_start": load_start, "load_average_end": load_end,
              "texts": len(rows), "seconds": seconds,
              "speedup": {name: best["teacher"] / best[name] for name in best}}
    if args.json_out:
        args.json_out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{len(rows)} Rotten Tomatoes snippets, `llmkit classify` end to end, best of {args.rounds} interleaved "
          f"rounds; {started}; load average {load_start} at the start, {load_end} at the end\n")
    print("| model | flags | classify end to end | speed-up |")
    print("|---|---|---:|---:|")
    flags = {"teacher": "(6 layers, FFN 1536)", "depth": "`--student-layers 3`", "width": "`--prune-ffn 0.5`",
             "both": "`--student-layers 3 --prune-ffn 0.5`"}
    for name in folders:
        print(f"| {name} | {flags[name]} | {best[name]:.1f} s | {record['speedup'][name]:.2f}x |")


if __name__ == "__main__":
    main()
