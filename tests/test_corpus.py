"""llmkit.corpus: reading text files, folders and tables, packing blocks, the held-out split (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.corpus import Packing, pack_blocks, read_corpus, split_blocks
from llmkit.errors import DataError, NotFoundError, UsageError

# --- reading ----------------------------------------------------------------------------------------------------


def test_a_text_file_is_one_text_per_non_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\n\n   \nsecond line  \r\nthird\n")
    corpus = read_corpus(path)
    assert corpus.texts == ["first line", "second line", "third"]
    assert (corpus.files, corpus.tables, corpus.skipped_empty) == (1, 0, 2)
    assert corpus.characters == len("first line") + len("second line") + len("third")


def test_undecodable_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"caf\xe9 au lait\nplain\n")
    corpus = read_corpus(path)
    assert corpus.texts == ["caf\ufffd au lait", "plain"]
    assert corpus.replaced_bytes == 1 and corpus.rows_with_replacements == 1
    assert corpus.notes() == ["replaced 1 undecodable byte sequence(s) with U+FFFD in 1 row(s) (the file is not valid UTF-8)"]


def test_a_folder_is_read_recursively_in_path_order_without_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two\n")
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / ".hidden.txt").write_text("secret\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("git\n")
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "three", "id": 1}) + "\n")
    corpus = read_corpus(tmp_path)
    assert corpus.texts == ["one", "two", "three"]
    assert (corpus.files, corpus.tables) == (3, 1)


def test_several_sources_keep_their_order(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x\n")
    (tmp_path / "y.txt").write_text("y\n")
    assert read_corpus([tmp_path / "y.txt", tmp_path / "x.txt"]).texts == ["y", "x"]


def test_a_table_uses_its_text_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('body,label\n"Hello, world",a\n,b\nsecond,c\n')
    corpus = read_corpus(path, text_column="body")
    assert corpus.texts == ["Hello, world", "second"] and corpus.skipped_empty == 1
    with pytest.raises(NotFoundError, match="no column 'text'.*columns: body, label"):
        read_corpus(path)


def test_a_text_column_without_any_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("words\n")
    with pytest.raises(UsageError, match="--text-column 'body' names a table column"):
        read_corpus(path, text_column="body")


def test_empty_and_missing_corpora(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="no text to pre-train on"):
        read_corpus(empty)
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="no files to pre-train on"):
        read_corpus(tmp_path / "folder")
    with pytest.raises(NotFoundError, match="corpus not found"):
        read_corpus(tmp_path / "nope.txt")


# --- packing ----------------------------------------------------------------------------------------------------


def test_causal_packing_puts_a_separator_after_each_text_and_drops_the_tail() -> None:
    packed = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], Packing(4, separator=0))
    # stream: 1 2 3 0 4 5 0 6 7 8 9 0 -> three full blocks, nothing left
    assert packed.blocks == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert (packed.tokens, packed.dropped, packed.block_tokens) == (12, 0, 12)
    packed = pack_blocks([[1, 2, 3], [4, 5]], Packing(4, separator=0))
    assert packed.blocks == [[1, 2, 3, 0]] and packed.dropped == 3


def test_bert_packing_wraps_each_block_in_cls_and_sep() -> None:
    packed = pack_blocks([[10, 11], [12, 13, 14]], Packing(5, separator=3, prefix=(2,), suffix=(3,)))
    # body of 3: 10 11 3 | 12 13 14 | 3 (dropped)
    assert packed.blocks == [[2, 10, 11, 3, 3], [2, 12, 13, 14, 3]]
    assert packed.dropped == 1 and all(len(b) == 5 for b in packed.blocks)


def test_too_little_text_makes_no_block_and_a_block_must_hold_text() -> None:
    assert pack_blocks([[1, 2]], Packing(8, separator=0)).blocks == []
    with pytest.raises(UsageError, match="leaves no room for text"):
        pack_blocks([[1]], Packing(2, prefix=(2,), suffix=(3,)))


# --- the split --------------------------------------------------------------------------------------------------


def test_split_is_seeded_random_and_holds_out_at_least_one() -> None:
    train, val = split_blocks(100, 0.1, seed=1)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert split_blocks(100, 0.1, seed=1) == (train, val)
    assert split_blocks(100, 0.1, seed=2)[1] != val
    assert val != list(range(90, 100))  # not simply the tail
    assert len(split_blocks(5, 0.01, seed=0)[1]) == 1
    assert split_blocks(3, 0.0, seed=0) == ([0, 1, 2], [])


def test_split_needs_two_blocks_and_a_sane_fraction() -> None:
    with pytest.raises(DataError, match="too few to hold one out"):
        split_blocks(1, 0.1, seed=0)
    with pytest.raises(UsageError, match="--validation-split must be in"):
        split_blocks(10, 1.0, seed=0)
