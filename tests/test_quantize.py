"""`llmkit quantize` on the tiny checkpoints: each method replaces the right layers, reloads, stays close to
the original; GGUF files round-trip through the gguf reader and transformers' GGUF loader; the gate fires."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmkit import loading
from llmkit import quantize as qz
from llmkit.cli import app
from llmkit.errors import EXIT_MISSING_DEPENDENCY, EXIT_QUALITY_GATE, EXIT_USAGE

SENTENCES = ["the capital of france is paris .", "a good book and a great film .", "the dog and the cat ."]


@pytest.fixture(scope="module", autouse=True)
def _short_speed_runs():
    # A few generated tokens are enough to exercise the tokens/s path on tiny models; keeps the suite fast.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qz, "SPEED_NEW_TOKENS", 4)
        yield


def invoke(*args: str):
    return CliRunner().invoke(app, [*args])


def run_json(*args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def logits(lm, text: str = "the capital of france is paris"):
    import torch

    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return lm.model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def dynamic_out(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("q") / "dyn"
    record = run_json(
        "quantize", "-m", str(tiny_causal_lm), "--method", "dynamic-int8", "--max-drop", "50", "-o", str(out)
    )
    return out, record


# --- dynamic-int8 -------------------------------------------------------------------------------------------


def test_dynamic_int8_replaces_linears_keeps_head_and_reloads(dynamic_out, tiny_causal_lm: Path) -> None:
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    out, record = dynamic_out
    assert record["output"] == str(out) and record["passed"] is True and record["max_drop"] == 50
    assert record["method"] == "dynamic-int8" and record["settings"]["skip"] == ["lm_head"]
    assert record["original"]["quality_metric"] == "perplexity"
    assert json.loads((out / "report.json").read_text()) == record
    saved = loading.read_quantization_settings(out)
    assert saved is not None and saved["compute_dtype"] == "float32"
    assert (out / qz.DYNAMIC_WEIGHTS).is_file() and not (out / "model.safetensors").exists()

    lm = loading.load(str(out), "causal-lm")  # no flags: the saved settings rebuild the int8 modules
    layer = lm.model.model.layers[0]
    for module in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert isinstance(module, DynamicLinear)
    assert type(lm.model.lm_head) is torch.nn.Linear
    ref = loading.load(str(tiny_causal_lm), "causal-lm", dtype="float32")
    assert torch.allclose(logits(lm), logits(ref), atol=0.05)
    assert record["top1_agreement"] >= 0.95
    assert abs(record["quality_drop_percent"]) < 2
    assert record["quantized"]["size_bytes"] < record["original"]["size_bytes"]


def test_generate_runs_a_dynamic_int8_folder(dynamic_out) -> None:
    out, _ = dynamic_out
    record = run_json("generate", "--model", str(out), "-n", "3", "the capital of")
    assert record["completion_tokens"] >= 1 and isinstance(record["text"], str)


def test_skip_none_quantizes_the_head_and_skip_names_a_module(tiny_causal_lm: Path, tmp_path: Path) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    record = run_json(
        "quantize",
        "-m",
        str(tiny_causal_lm),
        "--method",
        "dynamic-int8",
        "--skip",
        "none",
        "-o",
        str(tmp_path / "all"),
    )
    assert record["settings"]["skip"] == []
    assert isinstance(loading.load(str(tmp_path / "all"), "causal-lm").model.lm_head, DynamicLinear)

    result = invoke(
        "quantize",
        "-m",
        str(tiny_causal_lm),
        "--method",
        "dynamic-int8",
        "--skip",
        "down_proj",
        "-o",
        str(tmp_path / "down"),
        "--format",
        "text",
    )
    assert result.exit_code == 0, result.output
    fields = result.stdout.strip().split(
        "\t"
    )  # --format text: one line, output<TAB>size<TAB>quality<TAB>drop
    assert (
        fields[0] == str(tmp_path / "down")
        and fields[2].startswith("perplexity=")
        and fields[3].startswith("drop=")
    )
    record = json.loads((tmp_path / "down" / "report.json").read_text())
    assert record["settings"]["skip"] == ["down_proj"] and int(fields[1]) == record["quantized"]["size_bytes"]
    model = loading.load(str(tmp_path / "down"), "causal-lm").model
    assert not isinstance(model.model.layers[1].mlp.down_proj, DynamicLinear)
    assert isinstance(model.model.layers[1].mlp.up_proj, DynamicLinear)
    assert isinstance(model.lm_head, DynamicLinear)


def test_skip_that_matches_nothing_is_a_usage_error(tiny_causal_lm: Path, tmp_path: Path) -> None:
    result = invoke(
        "quantize",
        "-m",
        str(tiny_causal_lm),
        "--method",
        "dynamic-int8",
        "--skip",
        "nope",
        "-o",
        str(tmp_path / "x"),
    )
    assert result.exit_code == EXIT_USAGE
    assert "--skip 'nope' matches no module" in result.stderr
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


# --- the quality gate ---------------------------------------------------------------------------------------


def test_max_drop_zero_refuses_and_keeps_nothing(tiny_causal_lm: Path, tmp_path: Path) -> None:
    out = tmp_path / "gated"
    result = invoke(
        "quantize", "-m", str(tiny_causal_lm), "--method", "int4-weight", "--max-drop", "0", "-o", str(out)
    )
    assert result.exit_code == EXIT_QUALITY_GATE, result.output
    assert "more than --max-drop 0; nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary folder


def test_quality_drop_direction() -> None:
    assert qz.quality_drop(10.0, 11.0, "perplexity") == pytest.approx(10.0)
    assert qz.quality_drop(10.0, 9.0, "perplexity") == pytest.approx(-10.0)
    assert qz.quality_drop(0.8, 0.6, "accuracy") == pytest.approx(25.0)


# --- torchao ------------------------------------------------------------------------------------------------


def test_int8_weight_quantizes_linears_and_reloads_close(tiny_causal_lm: Path, tmp_path: Path) -> None:
    import torch
    from torchao.quantization import Int8Tensor

    out = tmp_path / "int8w"
    record = run_json("quantize", "-m", str(tiny_causal_lm), "--method", "int8-weight", "-o", str(out))
    assert record["settings"] == {"method": "int8-weight", "compute_dtype": "float32", "skip": ["lm_head"]}
    lm = loading.load(str(out), "causal-lm")
    assert isinstance(lm.model.model.layers[0].mlp.up_proj.weight, Int8Tensor)
    assert not isinstance(lm.model.lm_head.weight, Int8Tensor)
    ref = loading.load(str(tiny_causal_lm), "causal-lm", dtype="float32")
    assert torch.allclose(logits(lm), logits(ref), atol=0.05)


def test_int4_weight_group_size_reaches_the_weights(tiny_causal_lm: Path, tmp_path: Path) -> None:
    record = run_json(
        "quantize",
        "-m",
        str(tiny_causal_lm),
        "--method",
        "int4-weight",
        "--group-size",
        "16",
        "-o",
        str(tmp_path / "g"),
    )
    assert record["settings"]["group_size"] == 16
    weight = loading.load(str(tmp_path / "g"), "causal-lm").model.model.layers[0].self_attn.q_proj.weight
    assert tuple(weight.block_size) == (1, 16)
    assert weight.qdata.min() >= -8 and weight.qdata.max() <= 7  # 4-bit values
    assert record["top1_agreement"] >= 0.9


def test_missing_torchao_is_exit_4(
    tiny_causal_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)
    result = invoke(
        "quantize", "-m", str(tiny_causal_lm), "--method", "int8-weight", "-o", str(tmp_path / "x")
    )
    assert result.exit_code == EXIT_MISSING_DEPENDENCY
    assert "pip install 'llmkit[quant]'" in result.stderr


def test_bitsandbytes_without_cuda_is_exit_4(tiny_causal_lm: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for method in ("bnb-8bit", "bnb-4bit"):
        result = invoke(
            "quantize", "-m", str(tiny_causal_lm), "--method", method, "-o", str(tmp_path / method)
        )
        assert result.exit_code == EXIT_MISSING_DEPENDENCY
        assert f"--method {method} needs a CUDA GPU" in result.stderr


# --- GGUF ---------------------------------------------------------------------------------------------------

# The most a value may move per GGUF type, relative to the tensor's largest magnitude (block scales are <=
# it).
GGUF_TOLERANCE = {"f16": 1e-3, "q8_0": 1 / 127, "q4_0": 1 / 7}


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "q4_0"])
def test_gguf_round_trips_through_reader_and_transformers(
    tiny_causal_lm_bpe: Path, tmp_path: Path, gguf_type: str
) -> None:
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / f"tiny-{gguf_type}.gguf"
    record = run_json(
        "quantize",
        "-m",
        str(tiny_causal_lm_bpe),
        "--method",
        "gguf",
        "--gguf-type",
        gguf_type,
        "-o",
        str(out),
    )
    assert record["settings"]["gguf_type"] == gguf_type and out.is_file()
    assert json.loads((tmp_path / f"tiny-{gguf_type}.report.json").read_text()) == record
    assert record["quantized"]["size_bytes"] == out.stat().st_size
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the private mode of the temporary file
    # no de-quantized float copy of the output is left behind (llama.cpp measured it, or the copy was removed)
    cache = loading.converted_dir(out)
    assert not cache.exists()
    assert not cache.parent.exists() or [p.name for p in cache.parent.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries either
    from llmkit.engines.llama_cpp import bindings_installed as llama_here

    assert record["original"]["engine"] == "transformers"
    if llama_here():
        assert record["quantized"]["engine"] == "llama-cpp" and record["kl_divergence"] is None
    else:
        assert record["quantized"]["engine"] == "transformers (de-quantized)"

    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    wanted = gguf_type.upper()
    assert types["blk.0.attn_q.weight"] == wanted and types["blk.1.ffn_down.weight"] == wanted
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert types["token_embd.weight"] == ("F16" if gguf_type == "f16" else "Q8_0")
    assert "output.weight" not in types  # tied head: llama.cpp reuses token_embd
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"

    original = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm_bpe)).state_dict()
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name).state_dict()
    assert set(back) == set(original)
    for name, tensor in original.items():
        bound = GGUF_TOLERANCE[gguf_type] * float(tensor.abs().max()) + 1e-6
        assert float((back[name].float() - tensor).abs().max()) <= bound, name
    # the Q/K permutation is undone exactly: a wrong one would move values by the full weight scale
    assert torch.allclose(
        back["model.layers.0.self_attn.k_proj.weight"],
        original["model.layers.0.self_attn.k_proj.weight"],
        atol=bound,
    )

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm_bpe))
    tok_back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    for text in SENTENCES + ["Hello, World! 123"]:
        assert tok_back(text)["input_ids"] == tok(text)["input_ids"]
    assert tok_back.eos_token == tok.eos_token and tok_back.bos_token == tok.bos_token
    assert tok_back.chat_template == tok.chat_template
    if gguf_type == "q8_0":  # llmkit's own generate loads the file directly
        record = run_json("generate", "--model", str(out), "-n", "3", "the capital of")
        assert record["completion_tokens"] >= 1
        from llmkit.engines.llama_cpp import bindings_installed

        assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # a name llama.cpp knows ("gpt2" is not)
        if bindings_installed():  # llama.cpp itself loads and runs the exported file
            assert record["engine"] == "llama-cpp", record["engine_reason"]


def test_gguf_refuses_what_it_cannot_write(tiny_causal_lm: Path, tiny_mlm: Path, tmp_path: Path) -> None:
    result = invoke("quantize", "-m", str(tiny_causal_lm), "--method", "gguf", "-o", str(tmp_path / "a.gguf"))
    assert result.exit_code == EXIT_USAGE
    assert "byte-level BPE tokenizers" in result.stderr and "this one is WordLevel" in result.stderr
    result = invoke("quantize", "-m", str(tiny_causal_lm), "--method", "gguf", "-o", str(tmp_path / "folder"))
    assert result.exit_code == EXIT_USAGE and "give --output a .gguf name" in result.stderr
    result = invoke(
        "quantize",
        "-m",
        str(tiny_causal_lm),
        "--method",
        "dynamic-int8",
        "--gguf-type",
        "q4_0",
        "-o",
        str(tmp_path / "b"),
    )
    assert result.exit_code == EXIT_USAGE and "--gguf-type applies to --method gguf only" in result.stderr
    result = invoke(
        "quantize",
        "-m",
        str(tiny_causal_lm),
        "--method",
        "dynamic-int8",
        "--dtype",
        "bfloat16",
        "-o",
        str(tmp_path / "b"),
    )
    assert result.exit_code == EXIT_USAGE and "dynamic-int8 computes in float32" in result.stderr
    result = invoke(
        "quantize",
        "-m",
        str(tiny_causal_lm),
        "--method",
        "dynamic-int8",
        "--group-size",
        "8",
        "-o",
        str(tmp_path / "b"),
    )
    assert (
        result.exit_code == EXIT_USAGE
        and "--group-size applies to --method int4-weight only" in result.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tiny_causal_lm: Path, tmp_path: Path) -> None:
    (tmp_path / "there").mkdir()
    result = invoke(
        "quantize", "-m", str(tiny_causal_lm), "--method", "dynamic-int8", "-o", str(tmp_path / "there")
    )
    assert result.exit_code == EXIT_USAGE and "already exists" in result.stderr


# --- other tasks, eval data, dtype --------------------------------------------------------------------------


def test_classifier_accuracy_on_labeled_eval_data(tiny_classifier: Path, tmp_path: Path) -> None:
    data = tmp_path / "eval.csv"
    data.write_text(
        "text,label\n"
        + "".join(f"{s},{'positive' if i % 2 else 'negative'}\n" for i, s in enumerate(SENTENCES * 2))
    )
    out = tmp_path / "cls"
    record = run_json(
        "quantize",
        "-m",
        str(tiny_classifier),
        "--method",
        "dynamic-int8",
        "--eval-data",
        str(data),
        "-o",
        str(out),
    )
    assert record["task"] == "sequence-classification"
    assert (
        record["original"]["quality_metric"] == "accuracy"
        and record["original"]["speed_unit"] == "examples/s"
    )
    assert record["eval_tokens"] == 6 and record["settings"]["skip"] == ["classifier"]
    lm = loading.load(str(out), "sequence-classification")
    assert lm.model.config.id2label == {0: "negative", 1: "positive"}

    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nthe dog .,maybe\n")
    result = invoke(
        "quantize",
        "-m",
        str(tiny_classifier),
        "--method",
        "dynamic-int8",
        "--eval-data",
        str(bad),
        "-o",
        str(tmp_path / "no"),
    )
    assert (
        result.exit_code == EXIT_USAGE and "label 'maybe' is not one of the model's labels" in result.stderr
    )


def test_masked_lm_uses_masked_perplexity(tiny_mlm: Path, tmp_path: Path) -> None:
    record = run_json("quantize", "-m", str(tiny_mlm), "--method", "int8-weight", "-o", str(tmp_path / "mlm"))
    assert record["task"] == "masked-lm" and record["quantized"]["quality_metric"] == "masked-perplexity"
    assert record["settings"]["skip"] == ["cls.predictions.decoder"]  # the default: the output head
    assert record["top1_agreement"] >= 0.9


def test_eval_data_and_dtype_are_used(tiny_causal_lm: Path, tmp_path: Path) -> None:
    text = tmp_path / "eval.txt"
    text.write_text("the capital of france is paris .\nthe dog and the cat .\n")
    record = run_json(
        "quantize",
        "-m",
        str(tiny_causal_lm),
        "--eval-data",
        str(text),
        "--dtype",
        "bfloat16",
        "--method",
        "int8-weight",
        "-o",
        str(tmp_path / "e"),
    )
    ids = loading.load(str(tiny_causal_lm), "causal-lm").tokenizer("\n".join(text.read_text().splitlines()))
    assert record["eval_tokens"] == len(ids["input_ids"]) != 0
    assert record["settings"]["compute_dtype"] == "bfloat16"
    assert str(loading.load(str(tmp_path / "e"), "causal-lm").dtype) == "torch.bfloat16"
