"""A bare training loop for comparing masked-LM architectures and learning rates quickly (one torch thread).

llmkit's tokenizer, blocks and masking (30%, BERT's 80/10/10), AdamW with 5% warm-up, linear decay and gradient
clipping at 1; every STEPS/8 steps the perplexity on 60 held-out blocks with 15% of their tokens replaced by
[MASK] (nothing but context to go on), beside a unigram model's on the same tokens (add-one smoothed counts of the
training blocks). ARCH: bert (the L2/H128 BERT the tiny preset was), bert4 (4 layers), berteager (bert with eager
attention), prelnroberta (RoBERTa-PreLayerNorm: pre-norm, learned absolute positions), modernbert[N] (N layers,
default 2: llmkit's tiny mlm preset).

    python benchmarks/pretrain_mlm_sweep.py benchmarks/.data/pretrain/train.txt 4096 modernbert 1e-3 800
    python benchmarks/pretrain_mlm_sweep.py CORPUS VOCAB ARCH LR STEPS [BATCH] [BLOCK]
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections import Counter


def build_config(arch: str, tok, block: int):
    from transformers import AutoConfig, BertConfig

    special = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
    shape = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if arch in ("bert", "berteager", "bert4"):
        layers = 4 if arch == "bert4" else 2
        cfg = BertConfig(**{**shape, "num_hidden_layers": layers}, max_position_embeddings=block, **no_dropout,
                         **special)  # fmt: skip
        if arch == "berteager":
            cfg._attn_implementation = "eager"
        return cfg
    if arch == "prelnroberta":
        return AutoConfig.for_model("roberta-prelayernorm", **shape, **special, **no_dropout,
                                    max_position_embeddings=block + 2, type_vocab_size=1)  # fmt: skip
    if arch.startswith("modernbert"):
        layers = int(arch[len("modernbert") :] or 2)
        return AutoConfig.for_model(
            "modernbert", hidden_size=128, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=256,
            max_position_embeddings=block, layer_types=["full_attention"] * layers, cls_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, **special,
        )  # fmt: skip
    raise SystemExit(f"unknown ARCH {arch!r}")


def main() -> int:
    import torch
    from transformers import AutoModelForMaskedLM, get_linear_schedule_with_warmup

    from llmkit.corpus import read_corpus
    from llmkit.masking import BlockCollator
    from llmkit.pretrain import PretrainOptions, make_blocks, masking_for
    from llmkit.tokenizer_training import train_tokenizer

    torch.set_num_threads(1)
    if len(sys.argv) < 6:
        raise SystemExit(__doc__)
    corpus, vocab, arch, lr, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else 8
    block = int(sys.argv[7]) if len(sys.argv) > 7 else 128
    options = PretrainOptions(objective="mlm", size="tiny", vocab_size=vocab, block_size=block)
    text = read_corpus(corpus)
    tok = train_tokenizer(text.texts, "mlm", vocab, max_length=block)
    blocks = make_blocks(text, tok, options, 42)
    masking = masking_for(tok, options, 42)
    held = torch.tensor(blocks.validation[:60])
    special = torch.isin(held, torch.tensor(sorted(masking.special_ids)))
    chosen = (torch.rand(held.shape, generator=torch.Generator().manual_seed(7)) < 0.15) & ~special
    val_inputs, val_labels = torch.where(chosen, masking.mask_id, held), torch.where(chosen, held, -100)
    counts = Counter(t for b in blocks.train for t in b)
    total = sum(counts.values())
    targets = [int(t) for t in val_labels.flatten() if t != -100]
    unigram = math.exp(-sum(math.log((counts[t] + 1) / (total + len(tok))) for t in targets) / len(targets))
    torch.manual_seed(42)
    model = AutoModelForMaskedLM.from_config(build_config(arch, tok, block))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n.lower())]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    schedule = get_linear_schedule_with_warmup(opt, int(0.05 * steps), steps)
    collator = BlockCollator(masking)
    rng = random.Random(0)
    params = sum(p.numel() for p in model.parameters())
    print(f"{arch} params {params} lr {lr} batch {batch} block {block} unigram-val-ppl {unigram:.1f} "
          f"train blocks {len(blocks.train)}", flush=True)  # fmt: skip
    started = time.time()
    for step in range(steps + 1):
        if step % max(1, steps // 8) == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                loss = model(input_ids=val_inputs, attention_mask=torch.ones_like(val_inputs), labels=val_labels).loss
            print(f"  step {step} val-allmasked-ppl {math.exp(loss.item()):.1f}  {time.time() - started:.0f}s", flush=True)
        if step == steps:
            break
        index = [rng.randrange(len(blocks.train)) for _ in range(batch)]
        b = collator([{"input_ids": blocks.train[i], "index": i} for i in index])
        model.train()
        loss = model(input_ids=b["input_ids"], attention_mask=torch.ones_like(b["input_ids"]), labels=b["labels"]).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
