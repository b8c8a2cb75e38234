#!/usr/bin/env bash
# Time one llmkit command from this checkout and from another one (e.g. `git worktree add /tmp/before REV`),
# alternating, so that the machine's drift hits both alike; prints each run's wall time and completion tokens
# (for --json output) and whether the two checkouts' texts were equal in each round.
#
#   bash benchmarks/interleave.sh /tmp/before 3 generate -i prompts.txt --engine transformers --batch-size 64 --json
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
before="$(cd "$1" && pwd)"
rounds="$2"
shift 2
python="${PYTHON:-$here/.venv/bin/python}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  for code in "$here" "$before"; do
    name=$([ "$code" = "$here" ] && echo this || echo before)
    started=$(date +%s%N)
    (cd "$code" && PYTHONPATH="$code" "$python" -m llmkit "$@" > "$out/$name.$round" 2>/dev/null)
    ended=$(date +%s%N)
    tokens=$("$python" -c "import json,sys; print(sum(json.loads(l).get('completion_tokens', 0) for l in open(sys.argv[1]) if l.startswith('{')))" "$out/$name.$round")
    ms=$(( (ended - started) / 1000000 ))
    printf '%s round %s: %d.%03d s, %s tokens\n' "$name" "$round" $((ms / 1000)) $((ms % 1000)) "$tokens"
  done
  "$python" -c "
import json, sys
texts = [[json.loads(l).get('text') for l in open(p) if l.startswith('{')] for p in sys.argv[1:]]
print(f'round $round: {sum(a == b for a, b in zip(*texts))} of {len(texts[0])} texts equal')" "$out/this.$round" "$out/before.$round"
done
