"""Benchmark: `llmkit classify` end to end (fresh process: imports, model load, tokenization, forward), a 3-layer
student against its 6-layer teacher, on real tweets (VADER, fetched into benchmarks/.cache/).

Teacher: the bundled MiniLM-L6 with a seeded random 2-label head; student: the teacher with 3 of its 6 layers
kept (llmkit.student.drop_layers). Speed does not depend on what the weights learned, so neither is trained
here (benchmarks/distill.py measures the student's accuracy). Processes run alternately, `--repeats` times; the
best wall time counts. With --before DIR the same runs use the llmkit code in DIR (e.g. /work/main) as well.

With --pipeline the teacher also runs through transformers' pipeline("text-classification", batch_size=32) in a
fresh process on the same inputs (the peer end to end: its imports, load and classification).

    python benchmarks/classify_end_to_end.py [--inputs 1000] [--repeats 2] [--before /work/main] [--pipeline]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import vader  # noqa: E402

WORK = vader.CACHE / "classify-e2e"


def build_models() -> dict[str, Path]:
    """Teacher and student folders (built once, reused from the cache)."""
    paths = {"teacher (6 layers)": WORK / "teacher", "student (3 layers)": WORK / "student"}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    import torch

    from llmkit import loading
    from llmkit.student import drop_layers

    torch.manual_seed(0)
    lm = loading.load("minilm-l6", "sequence-classification", device="cpu", dtype="float32",
                      model_kwargs={"num_labels": 2, "id2label": {0: "negative", 1: "positive"},
                                    "label2id": {"negative": 0, "positive": 1}})
    student, _ = drop_layers(lm.model, 3)
    for model, path in ((lm.model, paths["teacher (6 layers)"]), (student, paths["student (3 layers)"])):
        model.save_pretrained(str(path))
        lm.tokenizer.save_pretrained(str(path))
    return paths


def run(code: Path, model: Path, inputs: Path) -> tuple[float, bytes]:
    env = dict(os.environ, PYTHONPATH=str(code), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    # cwd = the code's folder: `python -m` puts the working directory first on sys.path, so run from elsewhere
    # (e.g. a newer checkout) it would import that folder's llmkit whatever PYTHONPATH says.
    done = subprocess.run([sys.executable, "-m", "llmkit", "classify", "--model", str(model), "-i", str(inputs),
                           "--json"], env=env, capture_output=True, check=True, cwd=str(code))
    return time.perf_counter() - started, done.stdout


PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
texts = [line for line in open(sys.argv[2], encoding="utf-8").read().splitlines() if line.strip()]
pipe = pipeline("text-classification", model=sys.argv[1], device="cpu")
for out in pipe(texts, batch_size=32, truncation=True):
    print(json.dumps({"label": out["label"], "score": out["score"]}))
"""


def run_pipeline(model: Path, inputs: Path) -> tuple[float, bytes]:
    """The peer, end to end: a fresh process that imports transformers and runs pipeline(batch_size=32)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(model), str(inputs)], env=env,
                          capture_output=True, check=True)
    return time.perf_counter() - started, done.stdout


def labels(stdout: bytes) -> list[str]:
    import json

    return [json.loads(line)["label"] for line in stdout.decode().splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None, help="Also run the llmkit code in this folder.")
    parser.add_argument("--pipeline", action="store_true",
                        help="Also run the teacher through pipeline('text-classification', batch_size=32) in a fresh "
                             "process, the same inputs end to end.")
    args = parser.parse_args()

    # What `pip install` does for users: byte-compile llmkit once (a checkout run with PYTHONDONTWRITEBYTECODE=1,
    # as on the project's machines, would compile its modules on every start).
    import compileall

    for code in [ROOT, *([args.before] if args.before else [])]:
        compileall.compile_dir(str(Path(code) / "llmkit"), quiet=1)
    paths = build_models()
    inputs = WORK / f"tweets-{args.inputs}.txt"
    inputs.write_text("\n".join(t for t, _ in vader.rows("tweets")[: args.inputs]) + "\n", encoding="utf-8")
    codes = {"this": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    load_before = os.getloadavg()
    times: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], bytes] = {}
    for _ in range(args.repeats):
        for code_name, code in codes.items():
            for name, path in paths.items():
                seconds, outputs[code_name, name] = run(code, path, inputs)
                times.setdefault((code_name, name), []).append(seconds)
        if args.pipeline:
            seconds, outputs["pipeline", "teacher (6 layers)"] = run_pipeline(paths["teacher (6 layers)"], inputs)
            times.setdefault(("pipeline", "teacher (6 layers)"), []).append(seconds)
    load_after = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.inputs} VADER tweets; best of "
          f"{args.repeats}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| code | model | seconds (best) | all runs | student speed-up |")
    print("|---|---|---:|---|---:|")
    for code_name in codes:
        teacher = min(times[code_name, "teacher (6 layers)"])
        for name in paths:
            best = min(times[code_name, name])
            runs = ", ".join(f"{s:.1f}" for s in times[code_name, name])
            print(f"| {code_name} | {name} | {best:.2f} | {runs} | {teacher / best:.2f}x |")
    if args.pipeline:
        teacher = min(times["this", "teacher (6 layers)"])
        peer = min(times["pipeline", "teacher (6 layers)"])
        runs = ", ".join(f"{s:.1f}" for s in times["pipeline", "teacher (6 layers)"])
        same = sum(a == b for a, b in zip(labels(outputs["this", "teacher (6 layers)"]),
                                          labels(outputs["pipeline", "teacher (6 layers)"]), strict=True))
        print(f"| pipeline(batch_size=32), fresh process | teacher (6 layers) | {peer:.2f} | {runs} | |")
        print(f"\nllmkit classify vs the pipeline, teacher, end to end: {peer / teacher:.2f}x; "
              f"labels equal {same}/{args.inputs}")
    if "before" in codes:
        for name in paths:
            same = outputs["this", name].count(b'"label": "positive"') == outputs["before", name].count(
                b'"label": "positive"')
            print(f"\n{name}: this/before speed-up {min(times['before', name]) / min(times['this', name]):.2f}x; "
                  f"same label counts: {same}")


if __name__ == "__main__":
    main()
