"""How long `llmkit --help` and `llmkit COMMAND --help` take in a fresh process, against `transformers --help`.

    python benchmarks/startup.py [--repeats 5] [--baseline DIR]

`--baseline DIR` also times the llmkit code of another checkout (e.g. `git archive` of the commit before a change,
unpacked into DIR) in the same interleaved run, so before/after is a ratio taken under the same load.

Each command runs --repeats times, interleaved so drift hits them alike; the table gives the median wall time.
Goals (issue 10): `llmkit --help` <= 0.2 s, `llmkit COMMAND --help` <= 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = ["generate", "fill-mask", "classify", "finetune", "distill", "quantize", "models"]


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system) of one run; CPU time barely moves when other jobs share the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, help="another llmkit checkout to time alongside")
    args = parser.parse_args()
    llmkit = str(BIN / "llmkit") if (BIN / "llmkit").exists() else shutil.which("llmkit")
    runs: dict[str, list[str]] = {"llmkit --help": [llmkit, "--help"]}
    runs.update({f"llmkit {c} --help": [llmkit, c, "--help"] for c in COMMANDS})
    envs: dict[str, dict[str, str] | None] = {name: None for name in runs}
    if args.baseline is not None:
        # The baseline's code comes first on the path, ahead of the installed (editable) llmkit.
        baseline_env = dict(os.environ, PYTHONPATH=str(args.baseline.resolve()))
        for name, argv in list(runs.items()):
            runs[f"baseline: {name}"] = argv
            envs[f"baseline: {name}"] = baseline_env
    transformers = str(BIN / "transformers") if (BIN / "transformers").exists() else shutil.which("transformers")
    if transformers:
        runs["transformers --help"] = [transformers, "--help"]
        envs["transformers --help"] = None
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, argv in runs.items():
            wall, used = timed(argv, envs[name])
            times[name].append(wall)
            cpu[name].append(used)
    load = os.getloadavg()[0]
    print(f"median of {args.repeats}, load average {load:.2f} at the end, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| command | median wall s | median CPU s | goal (wall s) |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        goal = "0.2" if name == "llmkit --help" else "0.3" if name.startswith("llmkit") else ""
        if args.baseline is not None and not name.startswith(("baseline", "transformers")):
            before = statistics.median(times[f"baseline: {name}"])
            goal += f" (baseline {before:.3f} s, now {statistics.median(values) / before:.2f}x)"
        print(f"| `{name}` | {statistics.median(values):.3f} | {statistics.median(cpu[name]):.3f} | {goal} |")


if __name__ == "__main__":
    main()
