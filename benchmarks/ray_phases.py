"""Where the fixed cost of `llmkit classify --executor ray` goes: one fresh run, each phase timed.

Runs `llmkit classify -m MODEL -i CSV --json --executor ray --actors 2` (the run benchmarks/ray_executor.py times)
in a fresh process whose entry point wraps llmkit's Ray steps with clocks, and prints when each phase started and
ended, in seconds from the process's start (the kernel's start time of the process, so interpreter start-up and
imports count):

- driver: imports, the command up to the cluster, `ray.init`, reading and numbering the windows, Ray Data's
  planning, the first and last record gathered, `ray.shutdown`, exit;
- each actor: its process's start, the actor class arriving (imports), the engine loaded, every window run;
- what the driver had imported (torch, transformers, onnxruntime) when the cluster started and at the end.

Nothing in llmkit changes: the wrappers call the same functions. The same CSV and model as ray_executor.py
(build them by running that once). The records are checked against a `--executor local` run's when
`--compare` is given.

    python benchmarks/ray_phases.py [--texts 3000] [--compare] [-- extra llmkit flags]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVENTS_ENV = "LLMKIT_PHASES_FILE"


def _process_start() -> float:
    """This process's start as a time.time() value (from /proc: boot time + start ticks)."""
    with open("/proc/self/stat") as handle:
        ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as handle:
        boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _event(name: str, **extra: Any) -> None:
    """One line to the events file: wall time, pid, name."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    with open(path, "a") as handle:
        handle.write(json.dumps({"t": time.time(), "pid": os.getpid(), "event": name, **extra}) + "\n")


def _tree_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process and each live process under it, by name."""
    import psutil

    me = psutil.Process()
    cpu: dict[str, float] = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            words = process.cmdline()
        except psutil.Error:
            continue
        name = "driver" if process.pid == me.pid else " ".join(words[:1] if words[0].startswith("ray::") else
                                                               [Path(w).name for w in words[:2]])
        cpu[name] = round(cpu.get(name, 0.0) + times.user + times.system, 2)
    return cpu


def _heavy() -> dict[str, bool]:
    return {name: name in sys.modules for name in ("torch", "transformers", "onnxruntime", "tokenizers", "ray",
                                                  "pandas", "pyarrow")}


def _child() -> None:
    """The timed run: llmkit's CLI with clocks around its Ray steps."""
    _event("process start", at=_process_start())
    _event("python ready")
    import contextlib

    from llmkit.executors import Work, ray_data

    _event("llmkit.executors imported")
    cluster, read, windows, run, gather = (ray_data.cluster, ray_data.read, ray_data.windows, ray_data.run,
                                           ray_data.gather)
    worker_class = ray_data._worker_class

    @contextlib.contextmanager
    def timed_cluster(settings: Any) -> Any:
        _event("cluster: enter", heavy=_heavy())
        import ray

        _event("ray imported")
        init, shutdown = ray.init, ray.shutdown

        def timed_init(*args: Any, **kwargs: Any) -> Any:
            _event("ray.init: start")
            try:
                return init(*args, **kwargs)
            finally:
                _event("ray.init: end")

        def timed_shutdown(*args: Any, **kwargs: Any) -> Any:
            _event("ray.shutdown: start")
            try:
                return shutdown(*args, **kwargs)
            finally:
                _event("ray.shutdown: end")

        ray.init, ray.shutdown = timed_init, timed_shutdown
        try:
            with cluster(settings) as resources:
                yield resources
        finally:
            ray.init, ray.shutdown = init, shutdown
            _event("cluster: left", heavy=_heavy())

    def timed_read(*args: Any, **kwargs: Any) -> Any:
        _event("read: start")
        try:
            return read(*args, **kwargs)
        finally:
            _event("read: end (lazy)")

    def timed_windows(*args: Any, **kwargs: Any) -> Any:
        _event("windows: start")
        try:
            return windows(*args, **kwargs)
        finally:
            _event("windows: end (read, counted, numbered)")

    def timed_run(*args: Any, **kwargs: Any) -> Any:
        _event("map_batches: start")
        try:
            return run(*args, **kwargs)
        finally:
            _event("map_batches: end (lazy)")

    def timed_gather(*args: Any, **kwargs: Any) -> Any:
        _event("gather: start")
        first = True
        for pair in gather(*args, **kwargs):
            if first:
                _event("gather: first record")
                first = False
            yield pair
        _event("gather: last record", cpu=_tree_cpu())

    def timed_worker_class(work: Work, parts: bool) -> type:
        def load() -> Any:
            import os as os_
            import time as time_

            def event(name: str, **extra: Any) -> None:
                with open(os_.environ[EVENTS_ENV], "a") as handle:
                    handle.write(json.dumps({"t": time_.time(), "pid": os_.getpid(), "event": name, **extra}) + "\n")

            with open("/proc/self/stat") as handle:
                ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat") as handle:
                boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
            event("actor: process start", at=boot + ticks / os_.sysconf("SC_CLK_TCK"))
            event("actor: engine load start", threads=os_.environ.get("OMP_NUM_THREADS"))
            handle = work.load()
            event("actor: engine loaded")
            return handle

        def run_(handle: Any, records: list[Any]) -> Any:
            import os as os_
            import time as time_

            def event(name: str, **extra: Any) -> None:
                with open(os_.environ[EVENTS_ENV], "a") as handle_:
                    handle_.write(json.dumps({"t": time_.time(), "pid": os_.getpid(), "event": name, **extra}) + "\n")

            event("actor: window start", first=records[0].index if records else None)
            results = list(work.run(handle, records))
            event("actor: window end", first=records[0].index if records else None)
            return results

        return worker_class(Work(load=load, run=run_, window=work.window, result_type=work.result_type), parts)

    ray_data.cluster, ray_data.read, ray_data.windows, ray_data.run, ray_data.gather = (
        timed_cluster, timed_read, timed_windows, timed_run, timed_gather)
    ray_data._worker_class = timed_worker_class
    import atexit

    atexit.register(lambda: _event("exit", heavy=_heavy()))
    from llmkit.cli import main

    _event("llmkit.cli imported")
    sys.argv = ["llmkit", *sys.argv[2:]]
    main()


def _report(events: list[dict[str, Any]], wall: float) -> list[dict[str, Any]]:
    driver = events[0]["pid"]
    zero = events[0]["at"]
    rows = []
    names = {driver: "driver"}
    for e in events:
        if e["pid"] not in names:
            names[e["pid"]] = f"actor {len([n for n in names.values() if n.startswith('actor')]) + 1} (pid {e['pid']})"
        at = e.get("at", e["t"])
        rows.append({"who": names[e["pid"]], "event": e["event"], "seconds": round(at - zero, 2),
                     **{k: v for k, v in e.items() if k not in ("t", "pid", "event", "at")}})
    rows.sort(key=lambda r: r["seconds"])
    rows.append({"who": "benchmark", "event": "process exited (wall, as timed by the parent)",
                 "seconds": round(wall, 2)})
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--compare", action="store_true", help="Also run --executor local; compare the records.")
    parser.add_argument("extra", nargs="*", help="More llmkit flags (after --).")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import corpora

    work = corpora.cache_dir() / "ray"
    model, source = work / "minilm-classifier", work / f"mixed-{args.texts}.csv"
    if not (model / "config.json").exists() or not source.exists():
        raise SystemExit(f"run `python benchmarks/ray_executor.py --texts {args.texts}` once first (model, CSV)")
    llmkit = ["classify", "-m", str(model), "-i", str(source), "--json"]
    events_file = work / f"phases-{os.getpid()}.jsonl"
    events_file.unlink(missing_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", **{EVENTS_ENV: str(events_file)})
    env.pop("RAY_ADDRESS", None)
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    started = time.perf_counter()
    ray_run = subprocess.run([sys.executable, __file__, "--child", *llmkit, "--executor", "ray", "--actors", "2",
                              *args.extra], env=env, capture_output=True, text=True, cwd=str(ROOT))
    wall = time.perf_counter() - started
    if ray_run.returncode != 0:
        raise SystemExit(f"the ray run failed ({ray_run.returncode}):\n{ray_run.stderr}")
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    events_file.unlink()
    rows = _report(events, wall)
    result: dict[str, Any] = {"benchmark": "benchmarks/ray_phases.py", "command": " ".join(sys.argv),
                              "uptime_before": uptime_before, "ray_seconds": round(wall, 2), "phases": rows,
                              "stderr": ray_run.stderr.strip().splitlines()}
    if args.compare:
        started = time.perf_counter()
        local = subprocess.run([sys.executable, "-m", "llmkit", *llmkit, *args.extra], env=env,
                               capture_output=True, text=True, cwd=str(ROOT))
        result["local_seconds"] = round(time.perf_counter() - started, 2)
        result["records_equal_local"] = local.stdout == ray_run.stdout
        result["records"] = len(ray_run.stdout.splitlines())
    result["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    out = HERE / "results" / f"ray_phases_{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{uptime_before}\n{result['uptime_after']}\n{out.relative_to(ROOT)}\n")
    print("| seconds | who | event |")
    print("|---:|---|---|")
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in ("who", "event", "seconds")}
        print(f"| {row['seconds']:.2f} | {row['who']} | {row['event']}{' ' + json.dumps(extra) if extra else ''} |")
    if args.compare:
        print(f"\nray {wall:.1f} s, local {result['local_seconds']:.1f} s "
              f"({wall / result['local_seconds']:.2f}x), records equal: {result['records_equal_local']}")


if __name__ == "__main__":
    main()
