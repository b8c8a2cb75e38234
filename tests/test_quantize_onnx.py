"""`llmkit quantize --method onnx-int8`: ONNX Runtime's dynamic quantization of the export, measured on ONNX Runtime
on both sides, into a folder that classify and fill-mask run like any model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import invoke, json_lines

from llmkit.engines import choose
from llmkit.errors import EXIT_USAGE

SENTENCES = ["the capital of france is paris .", "a good book and a great film .", "the dog and the cat .",
             "i loved it and a wonderful movie", "terrible food and awful service", "the king and the queen ."]


def _quantize(*args: str) -> dict:
    result = invoke(["quantize", *args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json_lines(result.stdout)[-1]


def _int8_operators(graph: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(graph)).graph.node}


@pytest.fixture(scope="module")
def classifier_int8(tiny_classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("eval") / "eval.csv"
    data.write_text("text,label\n" + "".join(f"{s},{'positive' if i % 2 else 'negative'}\n"
                                             for i, s in enumerate(SENTENCES)))
    out = tmp_path_factory.mktemp("q") / "cls-int8"
    record = _quantize("-m", str(tiny_classifier), "--method", "onnx-int8", "--eval-data", str(data), "-o", str(out))
    return out, record


def test_a_classifier_is_quantized_and_measured_on_onnx_runtime(classifier_int8: tuple[Path, dict]) -> None:
    out, record = classifier_int8
    assert (record["method"], record["task"], record["output"]) == ("onnx-int8", "sequence-classification", str(out))
    for side in ("original", "quantized"):
        assert record[side]["engine"] == "onnxruntime"
        assert record[side]["quality_metric"] == "accuracy" and record[side]["speed_unit"] == "examples/s"
        assert record[side]["speed"] > 0 and record[side]["size_bytes"] > 0
    assert record["eval_tokens"] == len(SENTENCES)
    assert record["settings"] == {"method": "onnx-int8", "tool": "onnxruntime.quantization.quantize_dynamic",
                                  "weight_type": "int8", "per_channel": True, "activations": "uint8, quantized per run"}
    assert 0 < record["size_ratio"] < 1 and 0 <= record["top1_agreement"] <= 1
    assert {"model.onnx", "tokenizer.json", "llmkit_onnx.json", "config.json", "llmkit_quantization.json",
            "report.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "report.json").read_text())["method"] == "onnx-int8"
    assert _int8_operators(out / "model.onnx") & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}


def test_classify_runs_the_int8_folder_like_any_model(classifier_int8: tuple[Path, dict], tiny_classifier: Path) -> None:
    out, _ = classifier_int8
    result = invoke(["classify", "-m", str(out), "--all-scores", "--json", *SENTENCES[:3]])
    assert result.exit_code == 0, result.stderr
    got = json_lines(result.stdout)
    assert {(r["engine"], r["engine_reason"]) for r in got} == {("onnx", choose.ONNX_FOLDER_REASON)}
    assert {s["label"] for r in got for s in r["scores"]} == {"negative", "positive"}
    want = json_lines(invoke(["classify", "-m", str(tiny_classifier), "--all-scores", "--json", *SENTENCES[:3]]).stdout)
    for a, b in zip(got, want, strict=True):  # int8 stays near float32 (not equal: that is the trade)
        assert [s["score"] for s in a["scores"]] == pytest.approx([s["score"] for s in b["scores"]], abs=0.05)
    refused = invoke(["classify", "-m", str(out), "--engine", "transformers", "i loved it"])
    assert refused.exit_code == EXIT_USAGE
    assert refused.stderr.startswith("Error: ") and "holds an ONNX graph only" in refused.stderr


def test_a_masked_lm_uses_masked_perplexity_and_fill_mask_runs_it(tiny_mlm: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlm-int8"
    record = _quantize("-m", str(tiny_mlm), "--method", "onnx-int8", "-o", str(out))
    assert record["task"] == "masked-lm" and record["quantized"]["quality_metric"] == "masked-perplexity"
    assert record["kl_divergence"] is not None and record["kl_divergence"] >= 0
    result = invoke(["fill-mask", "-m", str(out), "--json", "paris is the [MASK] of france ."])
    assert result.exit_code == 0, result.stderr
    answer = json_lines(result.stdout)[0]
    assert answer["engine"] == "onnx" and len(answer["masks"][0]) == 5


def test_what_onnx_int8_does_not_quantize(tiny_causal_lm: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    cases = [
        (["-m", str(tiny_causal_lm)], "quantizes encoders"),
        (["-m", str(tiny_classifier), "--skip", "classifier"], "--skip does not apply to --method onnx-int8"),
        (["-m", str(tiny_classifier), "--device", "cuda"], "ONNX Runtime on the CPU"),
        (["-m", str(tiny_classifier), "--dtype", "bfloat16"], "computes in float32"),
    ]
    for i, (args, message) in enumerate(cases):
        result = invoke(["quantize", *args, "--method", "onnx-int8", "-o", str(tmp_path / f"out{i}")])
        assert result.exit_code == EXIT_USAGE, (args, result.stderr)
        assert result.stderr.startswith("Error: ") and message in result.stderr
        assert not (tmp_path / f"out{i}").exists()
