"""One rank of a sharded classify run, started by tests/test_distributed.py with RANK/WORLD_SIZE set.

    python tests/distributed_worker.py MODE MODEL INPUT OUTPUT

MODE: `file` (merge into OUTPUT), `stdout` (merge onto stdout, JSON lines), `gloo` (as file, after joining a
gloo process group and meeting at a barrier), `fail` (rank 1 raises after its second record).
"""

from __future__ import annotations

import sys
from pathlib import Path

from llmkit import distributed, output
from llmkit.classify import classify
from llmkit.errors import LlmkitError


def main() -> int:
    mode, model, input_path, output_path = sys.argv[1:5]
    peers = distributed.detect()
    if mode == "gloo":
        import torch.distributed as dist

        dist.init_process_group("gloo")  # MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE from the environment
        assert distributed.barrier(peers, "start", timeout=60)
    lines = Path(input_path).read_text(encoding="utf-8").splitlines()
    target = None if mode == "stdout" else Path(output_path)
    try:
        with distributed.ShardedRun(peers, output=target) as run:
            mine = list(run.shard(lines, block_size=2))
            indices = [index for index, _ in mine]
            for count, (index, result) in enumerate(
                zip(indices, classify((text for _, text in mine), model=model, all_scores=True), strict=True)
            ):
                if mode == "fail" and peers.rank == 1 and count == 1:
                    raise RuntimeError("boom on purpose")
                run.write(index, output.to_record(result))
        if peers.is_main:
            records = run.merged()
            if target is not None:
                columns = ["text", "label", "score", "scores"]
                count = output.write_table(target, columns, records)
                print(f"wrote {count}", file=sys.stderr)
            else:
                for record in records:
                    output.write_json(record)
    except LlmkitError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except RuntimeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        if mode == "gloo":
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
