"""Is llmkit's masked-LM path right, and does its tiny preset use context? (issue 25's mlm goal)

Two parts, each its own command line (every model trains in its own process, one torch thread):

- reference: the same tokenizer (trained once on the corpus), the same BERT shapes (the L2/H128 BERT llmkit's
  tiny preset used to be), the same batch, learning rate, warm-up, weight decay and steps, trained two ways:
  transformers' `run_mlm.py` recipe (datasets `map` with special tokens + `group_texts`,
  `DataCollatorForLanguageModeling`, `BertForMaskedLM`, `Trainer`) and `llmkit pretrain --model-config bert.json
  --tokenizer ...`; then llmkit's default tiny preset on the same run. All are scored on the same held-out blocks
  (articles no run trained on) with 15% of their tokens replaced by [MASK]: masked-token perplexity, against a
  unigram model of the training blocks (add-one smoothed) on the same tokens.
- synthetic: a corpus where the masked word is fixed by its context ("the capital of X is Y ." with 200 fixed
  random X -> Y pairs): the masked-token perplexity on held-out blocks, and top-1 accuracy on "the capital of X
  is [MASK] ." (chance: 1/200) and on the fixed words ("the [MASK] of X is Y .", ...; a guess without context
  gets at most 1 in 5), each probe placed between other lines as in the packed training blocks, for the same
  BERT and the default preset after a few hundred steps.

    python benchmarks/pretrain_mlm_check.py --part reference --steps 800
    python benchmarks/pretrain_mlm_check.py --part synthetic --steps 300

Results go to benchmarks/results/pretrain_mlm_check_<part>_<time>.json with `uptime`'s load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from itertools import chain
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pretrain import DATA, RESULTS, SEED, defaults, load_average, prepare  # noqa: E402

VOCAB, BLOCK = 4096, 128
# The tiny BERT llmkit's preset was before ModernBERT (and its training defaults: batch 8, lr 1e-3, no dropout).
BERT_TINY = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2,
             "intermediate_size": 512, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
             "max_position_embeddings": BLOCK}  # fmt: skip
EVAL_BLOCKS = 200
EVAL_RATE = 0.15  # share of the held-out tokens replaced by [MASK] (all of them masked: context is all there is)


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def llmkit(args: list[str]) -> dict:
    """`llmkit pretrain ARGS --json` in its own process; returns the result record and the wall seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llmkit", "pretrain", *args, "--json"], capture_output=True,
                          text=True, env=env())  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"llmkit pretrain failed ({done.returncode}): {done.stderr[-2000:]}")
    record = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")][-1]
    return {**record, "wall_seconds": round(time.perf_counter() - started, 1)}


def reference_child(train_file: str, tokenizer_dir: str, steps: int, output: str) -> dict:
    """transformers' run_mlm.py recipe with llmkit's tiny-BERT shapes and training defaults (in a child)."""
    import torch

    torch.set_num_threads(1)
    import datasets
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    datasets.disable_progress_bars()
    mlm = defaults("mlm")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [t for t in Path(train_file).read_text(encoding="utf-8").splitlines() if t.strip()]
    raw = datasets.Dataset.from_dict({"text": texts})
    tokenized = raw.map(lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True,
                        remove_columns=["text"])  # fmt: skip

    def group_texts(examples: dict) -> dict:  # run_mlm.py's
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // BLOCK) * BLOCK
        return {k: [t[i : i + BLOCK] for i in range(0, total, BLOCK)] for k, t in concatenated.items()}

    blocks = tokenized.map(group_texts, batched=True, batch_size=1000)
    shape = {k: v for k, v in BERT_TINY.items() if k != "model_type"}
    config = BertConfig(**shape, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    set_seed(SEED)
    model = BertForMaskedLM(config)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=mlm["mlm_probability"])
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=mlm["batch"], max_steps=steps,
                                 learning_rate=mlm["lr"], warmup_steps=mlm["warmup"], weight_decay=mlm["weight_decay"],
                                 seed=SEED, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                                 logging_steps=max(1, steps // 10), dataloader_num_workers=0)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=blocks, data_collator=collator)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    model.save_pretrained(output)
    tok.save_pretrained(output)
    log = [{"step": r["step"], "loss": r["loss"]} for r in trainer.state.log_history if "loss" in r]
    return {"train_seconds": round(seconds, 1), "log": log}


def held_out_blocks(test: list[dict], tokenizer) -> dict:
    """Blocks of the held-out articles ([CLS] ... [SEP], as llmkit packs), 15% of each replaced by [MASK]."""
    import torch

    from llmkit.corpus import pack_blocks
    from llmkit.pretrain import encode_texts, packing_for

    lines = [line.strip() for a in test for line in a["text"].splitlines() if line.strip()]
    packed = pack_blocks(encode_texts(tokenizer, lines), packing_for(tokenizer, "mlm", BLOCK)).blocks[:EVAL_BLOCKS]
    ids = torch.tensor(packed)
    special = torch.isin(ids, torch.tensor(sorted(tokenizer.all_special_ids)))
    chosen = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(SEED)) < EVAL_RATE) & ~special
    return {"input_ids": torch.where(chosen, tokenizer.mask_token_id, ids), "labels": torch.where(chosen, ids, -100)}


def masked_perplexity(folder: str, held: dict) -> float:
    import torch
    from transformers import AutoModelForMaskedLM

    torch.set_num_threads(1)
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    nll = count = 0.0
    with torch.inference_mode():
        for start in range(0, len(held["input_ids"]), 16):
            ids, labels = held["input_ids"][start : start + 16], held["labels"][start : start + 16]
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"))
            count += int((labels != -100).sum())
    return round(math.exp(nll / count), 2)


def unigram_perplexity(train_file: str, tokenizer, held: dict) -> float:
    from llmkit.pretrain import encode_texts

    texts = [t for t in Path(train_file).read_text(encoding="utf-8").splitlines() if t.strip()]
    counts = Counter(chain.from_iterable(encode_texts(tokenizer, texts)))
    total, vocab = sum(counts.values()), len(tokenizer)
    targets = [int(t) for t in held["labels"].flatten() if t != -100]
    return round(math.exp(-sum(math.log((counts[t] + 1) / (total + vocab)) for t in targets) / len(targets)), 2)


def part_reference(steps: int, work: Path) -> dict:
    from transformers import AutoTokenizer

    from llmkit.tokenizer_training import train_tokenizer

    data = prepare(quick=False)
    train_file = data["train_file"]
    texts = [t for t in Path(train_file).read_text(encoding="utf-8").splitlines() if t.strip()]
    tokenizer_dir = work / "tokenizer"
    train_tokenizer(texts, "mlm", VOCAB, max_length=BLOCK).save_pretrained(str(tokenizer_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    held = held_out_blocks(data["test"], tokenizer)
    bert_config = work / "bert.json"
    bert_config.write_text(json.dumps(BERT_TINY), encoding="utf-8")
    mlm = defaults("mlm")
    common = [train_file, "--objective", "mlm", "--tokenizer", str(tokenizer_dir), "--max-steps", str(steps),
              "--seed", str(SEED), "--validation-split", "0.02", "--eval-steps", str(steps)]  # fmt: skip
    runs: dict = {}
    load = load_average()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--reference-child", train_file, str(tokenizer_dir), str(steps),
                           str(work / "reference")], capture_output=True, text=True, env=env())  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"reference failed: {done.stderr[-2000:]}")
    runs["transformers run_mlm recipe, BERT"] = {
        **json.loads(done.stdout.strip().splitlines()[-1]), "wall_seconds": round(time.perf_counter() - started, 1),
        "load_before": load, "perplexity": masked_perplexity(str(work / "reference"), held)}  # fmt: skip
    for name, extra in (
        ("llmkit pretrain, the same BERT", ["--model-config", str(bert_config), "-b", str(mlm["batch"]),
                                            "--lr", str(mlm["lr"])]),
        ("llmkit pretrain, default tiny preset", []),
    ):  # fmt: skip
        load = load_average()
        out = work / name.split(",")[1].strip().replace(" ", "-")
        result = llmkit([*common, *extra, "-o", str(out)])
        report = json.loads((out / "report.json").read_text())
        runs[name] = {"architecture": result["architecture"], "train_seconds": result["train_seconds"],
                      "wall_seconds": result["wall_seconds"], "load_before": load,
                      "log": [{"step": r["step"], "loss": r["loss"]} for r in report["log"]],
                      "perplexity": masked_perplexity(str(out), held)}  # fmt: skip
    return {"steps": steps, "batch": mlm["batch"], "lr": mlm["lr"], "mlm_probability": mlm["mlm_probability"],
            "corpus": {k: v for k, v in data.items() if k != "test"}, "held_out_blocks": len(held["input_ids"]),
            "masked_tokens": int((held["labels"] != -100).sum()),
            "unigram_perplexity": unigram_perplexity(train_file, tokenizer, held), "runs": runs}  # fmt: skip


def synthetic_corpus(path: Path) -> tuple[list[str], list[str]]:
    rng = random.Random(0)

    def word() -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))

    xs, ys = [word() for _ in range(200)], [word() for _ in range(200)]
    lines = [f"the capital of {xs[i]} is {ys[i]} ." for i in (rng.randrange(200) for _ in range(20000))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return xs, ys


def part_synthetic(steps: int, work: Path) -> dict:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    corpus = work / "capitals.txt"
    xs, ys = synthetic_corpus(corpus)
    bert_config = work / "bert.json"
    bert_config.write_text(json.dumps(BERT_TINY), encoding="utf-8")
    mlm = defaults("mlm")
    common = [str(corpus), "--objective", "mlm", "--vocab-size", "1000", "--max-steps", str(steps), "--seed",
              str(SEED), "--eval-steps", str(steps)]  # fmt: skip
    sentences = [f"the capital of {x} is {y} .".split() for x, y in zip(xs, ys, strict=True)]
    context = [" ".join(sentences[(i * 7) % len(sentences)]) for i in range(3)]
    runs: dict = {}
    for name, extra in (
        ("llmkit pretrain, BERT", ["--model-config", str(bert_config), "-b", str(mlm["batch"]), "--lr", str(mlm["lr"])]),
        ("llmkit pretrain, default tiny preset", []),
    ):
        load = load_average()
        out = work / name.split(",")[1].strip().replace(" ", "-")
        result = llmkit([*common, *extra, "-o", str(out)])
        tok, model = AutoTokenizer.from_pretrained(str(out)), AutoModelForMaskedLM.from_pretrained(str(out)).eval()

        def top1(words: list[str], at: int, tok=tok, model=model) -> bool:
            # inside other lines, as in the packed training blocks ("... . [SEP] the capital of ...")
            probe = " ".join([*words[:at], tok.mask_token, *words[at + 1 :]])
            enc = tok(f" {tok.sep_token} ".join([*context, probe, *context]), return_tensors="pt")
            with torch.inference_mode():
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0]
            where = int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0])
            return bool(tok.convert_ids_to_tokens(int(logits[where].argmax())) == words[at])

        capital = sum(top1(words, 5) for words in sentences) / len(sentences)
        # the fixed words: "the", "capital", "of", "is", "." (a unigram guess gets one of them right at most)
        fixed = sum(top1(words, i) for words in sentences for i in (0, 1, 2, 4, 6)) / (5 * len(sentences))
        runs[name] = {"architecture": result["architecture"], "load_before": load, "train_seconds": result["train_seconds"],
                      "evaluations": result["evaluations"], "capital_top1": capital,
                      "fixed_words_top1": fixed}  # fmt: skip
    return {"steps": steps, "pairs": len(xs), "chance": 1 / len(xs), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("reference", "synthetic"), default="reference")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--reference-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_child:
        train_file, tokenizer_dir, steps, output = args.reference_child
        print(json.dumps(reference_child(train_file, tokenizer_dir, int(steps), output)))
        return 0
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "part": args.part, "threads": 1,
                     "load": {"start": load_average()}}  # fmt: skip
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlm-check-", dir=str(DATA)) as tmp:
        part = part_reference if args.part == "reference" else part_synthetic
        results[args.part] = part(args.steps, Path(tmp))
    results["load"]["end"] = load_average()
    RESULTS.mkdir(exist_ok=True)
    name = f"pretrain_mlm_check_{args.part}_{time.strftime('%Y%m%d-%H%M')}.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1))
    print(f"written to benchmarks/results/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
