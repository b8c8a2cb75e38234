"""`llmkit quantize --model ADAPTER_DIR`: a LoRA adapter is merged into its base and quantized; prompt and
prefix adapters are refused with exit 2 before anything is loaded or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llmkit import loading
from llmkit.adapters import load_adapter, merge_adapter, save_adapter
from llmkit.cli import app
from llmkit.strategies import build_peft_model


def _adapter(base: Path, strategy: str, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM

    kwargs = {"num_virtual_tokens": 2} if strategy != "lora" else {}
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), strategy, "causal-lm", **kwargs)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "prompt_encoder" in name:
                p.normal_(0.0, 0.5)
    save_adapter(model, folder, base_spec=str(base))
    return folder


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("the capital of france is paris", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def test_lora_adapter_is_merged_then_quantized(tiny_causal_lm: Path, tmp_path: Path) -> None:
    adapter = _adapter(tiny_causal_lm, "lora", tmp_path / "lora")
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["quantize", "-m", str(adapter), "--method", "int8-weight", "-o", str(out),
                                      "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["method"] == "int8-weight"
    assert not (out / "adapter_config.json").exists()  # a plain quantized model, no adapter left

    quantized = loading.load(str(out), "causal-lm", device="cpu")
    merged = merge_adapter(load_adapter(adapter, "causal-lm", device="cpu", dtype="float32").model)
    base = loading.load(str(tiny_causal_lm), "causal-lm", device="cpu", dtype="float32")
    q, m, b = (_logits(x, quantized.tokenizer) for x in (quantized.model, merged, base.model))
    assert (q - m).abs().max() < 0.05  # int8 rounding of the merged weights
    assert (m - b).abs().max() > 0.5  # the adapter's change is far larger: the merge really happened


@pytest.mark.parametrize("strategy", ["prompt-tuning", "prefix-tuning"])
def test_prompt_adapters_are_refused(tiny_causal_lm: Path, tmp_path: Path, strategy: str) -> None:
    adapter = _adapter(tiny_causal_lm, strategy, tmp_path / strategy)
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["quantize", "-m", str(adapter), "--method", "int8-weight", "-o", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert f"is a {strategy} adapter: it adds 2 virtual tokens" in result.stderr
    assert "Traceback" not in result.output and not out.exists()
