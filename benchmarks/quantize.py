"""Every CPU quantization method on the bundled SmolLM2 vs float32 and bfloat16 transformers, in one run.

For each: size on disk, tokens/s of greedy generation through llmkit's generate() (median of --repeats runs,
all in this process, interleaved in the same loop), and perplexity on the built-in English sample, as ratios
to
float32 transformers. Goal (issue 6): >= 1.5x float32's tokens/s at < 1/3 of its size, perplexity within 3%.

    LLMKIT_HOME=/tmp/llmkit-home-shared flock /tmp/llmkit-bench.lock \
        python benchmarks/quantize.py --repeats 3 --new-tokens 64
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "smollm2-135m-instruct"
# (label, quantize() keyword arguments); output name suffix picks file vs folder.
METHODS: list[tuple[str, dict]] = [
    ("gguf q8_0 (via transformers)", {"method": "gguf", "gguf_type": "q8_0"}),
    ("gguf q4_0 (via transformers)", {"method": "gguf", "gguf_type": "q4_0"}),
    ("dynamic-int8 (skip lm_head)", {"method": "dynamic-int8"}),
    ("dynamic-int8 (everything)", {"method": "dynamic-int8", "skip": ()}),
    ("torchao int8-weight", {"method": "int8-weight"}),
    ("torchao int4-weight g32", {"method": "int4-weight"}),
]


def tokens_per_second(lm, new_tokens: int) -> float:
    from llmkit.generate import build_settings, generate
    from llmkit.quantize import SPEED_PROMPT

    result = next(
        generate([SPEED_PROMPT], loaded=lm, settings=build_settings("greedy", max_new_tokens=new_tokens))
    )
    return result.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="labels (substrings) of the methods to run")
    args = parser.parse_args()

    import torch

    from llmkit import loading
    from llmkit.quantize import _disk_size, quantize

    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-quantize-"))
    rows: list[dict] = []
    runs: dict[str, object] = {}

    f32 = loading.load(MODEL, "causal-lm", device="cpu", dtype="float32")
    f32_size = _disk_size(loading.convert_gguf(Path(f32.source.location), progress=False))
    runs["float32 transformers"] = f32
    bf16 = loading.load(MODEL, "causal-lm", device="cpu", dtype="bfloat16")
    runs["bfloat16 transformers"] = bf16

    methods = [m for m in METHODS if not args.only or any(o in m[0] for o in args.only)]
    reports = {}
    for label, kwargs in methods:
        out = work / (
            label.split()[0] + "-" + str(len(reports)) + (".gguf" if kwargs["method"] == "gguf" else "")
        )
        print(f"quantizing: {label}", file=sys.stderr)
        report = quantize(MODEL, out, device="cpu", **kwargs)
        reports[label] = report
        runs[label] = loading.load(
            str(out), "causal-lm", device="cpu", dtype="float32" if out.suffix == ".gguf" else "auto"
        )

    # Perplexity of the two baselines with quantize's own evaluation (same text, same tokens).
    from llmkit.quantize import _outputs, _prepare_eval

    ev = _prepare_eval(f32, "causal-lm", None, None)
    ppl = {"float32 transformers": _outputs(f32, ev)[1], "bfloat16 transformers": _outputs(bf16, ev)[1]}
    for label, report in reports.items():
        ppl[label] = report.quantized.quality
    sizes = {"float32 transformers": f32_size, "bfloat16 transformers": f32_size // 2}
    for label, report in reports.items():
        sizes[label] = report.quantized.size_bytes

    # Speed: interleaved rounds so that load from other users on the machine hits every method alike.
    speeds: dict[str, list[float]] = {label: [] for label in runs}
    for lm in runs.values():
        tokens_per_second(lm, 4)  # warm-up
    for _ in range(args.repeats):
        for label, lm in runs.items():
            speeds[label].append(tokens_per_second(lm, args.new_tokens))

    base_speed = statistics.median(speeds["float32 transformers"])
    base_ppl = ppl["float32 transformers"]
    print("| method | size | size vs f32 | tokens/s | speed vs f32 | perplexity | ppl vs f32 | goal |")
    print("|---|---|---|---|---|---|---|---|")
    for label in runs:
        speed = statistics.median(speeds[label])
        size = sizes[label]
        goal = speed >= 1.5 * base_speed and size < f32_size / 3 and ppl[label] <= base_ppl * 1.03
        rows.append({"method": label, "size": size, "tokens_per_s": speed, "perplexity": ppl[label]})
        print(
            f"| {label} | {size / 1e6:.0f} MB | {size / f32_size:.2f}x | {speed:.1f} "
            f"| {speed / base_speed:.2f}x "
            f"| {ppl[label]:.2f} | {(ppl[label] / base_ppl - 1) * 100:+.2f}% | {'yes' if goal else 'no'} |"
        )
    print(
        f"\n(median of {args.repeats} runs of {args.new_tokens} greedy tokens; bfloat16 size = float32 / 2)"
    )
    # Leave nothing behind: the outputs and the de-quantized caches of the .gguf files under $LLMKIT_HOME.
    for out in work.iterdir():
        if out.suffix == ".gguf":
            shutil.rmtree(loading.converted_dir(out), ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
