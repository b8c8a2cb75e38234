"""Benchmark: the ONNX Runtime engine end to end (fresh processes), against today's numpy path, pipeline() and int8.

Models (built once into benchmarks/.cache/onnx-engine/, nothing committed):
- a MiniLM-L6 sentiment classifier: the bundled all-MiniLM-L6-v2 fine-tuned with `llmkit finetune` on VADER's
  tweets (Hutto & Gilbert 2014, DATA.md) less the first 1,000, which are held out for accuracy (1 epoch, seed 42);
- its onnx-int8 copy (`llmkit quantize --method onnx-int8`);
- a MiniLM-L6 masked LM for fill-mask: all-MiniLM-L6-v2 has no MLM head, so transformers' BertForMaskedLM puts a
  seeded random transform on it (the decoder is tied to the real word embeddings): meaningful for speed and for
  "same top-5 as pipeline()", not for the quality of the answers.

Subcommands (each appends its table to stdout and writes benchmarks/results/onnx_engine_<name>.json):
- classify: `llmkit classify` on 3,000 mixed-length real texts (VADER's tweets, movie, Amazon and NYT snippets
  shuffled), fresh processes alternating, `--repeats` times (best wall time counts): this code (ONNX Runtime
  float32), this code on the int8 folder, `--before DIR` (another checkout, e.g. main's numpy BERT), and
  pipeline("text-classification", batch_size=32) in a fresh process. Peak RSS of each process (wait4), labels
  compared.
- accuracy: `classify --evaluate` on the 1,000 held-out tweets: float32 (ONNX Runtime), int8, transformers.
- fill-mask: `llmkit fill-mask` on 1,000 real sentences (VADER movie snippets, the middle word masked) against
  pipeline("fill-mask") in a fresh process (its defaults, once: one input at a time is slow; and batch_size=16 as
  llmkit batches): same top-5?

    python benchmarks/onnx_engine.py classify --before /tmp/before [--inputs 3000] [--repeats 3]
    python benchmarks/onnx_engine.py accuracy
    python benchmarks/onnx_engine.py fill-mask [--inputs 1000] [--repeats 2]

The machine's load average is recorded before and after each table (shared machines: rerun when it is quiet).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import vader  # noqa: E402

WORK = vader.CACHE / "onnx-engine"
RESULTS = HERE / "results"
HOME = WORK / "home"  # LLMKIT_HOME of every run: the exports live here, not in the user's cache

PIPELINE_CLASSIFY = """
import json, sys
from transformers import pipeline
texts = [line for line in open(sys.argv[2], encoding="utf-8").read().splitlines() if line.strip()]
pipe = pipeline("text-classification", model=sys.argv[1], device="cpu")
for out in pipe(texts, batch_size=32, truncation=True):
    print(json.dumps({"label": out["label"], "score": out["score"]}))
"""

PIPELINE_FILL = """
import json, sys
from transformers import pipeline
texts = [line for line in open(sys.argv[2], encoding="utf-8").read().splitlines() if line.strip()]
pipe = pipeline("fill-mask", model=sys.argv[1], device="cpu")
mask = pipe.tokenizer.mask_token
kwargs = {} if sys.argv[3] == "default" else {"batch_size": int(sys.argv[3])}
for out in pipe([t.replace("[MASK]", mask) for t in texts], top_k=5, **kwargs):
    print(json.dumps({"top5": [o["token"] for o in out], "scores": [o["score"] for o in out]}))
"""


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def child(cmd: list[str], *, env: dict[str, str], cwd: Path, out: Path) -> tuple[float, int]:
    """Run `cmd` to completion with stdout in `out`; (wall seconds, its own peak RSS in MiB from wait4)."""
    err = out.with_suffix(".err")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{err.read_text()[-2000:]}")
    return seconds, usage.ru_maxrss // 1024


def llmkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmkit", *args]


def env_for(code: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(code), HF_HUB_OFFLINE="1", LLMKIT_HOME=str(HOME))


def compile_code(*codes: Path) -> None:
    """What `pip install` does for users: byte-compile llmkit once (a checkout run with PYTHONDONTWRITEBYTECODE
    would compile its modules on every start)."""
    import compileall

    for code in codes:
        compileall.compile_dir(str(code / "llmkit"), quiet=1)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("{")]


# --- the models ------------------------------------------------------------------------------------------------


def tweet_split() -> tuple[Path, Path]:
    """VADER tweets: the first 1,000 held out for accuracy, the other 3,196 for fine-tuning (CSV text,label)."""
    rows = vader.rows("tweets")
    paths = WORK / "tweets-test.csv", WORK / "tweets-train.csv"
    WORK.mkdir(parents=True, exist_ok=True)
    for path, part in zip(paths, (rows[:1000], rows[1000:]), strict=True):
        if not path.exists():
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", "label"])
                writer.writerows(part)
    return paths


def classifier() -> Path:
    """The fine-tuned MiniLM sentiment classifier (trained once with `llmkit finetune`)."""
    folder = WORK / "minilm-tweets"
    if not (folder / "config.json").exists():
        _, train = tweet_split()
        cmd = llmkit_cmd("finetune", str(train), "-m", "minilm-l6", "-o", str(folder), "--epochs", "1",
                         "--validation-split", "0", "--seed", "42")
        subprocess.run(cmd, env=env_for(ROOT), cwd=str(ROOT), check=True)
    return folder


def int8_copy(model: Path) -> Path:
    folder = WORK / f"{model.name}-int8"
    if not (folder / "model.onnx").exists():
        test, _ = tweet_split()
        subprocess.run(llmkit_cmd("quantize", "-m", str(model), "--method", "onnx-int8", "--eval-data", str(test),
                                  "-o", str(folder), "--json"), env=env_for(ROOT), cwd=str(ROOT), check=True)
    return folder


def masked_lm() -> Path:
    """all-MiniLM-L6-v2 with transformers' BertForMaskedLM head (seeded random transform, decoder tied)."""
    folder = WORK / "minilm-mlm"
    if not (folder / "config.json").exists():
        import torch

        from llmkit import loading

        torch.manual_seed(0)
        lm = loading.load("minilm-l6", "masked-lm", device="cpu", dtype="float32")
        lm.model.save_pretrained(str(folder))
        lm.tokenizer.save_pretrained(str(folder))
    return folder


def mixed_texts(n: int) -> Path:
    """n real snippets of mixed length: VADER's four sets shuffled together (seed 0), one per line."""
    path = WORK / f"mixed-{n}.txt"
    texts = [text for name in vader.SETS for text, _ in vader.rows(name)]
    random.Random(0).shuffle(texts)
    path.write_text("\n".join(texts[:n]) + "\n", encoding="utf-8")
    return path


def masked_sentences(n: int) -> Path:
    """n VADER movie snippets of 6 to 40 words with the middle word masked (a word of letters only)."""
    path = WORK / f"masked-{n}.txt"
    out = []
    for text, _ in vader.rows("movieReviewSnippets"):
        words = text.split()
        if not 6 <= len(words) <= 40:
            continue
        middle = len(words) // 2
        if not words[middle].isalpha():
            continue
        out.append(" ".join([*words[:middle], "[MASK]", *words[middle + 1 :]]))
        if len(out) == n:
            break
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def warm(model: Path, command: str) -> float | None:
    """Run once so the export exists (untimed); the export's own seconds from its manifest."""
    probe = WORK / "probe.txt"
    probe.write_text("a first [MASK] run\n", encoding="utf-8")
    child(llmkit_cmd(command, "-m", str(model), "-i", str(probe), "--json"), env=env_for(ROOT), cwd=ROOT,
          out=WORK / "warm.out")
    sys.path.insert(0, str(ROOT))
    os.environ["LLMKIT_HOME"] = str(HOME)
    from llmkit.engines import onnx_cache

    head = "sequence-classification" if command == "classify" else "masked-lm"
    manifest = onnx_cache.read_json(onnx_cache.export_dir(model, head) / onnx_cache.MANIFEST)
    return manifest.get("export_seconds") if manifest else None


# --- classify ----------------------------------------------------------------------------------------------------


def bench_classify(args: argparse.Namespace) -> dict:
    model = classifier()
    int8 = int8_copy(model)
    inputs = mixed_texts(args.inputs)
    compile_code(ROOT, *([args.before] if args.before else []))
    export_seconds = warm(model, "classify")
    runs: dict[str, tuple[list[str], dict[str, str], Path]] = {
        "onnx float32 (this)": (llmkit_cmd("classify", "-m", str(model), "-i", str(inputs), "--json"), env_for(ROOT), ROOT),
        "onnx-int8 (this)": (llmkit_cmd("classify", "-m", str(int8), "-i", str(inputs), "--json"), env_for(ROOT), ROOT),
    }
    if args.before:
        code = args.before.resolve()
        runs["before"] = (llmkit_cmd("classify", "-m", str(model), "-i", str(inputs), "--json"), env_for(code), code)
    runs["pipeline(batch_size=32)"] = ([sys.executable, "-c", PIPELINE_CLASSIFY, str(model), str(inputs)],
                                      dict(os.environ, HF_HUB_OFFLINE="1"), ROOT)
    load_before = load_average()
    times: dict[str, list[float]] = {name: [] for name in runs}
    rss: dict[str, list[int]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (cmd, env, cwd) in runs.items():
            seconds, peak = child(cmd, env=env, cwd=cwd, out=WORK / f"classify-{name.split()[0]}.out")
            times[name].append(round(seconds, 2))
            rss[name].append(peak)
    load_after = load_average()
    labels = {name: [r["label"] for r in records(WORK / f"classify-{name.split()[0]}.out")] for name in runs}
    fp32 = labels["onnx float32 (this)"]
    best = {name: min(values) for name, values in times.items()}
    base = best["onnx float32 (this)"]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: llmkit classify, {args.inputs} mixed VADER "
          f"snippets, fine-tuned MiniLM-L6, fresh processes, best of {args.repeats}; load average {load_before} "
          f"before, {load_after} after; ONNX export (once, not timed): {export_seconds} s\n")
    print("| run | best s | all runs | peak RSS MiB | onnx fp32 speed-up over it | labels equal to onnx fp32 |")
    print("|---|---:|---|---:|---:|---:|")
    for name in runs:
        same = sum(a == b for a, b in zip(labels[name], fp32, strict=True))
        print(f"| {name} | {best[name]:.2f} | {', '.join(map(str, times[name]))} | {max(rss[name])} | "
              f"{best[name] / base:.2f}x | {same}/{len(fp32)} |")
    return {"inputs": args.inputs, "repeats": args.repeats, "load_before": load_before, "load_after": load_after,
            "export_seconds": export_seconds, "times": times, "peak_rss_mib": rss, "best": best,
            "labels_equal_to_fp32": {n: sum(a == b for a, b in zip(labels[n], fp32, strict=True)) for n in runs}}


# --- accuracy ----------------------------------------------------------------------------------------------------


def bench_accuracy(args: argparse.Namespace) -> dict:
    model = classifier()
    int8 = int8_copy(model)
    test, _ = tweet_split()
    variants = {
        "onnx float32": ["-m", str(model)],
        "onnx-int8": ["-m", str(int8)],
        "transformers": ["-m", str(model), "--engine", "transformers"],
    }
    load_before = load_average()
    out = {}
    for name, extra in variants.items():
        path = WORK / f"accuracy-{name.split()[0]}.out"
        child(llmkit_cmd("classify", *extra, "-i", str(test), "--label-column", "label", "--evaluate", "--json"),
              env=env_for(ROOT), cwd=ROOT, out=path)
        report = records(path)[-1]
        out[name] = {"accuracy": report["accuracy"], "macro_f1": report.get("macro_f1")}
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: classify --evaluate on the 1,000 held-out VADER "
          f"tweets (618 positive), fine-tuned MiniLM-L6; load average {load_before}\n")
    print("| engine | accuracy | macro-F1 |")
    print("|---|---:|---:|")
    for name, scores in out.items():
        print(f"| {name} | {scores['accuracy']:.4f} | {scores['macro_f1']:.4f} |")
    drop = (out["onnx float32"]["accuracy"] - out["onnx-int8"]["accuracy"]) * 100
    print(f"\nint8 against float32: {drop:+.2f} accuracy points lost")
    return {"corpus": "VADER tweets, first 1,000 (held out)", "load_before": load_before, "scores": out,
            "int8_points_lost": round(drop, 3)}


# --- fill-mask ---------------------------------------------------------------------------------------------------


def bench_fill_mask(args: argparse.Namespace) -> dict:
    model = masked_lm()
    sentences = masked_sentences(args.inputs)
    compile_code(ROOT, *([args.before] if args.before else []))
    export_seconds = warm(model, "fill-mask")
    py_env = dict(os.environ, HF_HUB_OFFLINE="1")
    runs: dict[str, tuple[list[str], dict[str, str], Path]] = {
        "llmkit fill-mask (onnx)": (llmkit_cmd("fill-mask", "-m", str(model), "-i", str(sentences), "--json"),
                                    env_for(ROOT), ROOT),
        "pipeline(), defaults": ([sys.executable, "-c", PIPELINE_FILL, str(model), str(sentences), "default"],
                                 py_env, ROOT),
        "pipeline(batch_size=16)": ([sys.executable, "-c", PIPELINE_FILL, str(model), str(sentences), "16"],
                                    py_env, ROOT),
    }
    if args.before:
        code = args.before.resolve()
        runs["before"] = (llmkit_cmd("fill-mask", "-m", str(model), "-i", str(sentences), "--json"), env_for(code),
                          code)
    load_before = load_average()
    times: dict[str, list[float]] = {name: [] for name in runs}
    rss: dict[str, list[int]] = {name: [] for name in runs}
    outs = {name: WORK / f"fill-{i}.out" for i, name in enumerate(runs)}
    for repeat in range(args.repeats):
        for name, (cmd, env, cwd) in runs.items():
            if repeat and name == "pipeline(), defaults":
                continue  # one input at a time: ~10x the others, so it runs once (its time only gets better)
            seconds, peak = child(cmd, env=env, cwd=cwd, out=outs[name])
            times[name].append(round(seconds, 2))
            rss[name].append(peak)
    load_after = load_average()

    def top5(name: str) -> list[list[int]]:
        rows = records(outs[name])
        if name.startswith("pipeline"):
            return [r["top5"] for r in rows]
        return [[f["token_id"] for f in r["masks"][0]] for r in rows]

    mine = top5("llmkit fill-mask (onnx)")
    best = {name: min(values) for name, values in times.items()}
    base = best["llmkit fill-mask (onnx)"]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: fill-mask, {len(mine)} VADER movie snippets "
          f"(middle word masked), MiniLM-L6 masked LM (random seeded MLM transform), fresh processes, best of "
          f"{args.repeats}; load average {load_before} before, {load_after} after; ONNX export (once, not timed): "
          f"{export_seconds} s\n")
    print("| run | best s | all runs | peak RSS MiB | llmkit speed-up over it | same top-5 as llmkit |")
    print("|---|---:|---|---:|---:|---:|")
    same: dict[str, int] = {}
    for name in runs:
        same[name] = sum(a == b for a, b in zip(top5(name), mine, strict=True))
        print(f"| {name} | {best[name]:.2f} | {', '.join(map(str, times[name]))} | {max(rss[name])} | "
              f"{best[name] / base:.2f}x | {same[name]}/{len(mine)} |")
    return {"inputs": len(mine), "repeats": args.repeats, "load_before": load_before, "load_after": load_after,
            "export_seconds": export_seconds, "times": times, "peak_rss_mib": rss, "best": best,
            "same_top5": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("classify", "accuracy", "fill-mask"))
    parser.add_argument("--inputs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None, help="Also run the llmkit code in this folder.")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (default: results/onnx_engine_<what>.json)")
    args = parser.parse_args()
    if args.inputs is None:
        args.inputs = 1000 if args.what == "fill-mask" else 3000
    result = {"classify": bench_classify, "accuracy": bench_accuracy, "fill-mask": bench_fill_mask}[args.what](args)
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["cpus"] = os.cpu_count()
    out = args.out or RESULTS / f"onnx_engine_{args.what.replace('-', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
