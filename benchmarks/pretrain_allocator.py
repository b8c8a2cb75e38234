"""What llmkit/allocator.py saves: CPU time, minor page faults and system time per training step of the tiny
causal-LM preset (forward, backward, clipping, fused AdamW; one torch thread; 40 timed steps after 3 warm-up steps),
in a fresh process with glibc's default malloc settings and in one with `allocator.keep_freed_memory()`.

    python benchmarks/pretrain_allocator.py            # vocabularies 8192 and 4096, both modes, alternated
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS, WARMUP = 40, 3


def child(mode: str, vocab: int) -> dict:
    if mode == "keep":
        from llmkit.allocator import keep_freed_memory

        assert keep_freed_memory()
    import torch

    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmkit.pretrain import SIZES

    torch.manual_seed(0)
    shape = SIZES["clm"]["tiny"]
    config = LlamaConfig(**shape, num_key_value_heads=shape["num_attention_heads"], vocab_size=vocab,
                         max_position_embeddings=128, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batch = torch.randint(vocab, (8, 128))

    def step() -> None:
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(WARMUP):
        step()
    before, cpu, wall = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    for _ in range(STEPS):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "vocab": vocab, "cpu_ms_per_step": round((time.process_time() - cpu) / STEPS * 1000, 1),
            "wall_ms_per_step": round((time.perf_counter() - wall) / STEPS * 1000, 1),
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) // STEPS,
            "system_ms_per_step": round((after.ru_stime - before.ru_stime) / STEPS * 1000, 1)}  # fmt: skip


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = []
    for vocab in (8192, 4096):
        for mode in ("plain", "keep"):
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            done = subprocess.run([sys.executable, __file__, "--child", mode, str(vocab)], capture_output=True,
                                  text=True, env=env, check=True)  # fmt: skip
            runs.append({**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": load})
            print(runs[-1], file=sys.stderr)
    name = f"pretrain_allocator_{time.strftime('%Y%m%d-%H%M')}.json"
    (HERE / "results" / name).write_text(json.dumps({"runs": runs}, indent=2) + "\n", encoding="utf-8")
    print(f"written to benchmarks/results/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
