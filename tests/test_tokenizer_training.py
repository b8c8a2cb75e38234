"""llmkit.tokenizer_training: trained tokenizers reload through AutoTokenizer exactly, with the right specials."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from llmkit.errors import UsageError
from llmkit.tokenizer_training import check_reused, minimum_vocab_size, train_tokenizer

SENTIMENT = Path(__file__).parent / "data" / "sentiment.csv"
PROBES = [
    "The film was wonderful, really!",
    "UNSEEN words: Zürich café naïve 12345 ω",
    "  leading spaces and a\ttab",
    "a [MASK] token and <|endoftext|> inside",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with SENTIMENT.open(encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def _reloaded(tokenizer, folder: Path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def test_wordpiece_reloads_as_the_same_bert_tokenizer(texts: list[str], tmp_path: Path) -> None:
    tok = train_tokenizer(texts, "mlm", 300, max_length=64)
    again = _reloaded(tok, tmp_path)
    assert type(again).__name__ == "BertTokenizer"
    assert again.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (again.pad_token_id, again.unk_token_id, again.cls_token_id, again.sep_token_id, again.mask_token_id) == (
        0, 1, 2, 3, 4,
    )  # fmt: skip
    assert again.model_max_length == 64 and again.padding_side == "right"
    for text in [*texts[:20], *PROBES]:
        assert again(text)["input_ids"] == tok(text)["input_ids"], text
    ids = again("the film was fun")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3  # the post-processor adds [CLS] ... [SEP]
    assert again.decode(ids, skip_special_tokens=True) == "the film was fun"
    assert "[MASK]" in again.tokenize("a [MASK] here")  # the mask token is matched whole
    batch = again(["short", "a much longer sentence here"], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0


def test_byte_level_bpe_reloads_as_the_same_gpt2_tokenizer(texts: list[str], tmp_path: Path) -> None:
    tok = train_tokenizer(texts, "clm", 400, max_length=32)
    again = _reloaded(tok, tmp_path)
    assert type(again).__name__ == "GPT2Tokenizer"
    assert len(again) == 400
    assert (again.eos_token, again.bos_token, again.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert (again.eos_token_id, again.pad_token_id) == (0, 1) and again.model_max_length == 32
    for text in [*texts[:20], *PROBES]:
        ids = again(text)["input_ids"]
        assert ids == tok(text)["input_ids"], text
        assert again.decode(ids) == text  # bytes: nothing is unknown, decoding gives the text back
    assert again("hello")["input_ids"][-1] != again.eos_token_id  # no special tokens added to the text
    assert again("<|endoftext|>")["input_ids"] == [0]


def test_byte_level_bpe_training_is_repeatable(texts: list[str]) -> None:
    first = train_tokenizer(texts, "clm", 400, max_length=64).get_vocab()
    assert train_tokenizer(texts, "clm", 400, max_length=64).get_vocab() == first


def test_vocab_size_caps_the_vocabulary(texts: list[str]) -> None:
    assert len(train_tokenizer(texts, "mlm", 150, max_length=64)) == 150
    assert len(train_tokenizer(texts, "clm", 300, max_length=64)) == 300


def test_a_vocabulary_below_the_alphabet_is_refused(texts: list[str]) -> None:
    assert minimum_vocab_size("clm") == 258 and minimum_vocab_size("mlm") is None
    with pytest.raises(UsageError, match=r"--vocab-size 100 is below the tokenizer's alphabet \(258 tokens: 256 bytes"):
        train_tokenizer(texts, "clm", 100, max_length=64)
    with pytest.raises(UsageError, match=r"--vocab-size 20 is below the tokenizer's alphabet \(\d+ tokens: the corpus"):
        train_tokenizer(texts, "mlm", 20, max_length=64)


def test_a_reused_tokenizer_must_serve_the_objective(tiny_causal_lm: Path, tiny_mlm: Path) -> None:
    from transformers import AutoTokenizer

    lm, bert = AutoTokenizer.from_pretrained(str(tiny_causal_lm)), AutoTokenizer.from_pretrained(str(tiny_mlm))
    check_reused(lm, "clm")
    check_reused(bert, "mlm")
    with pytest.raises(UsageError, match="no mask token"):
        check_reused(lm, "mlm")
    bert.sep_token = None
    with pytest.raises(UsageError, match="no end-of-text"):
        check_reused(bert, "clm")
