"""`llmkit finetune --train-only ffn` and `--strategy lora|prompt-tuning|prefix-tuning` end to end on the tiny
checkpoints, and the adapter folders they write loading in classify and generate without merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch
from typer.testing import CliRunner

from llmkit.cli import app

SENTIMENT = Path(__file__).parent / "data" / "sentiment.csv"
FAST = ["--lr", "0.05", "--batch-size", "8", "--seed", "1", "--json", "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(command: str, args: list[str]) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(app, [command, *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, records, result.stderr


def final(records: list[dict]) -> dict:
    return next(r for r in records if r.get("event") in ("result", "plan"))


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = SENTIMENT.read_text().splitlines()
    pos = [r for r in rows[1:] if r.endswith(",positive")][:8]
    neg = [r for r in rows[1:] if r.endswith(",negative")][:8]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    path.write_text("\n".join([rows[0]] + [x for pair in zip(pos, neg, strict=True) for x in pair]) + "\n")
    return path


@pytest.fixture(scope="module")
def lm_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lm") / "text.csv"
    lines = ["text"] + ["the movie was good and the music was great ."] * 8 + ["a terrible boring film ."] * 8
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_only_ffn_moves_only_the_feed_forward_blocks_and_head(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "ffn"
    code, records, stderr = run("finetune", [str(small_csv), "-m", str(tiny_encoder), "-o", str(out),
                                             "--train-only", "ffn", "--max-steps", "3", *FAST])
    assert code == 0, stderr
    result = final(records)
    per_layer = 2 * tiny.HIDDEN * tiny.INTERMEDIATE + tiny.INTERMEDIATE + tiny.HIDDEN
    assert result["strategy"] == "ffn"
    assert result["trainable_parameters"] == tiny.LAYERS * per_layer + 2 * tiny.HIDDEN + 2
    assert result["trainable_share"] == pytest.approx(result["trainable_parameters"] / result["total_parameters"],
                                                      abs=1e-6)
    before, after = load_file(str(tiny_encoder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = {name for name, value in before.items() if not torch.equal(after["bert." + name], value)}
    assert moved and all(".intermediate.dense." in n or (".output.dense." in n and "attention" not in n)
                         for n in moved), moved


@pytest.mark.parametrize("strategy", ["lora", "prompt-tuning", "prefix-tuning"])
def test_peft_strategies_write_adapters_that_classify_loads(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path, strategy: str
) -> None:
    out = tmp_path / strategy
    extra = ["--num-virtual-tokens", "4"] if strategy != "lora" else []
    code, records, stderr = run("finetune", [str(small_csv), "-m", str(tiny_encoder), "-o", str(out),
                                             "--strategy", strategy, *extra, "--max-steps", "4", *FAST])
    assert code == 0, stderr
    result = final(records)
    assert result["strategy"].startswith(strategy)
    assert 0 < result["trainable_share"] < 0.5
    names = {p.name for p in out.iterdir()}
    assert "adapter_config.json" in names and "config.json" not in names  # an adapter, not a merged model
    extras = json.loads((out / "llmkit_adapter.json").read_text())
    assert extras == {"base": str(tiny_encoder), "id2label": {"0": "negative", "1": "positive"}}

    code, rows, stderr = run("classify", ["--model", str(out), "great movie", "awful film", "--json",
                                          "--device", "cpu", "--all-scores"])
    assert code == 0, stderr
    assert [r["label"] for r in rows] and all(r["label"] in ("negative", "positive") for r in rows)
    if strategy == "lora":
        return  # LoRA against its merged model and its base: tests/test_adapters.py
    # the virtual tokens are really in the path: the same weights without them give other logits
    from llmkit.loading import load

    adapted = load(str(out), "sequence-classification", device="cpu", dtype="float32")
    tok = adapted.tokenizer(["great movie"], return_tensors="pt")
    with torch.no_grad():
        with_adapter = adapted.model(**tok).logits
        without = adapted.model.get_base_model()(**tok).logits  # same trained head, no virtual tokens
    assert not torch.allclose(with_adapter, without, atol=1e-6)


def test_adapter_on_top_of_model(tiny_encoder: Path, small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    code, _, stderr = run("finetune", [str(small_csv), "-m", str(tiny_encoder), "-o", str(out),
                                       "--strategy", "prompt-tuning", "--num-virtual-tokens", "3",
                                       "--max-steps", "2", *FAST])
    assert code == 0, stderr
    args = ["great movie", "--json", "--device", "cpu", "--all-scores"]
    code, alone, stderr = run("classify", ["--model", str(out), *args])
    assert code == 0, stderr
    code, stacked, stderr = run("classify", ["--model", str(tiny_encoder), "--adapter", str(out), *args])
    assert code == 0, stderr
    assert stacked == alone
    code, _, stderr = run("classify", ["--model", str(tiny_encoder), "--adapter", str(tmp_path), *args])
    assert code == 3 and "not a peft adapter folder" in stderr


@pytest.fixture(scope="module")
def peaked_lm(tmp_path_factory: pytest.TempPathFactory, tiny_causal_lm: Path) -> Path:
    """The tiny Llama with its weights scaled up: the random one repeats its last word whatever comes before it,
    so a few steps of prompt tuning cannot show in its greedy text; this one's choices follow the whole context."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    path = tmp_path_factory.mktemp("peaked") / "lm"
    model.save_pretrained(str(path))
    tiny.lm_tokenizer().save_pretrained(str(path))
    return path


def _peft_greedy_without_cache(base: Path, adapter: Path, prompt: str, steps: int) -> str:
    """The reference: transformers + peft's own forward (virtual tokens included) over the whole sequence at every
    step, no KV cache and none of llmkit's code; the new tokens decoded."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                      str(adapter)).eval()
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    start = ids.shape[1]
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return str(tok.decode(ids[0, start:], skip_special_tokens=True))


@pytest.mark.parametrize("strategy", ["prompt-tuning", "prefix-tuning"])
def test_causal_lm_prompt_adapters_generate(peaked_lm: Path, lm_csv: Path, tmp_path: Path, strategy: str) -> None:
    out = tmp_path / strategy
    code, records, stderr = run("finetune", [str(lm_csv), "-m", str(peaked_lm), "-o", str(out),
                                             "--task", "causal-lm", "--strategy", strategy,
                                             "--num-virtual-tokens", "4", "--max-steps", "3", *FAST])
    assert code == 0, stderr
    assert final(records)["trainable_parameters"] == (
        4 * tiny.HIDDEN if strategy == "prompt-tuning" else 4 * tiny.LAYERS * 2 * tiny.HIDDEN)
    steps = 6
    gen = ["the movie", "--max-new-tokens", str(steps), "--json", "--device", "cpu", "--dtype", "float32", "--raw"]
    code, with_adapter, stderr = run("generate", ["--model", str(out), *gen])
    assert code == 0, stderr
    code, plain, stderr = run("generate", ["--model", str(peaked_lm), *gen])
    assert code == 0, stderr
    assert with_adapter[0]["completion_tokens"] == plain[0]["completion_tokens"] == steps
    # the virtual tokens steer every step, as peft's own full forward does, and the text is not the base's
    assert with_adapter[0]["text"] == _peft_greedy_without_cache(peaked_lm, out, "the movie", steps)
    assert with_adapter[0]["text"] != plain[0]["text"]


@pytest.mark.parametrize(("args", "message"), [
    (["--strategy", "prompt-tuning", "--train-only", "head"], "two different strategies"),
    (["--strategy", "lora", "--num-virtual-tokens", "4"], "--num-virtual-tokens needs --strategy prompt-tuning"),
    (["--strategy", "prefix-tuning", "--lora-r", "4"], "--lora-r belongs to --strategy lora"),
    (["--strategy", "adapters"], "--strategy 'adapters': use one of full, lora"),
    (["--train-only", "attention"], "use 'head', 'ffn' or 'top-N'"),
])
def test_bad_strategy_flags(tiny_encoder: Path, small_csv: Path, tmp_path: Path, args: list[str], message: str):
    code, _, stderr = run("finetune", [str(small_csv), "-m", str(tiny_encoder), "-o", str(tmp_path / "x"), *args])
    assert code == 2 and message in stderr, stderr


# --- issue 28: a 2-label table on a 3-label classifier base ------------------------------------------------------


@pytest.fixture(scope="module")
def three_label_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_classifier(tmp_path_factory.mktemp("three") / "base", labels=("neutral", "sad", "happy"))


def _reference_scores(base: Path, adapter: Path, text: str) -> dict[str, float]:
    """transformers + peft alone: the base with a head of the adapter's size, the adapter (and its head) on top."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = {0: "negative", 1: "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=2, id2label=labels,
                                                               ignore_mismatched_sizes=True)
    from llmkit.strategies import accept_prefix_cache

    accept_prefix_cache(model)  # only renames peft's `past_key_values` to transformers 5's `cache` (prefix tuning)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    with torch.no_grad():
        probs = model(**AutoTokenizer.from_pretrained(str(adapter))(text, return_tensors="pt")).logits.softmax(-1)[0]
    return {labels[i]: float(p) for i, p in enumerate(probs)}


def _scores(record: dict) -> dict[str, float]:
    return {s["label"]: s["score"] for s in record["scores"]}


@pytest.mark.parametrize("strategy", [["--lora-r", "4"], ["--strategy", "prefix-tuning", "--num-virtual-tokens", "4"]])
def test_an_adapter_with_other_labels_than_its_base_classifies_and_quantizes(
    three_label_base: Path, small_csv: Path, tmp_path: Path, strategy: list[str]
) -> None:
    out = tmp_path / "out"
    code, _, stderr = run("finetune", [str(small_csv), "-m", str(three_label_base), "-o", str(out), *strategy,
                                       "--max-steps", "2", *FAST])
    assert code == 0, stderr
    args = ["good movie", "--json", "--device", "cpu", "--all-scores"]
    code, rows, stderr = run("classify", ["--model", str(out), *args])
    assert code == 0, stderr
    assert _scores(rows[0]) == pytest.approx(_reference_scores(three_label_base, out, "good movie"), abs=1e-5)
    if "--lora-r" not in strategy:
        return  # prompt/prefix adapters have no weights to fold in: quantize refuses them (test_quantize_adapters.py)
    code, records, stderr = run("quantize", ["--model", str(out), "--method", "dynamic-int8", "-o",
                                             str(tmp_path / "q"), "--json", "--device", "cpu"])
    assert code == 0, stderr
    assert records[0]["top1_agreement"] == 1.0
    code, rows, stderr = run("classify", ["--model", str(tmp_path / "q"), *args])
    assert code == 0, stderr
    assert set(_scores(rows[0])) == {"negative", "positive"}


def test_a_merged_lora_with_other_labels_than_its_base_equals_the_adapter(
    three_label_base: Path, small_csv: Path, tmp_path: Path
) -> None:
    common = [str(small_csv), "-m", str(three_label_base), "--lora-r", "4", "--max-steps", "2", *FAST]
    code, _, stderr = run("finetune", [*common, "-o", str(tmp_path / "adapter")])
    assert code == 0, stderr
    code, _, stderr = run("finetune", [*common, "-o", str(tmp_path / "merged"), "--merge-lora"])
    assert code == 0, stderr
    args = ["good movie", "--json", "--device", "cpu", "--all-scores"]
    code, merged, stderr = run("classify", ["--model", str(tmp_path / "merged"), *args])
    assert code == 0, stderr
    # the same seeded training, folded into the weights: the adapter's own scores, from transformers + peft
    reference = _reference_scores(three_label_base, tmp_path / "adapter", "good movie")
    assert _scores(merged[0]) == pytest.approx(reference, abs=1e-4)
    # the merged folder quantizes as the 2-label model it is, and the int8 model still gives the adapter's answer
    code, records, stderr = run("quantize", ["--model", str(tmp_path / "merged"), "--method", "dynamic-int8", "-o",
                                             str(tmp_path / "q"), "--json", "--device", "cpu"])
    assert code == 0, stderr
    assert records[0]["top1_agreement"] == 1.0
    code, rows, stderr = run("classify", ["--model", str(tmp_path / "q"), *args])
    assert code == 0, stderr
    assert set(_scores(rows[0])) == {"negative", "positive"}
    assert rows[0]["label"] == max(reference, key=reference.__getitem__)
    # ONNX Runtime's int8 takes plain models only: the adapter is refused with the two ways that work, before any
    # export, and nothing is written
    code, _, stderr = run("quantize", ["--model", str(tmp_path / "adapter"), "--method", "onnx-int8", "-o",
                                       str(tmp_path / "onnx"), "--device", "cpu"])
    assert code == 2
    assert stderr.strip().splitlines() == [
        f"Error: --method onnx-int8 quantizes a plain model and {tmp_path / 'adapter'} is a peft adapter: use "
        "--method dynamic-int8 (it folds a LoRA adapter into its base first), or train with --merge-lora and "
        "quantize that folder"]
    assert not (tmp_path / "onnx").exists()
