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


@pytest.mark.parametrize("strategy", ["prompt-tuning", "prefix-tuning"])
def test_causal_lm_prompt_adapters_generate(tiny_causal_lm: Path, lm_csv: Path, tmp_path: Path, strategy: str) -> None:
    out = tmp_path / strategy
    code, records, stderr = run("finetune", [str(lm_csv), "-m", str(tiny_causal_lm), "-o", str(out),
                                             "--task", "causal-lm", "--strategy", strategy,
                                             "--num-virtual-tokens", "4", "--max-steps", "3", *FAST])
    assert code == 0, stderr
    assert final(records)["trainable_parameters"] == (
        4 * tiny.HIDDEN if strategy == "prompt-tuning" else 4 * tiny.LAYERS * 2 * tiny.HIDDEN)
    gen = ["the movie", "--max-new-tokens", "4", "--json", "--device", "cpu", "--dtype", "float32", "--raw"]
    code, with_adapter, stderr = run("generate", ["--model", str(out), *gen])
    assert code == 0, stderr
    assert with_adapter[0]["completion_tokens"] >= 1


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
