"""Benchmark `llmkit distill`: the bundled MiniLM (6 layers), fine-tuned by llmkit finetune on the sentiment
set under tests/data/, distilled into a student that keeps 3 of its 6 layers.

Reports, on held-out rows: the student's accuracy as a share of the teacher's, its speed-up (latency per
example at batch 1, measured interleaved with the teacher so a busy machine slows both alike), throughput,
size, and the same student trained on the same data without the teacher (--baseline).

    flock /tmp/llmkit-bench.lock python benchmarks/distill.py            # ~ a few minutes on 2 cores

Writes the report as JSON (--json-out) and prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT / "tests" / "data" / "sentiment.csv"
TEACHER_BASE = "minilm-l6"
VALIDATION_SHARE = 0.2


def split_data(folder: Path, seed: int) -> tuple[Path, Path]:
    """A seeded 80/20 split of the sentiment set into train.csv and validation.csv (the teacher never sees
    the validation rows, neither does the student)."""
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * (1 - VALIDATION_SHARE))
    paths = (folder / "train.csv", folder / "validation.csv")
    for path, part in zip(paths, (rows[:cut], rows[cut:]), strict=True):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(part)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-epochs", type=float, default=2.0)
    parser.add_argument("--epochs", type=float, default=3.0, help="student (and baseline) epochs")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="student (and baseline)")
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine two threads mostly wait on each other)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the teacher/student here (default: temp)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from llmkit.distill import DistillSettings, distill
    from llmkit.finetune import finetune
    from llmkit.training import TrainSettings

    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="llmkit-bench-distill-"))
    work.mkdir(parents=True, exist_ok=True)
    train_csv, val_csv = split_data(work, args.seed)

    teacher_dir = work / "teacher"
    started = time.perf_counter()
    reused = (teacher_dir / "config.json").exists()  # a teacher from an earlier run with this --workdir
    if not reused:
        finetune(
            train_csv,
            output=teacher_dir,
            model=TEACHER_BASE,
            task="classification",
            settings=TrainSettings(
                epochs=args.teacher_epochs, max_length=args.max_length, seed=args.seed, learning_rate=1e-4
            ),
            validation_file=val_csv,
            device="cpu",
        )
    teacher_seconds = time.perf_counter() - started

    started = time.perf_counter()
    result = distill(
        train_csv,
        work / "student",
        str(teacher_dir),
        DistillSettings(student_layers=args.student_layers, baseline=True),
        TrainSettings(epochs=args.epochs, learning_rate=args.learning_rate, max_length=args.max_length, seed=args.seed),
        validation=val_csv,
        device="cpu",
        overwrite=True,
        progress=True,
    )
    distill_seconds = time.perf_counter() - started

    from llmkit.output import to_record

    record = to_record(result)
    record["benchmark"] = {
        "teacher_finetune_seconds": None if reused else round(teacher_seconds, 1),
        "teacher_reused": reused,
        "distill_seconds_with_baseline": round(distill_seconds, 1),
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(record, indent=2) + "\n")

    print(
        f"\nteacher: {TEACHER_BASE} fine-tuned on {train_csv.name} ({result.train_examples} rows), "
        f"evaluated on {result.validation_examples} held-out rows; student keeps layers {result.kept_layers}"
    )
    print("\n| model | layers | parameters | size on disk | latency / example | examples/s | accuracy | macro-F1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in result.models:
        print(
            f"| {m.role} | {m.layers} | {m.parameters / 1e6:.1f} M | {m.size_bytes / 1e6:.1f} MB | "
            f"{m.latency_ms:.1f} ms | {m.throughput:.0f} | {m.accuracy:.3f} | {m.macro_f1:.3f} |"
        )
    s = result.summary
    print(
        f"\nstudent accuracy / teacher accuracy: {s['accuracy_share']:.3f}; speed-up (latency): "
        f"x{s['speedup']:.2f}; throughput x{s['throughput_ratio']:.2f}; size x{s['size_ratio']:.2f}; "
        f"accuracy gain over the baseline (same student, no teacher): {s['accuracy_gain_over_baseline']:+.3f}"
    )
    teacher_note = "teacher reused from --workdir" if reused else f"finetune {teacher_seconds:.0f} s"
    print(
        f"KL(teacher || student) on validation: {result.kl_before:.4f} before, {result.kl_after:.4f} after; "
        f"{teacher_note}, distill + baseline {distill_seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
