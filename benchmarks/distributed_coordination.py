"""Benchmark: the cost of coordinating several processes, without a model: llmkit/distributed.py's shard files
under torchrun, torch.distributed collectives under torchrun, and `--executor ray`'s Ray Data path.

Every run takes the same CSV (benchmarks/ray_executor.py's 3,000 real mixed texts), reads it as llmkit reads it,
and runs a task that does no inference (each result is the text's length), so what is timed is only what the
coordination costs: launching the processes, splitting the input, bringing the results back to one process in
input order. Each run is a fresh command, timed from start to exit; the merged results are checked against the
one-process run's.

- one process: `llmkit.distributed.map_records` with no launcher (the local executor's path);
- torchrun + shard files: `torchrun --nproc_per_node 2`, each rank runs its contiguous share, writes a shard file
  with heartbeats, and rank 0 merges them (`distributed.map_records`, what `torchrun -m llmkit ...` runs);
- torchrun + collectives: the same launch and split, the results gathered to rank 0 by
  `torch.distributed.gather_object` over a gloo process group (the alternative the issue asks about);
- Ray: `ray_data.map_records` on a local cluster with 2 actors (what `--executor ray` runs), the same no-op task.

    python benchmarks/distributed_coordination.py [--texts 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Length:
    """The no-op task's result for one record."""

    chars: int


def _records(source: str) -> list[Any]:
    from llmkit.data import read_table

    return list(read_table(Path(source), "text", table_format_name="csv").records)


def _task(mine: Any) -> Any:
    for record in mine:
        yield Length(len(record.text))


def _digest(pairs: Any) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for record, result in pairs:
        h.update(json.dumps([record.index, record.text, asdict(result)]).encode())
        n += 1
    return n, h.hexdigest()[:16]


def _worker(mode: str, source: str) -> None:
    """One process of a run; the process that ends up with every result prints {records, digest}."""
    from llmkit import distributed
    from llmkit.data import InputRecord

    started = time.perf_counter()
    records = _records(source)
    if mode in ("local", "files"):
        pairs = distributed.map_records(records, _task, record_type=InputRecord, result_type=Length)
        if pairs is None:
            return  # a rank other than 0 wrote its shard
        n, digest = _digest(pairs)
    elif mode == "collectives":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = [records[i] for i in distributed.contiguous_range(len(records), rank, world)]
        results = [asdict(r) for r in _task(iter(mine))]
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(results, gathered, dst=0)
        dist.destroy_process_group()
        if rank != 0:
            return
        assert gathered is not None
        merged = [Length(**r) for part in gathered for r in part]
        n, digest = _digest(zip(records, merged, strict=True))
    elif mode == "ray":
        from llmkit.executors import RaySettings, Work, location, ray_data

        def build(total: int) -> Work:
            return Work(load=lambda: None, run=lambda _, mine: list(_task(iter(mine))), window=512,
                        result_type=Length)

        n, digest = _digest(ray_data.map_records(location(source), build, RaySettings(actors=2)))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({"records": n, "digest": digest, "inside_seconds": round(time.perf_counter() - started, 2)}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import corpora

    source = corpora.cache_dir() / "ray" / f"mixed-{args.texts}.csv"
    if not source.exists():
        raise SystemExit(f"run `python benchmarks/ray_executor.py --texts {args.texts}` once first (the CSV)")
    me = [str(Path(__file__).resolve()), "--worker"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    runs = {
        "one process": [sys.executable, *me, "local", str(source)],
        "torchrun, 2 processes, shard files (distributed.py)": [*torchrun, *me, "files", str(source)],
        "torchrun, 2 processes, gloo gather_object": [*torchrun, *me, "collectives", str(source)],
        "Ray, local cluster, 2 actors (ray_data.map_records)": [sys.executable, *me, "ray", str(source)],
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    times: dict[str, list[float]] = {name: [] for name in runs}
    answers: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for name, command in runs.items():
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(ROOT))
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            answers[name] = json.loads(done.stdout.strip().splitlines()[-1])
            times[name].append(round(seconds, 2))
            print(f"{name}: {seconds:.1f} s", file=sys.stderr)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    base = answers["one process"]
    best_local = min(times["one process"])
    rows = [{"run": name, "best_seconds": min(values), "all_seconds": values,
             "minus_one_process": round(min(values) - best_local, 2), "records": answers[name]["records"],
             "same_results_as_one_process": answers[name]["digest"] == base["digest"]}
            for name, values in times.items()]
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    result = {"benchmark": "benchmarks/distributed_coordination.py", "utc": stamp, "texts": args.texts,
              "task": "no inference (each result is the text's length)", "repeats": args.repeats,
              "cpus": os.cpu_count(), "command": " ".join(sys.argv), "uptime_before": uptime_before,
              "uptime_after": uptime_after, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"distributed_coordination_{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{uptime_before}\n{uptime_after}\n{out.relative_to(ROOT)}\n")
    print("| run | seconds (best) | all runs | minus one process | same results |")
    print("|---|---:|---|---:|---|")
    for row in rows:
        print(f"| {row['run']} | {row['best_seconds']:.1f} | {', '.join(f'{s:.1f}' for s in row['all_seconds'])} | "
              f"{row['minus_one_process']:+.1f} | {row['same_results_as_one_process']} ({row['records']}) |")


if __name__ == "__main__":
    main()
