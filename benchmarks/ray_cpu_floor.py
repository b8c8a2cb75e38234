"""Benchmark: the CPU that Ray and Ray Data spend on one `--executor ray` run, apart from the model.

The same path as `llmkit classify --executor ray --actors 2` (`ray_data.map_records`: a local cluster, Ray Data's
CSV reader, the windows, an actor pool of 2, the records gathered in order) on benchmarks/ray_executor.py's 3,000
real mixed texts, but each actor loads no model and sleeps `--sleep` seconds per window instead of running one.
Just before the cluster stops, the CPU seconds (user + system) of the driver and of every process of the cluster
are read from /proc: what Ray costs, counted in CPU seconds, which load on the machine changes far less than it
changes wall time. On a 2-core machine whose cores the actors keep busy, every CPU second here is taken from
the actors.

`--quiet-data` also turns off Ray Data's issue detectors and its per-task memory polling (DataContext settings).

    python benchmarks/ray_cpu_floor.py [--texts 3000] [--repeats 2] [--sleep 10] [--quiet-data]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Length:
    chars: int


def _tree_cpu() -> dict[str, float]:
    """CPU seconds so far of this process and every live process under it, by name."""
    import psutil

    cpu: dict[str, float] = {}
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times, words = process.cpu_times(), process.cmdline()
        except psutil.Error:
            continue
        if process.pid == me.pid:
            name = "driver"
        elif words and words[0].startswith("ray::"):
            name = words[0].split(".")[0]
        else:
            name = " ".join(Path(w).name for w in words[:2])
        cpu[name] = round(cpu.get(name, 0.0) + times.user + times.system, 2)
    return cpu


def _run_once(source: str, sleep: float, quiet_data: bool, expected: int) -> dict[str, Any]:
    """One run in a fresh process; returns wall seconds and CPU seconds by process name."""
    import ray.data

    from llmkit.executors import RaySettings, Work, ray_data

    if quiet_data:
        context = ray.data.DataContext.get_current()
        context.issue_detectors_config.detectors = []
        context.memory_usage_poll_interval_s = None

    def run(_: Any, records: list[Any]) -> list[Length]:
        time.sleep(sleep)
        return [Length(len(r.text)) for r in records]

    cpu: dict[str, float] = {}
    started = time.perf_counter()
    count = 0
    for _pair in ray_data.map_records(source, lambda total: Work(load=lambda: None, run=run, window=512,
                                                                 result_type=Length), RaySettings(actors=2)):
        count += 1
        if count == expected:  # the last record: read while the cluster still runs (it stops after the loop)
            cpu = _tree_cpu()
    return {"records": count, "wall_seconds": round(time.perf_counter() - started, 2), "cpu_seconds": cpu,
            "cpu_total": round(sum(cpu.values()), 2)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_run_once(sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=10.0, help="Seconds each actor sleeps per window.")
    parser.add_argument("--quiet-data", action="store_true", help="Also run with Ray Data's detectors off.")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import corpora

    source = corpora.cache_dir() / "ray" / f"mixed-{args.texts}.csv"
    if not source.exists():
        raise SystemExit(f"run `python benchmarks/ray_executor.py --texts {args.texts}` once first (the CSV)")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    modes = [False, True] if args.quiet_data else [False]
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    runs = []
    for _ in range(args.repeats):
        for quiet in modes:
            done = subprocess.run([sys.executable, __file__, "--child", str(source), str(args.sleep), str(int(quiet)),
                                   str(args.texts)],
                                  env=env, capture_output=True, text=True, cwd=str(ROOT))
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            row = {"quiet_data": quiet, **json.loads(done.stdout.strip().splitlines()[-1])}
            runs.append(row)
            print(f"quiet_data={quiet}: {row['wall_seconds']} s wall, {row['cpu_total']} CPU s", file=sys.stderr)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    result = {"benchmark": "benchmarks/ray_cpu_floor.py", "utc": stamp, "texts": args.texts,
              "sleep_per_window": args.sleep, "command": " ".join(sys.argv), "cpus": os.cpu_count(),
              "uptime_before": uptime_before, "uptime_after": uptime_after, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ray_cpu_floor_{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{uptime_before}\n{uptime_after}\n{out.relative_to(ROOT)}\n")
    names = sorted({name for run in runs for name in run["cpu_seconds"]})
    print("| process | " + " | ".join(f"run {i + 1}{' (quiet data)' if r['quiet_data'] else ''}"
                                      for i, r in enumerate(runs)) + " |")
    print("|---|" + "---:|" * len(runs))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r['cpu_seconds'].get(name, 0):.2f}" for r in runs) + " |")
    print("| **all** | " + " | ".join(f"**{r['cpu_total']:.2f}**" for r in runs) + " |")
    print("| wall seconds | " + " | ".join(f"{r['wall_seconds']:.1f}" for r in runs) + " |")


if __name__ == "__main__":
    main()
