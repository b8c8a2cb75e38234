from __future__ import annotations

import io
from pathlib import Path

import pytest

from llmkit.data import batched, read_inputs
from llmkit.errors import DataError, NotFoundError, UsageError


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_arguments_become_records() -> None:
    records = list(read_inputs(["a b", "c"], stdin=_Tty()))
    assert [(r.text, r.index, r.fields) for r in records] == [("a b", 0, {}), ("c", 1, {})]


def test_piped_stdin_is_read_when_no_argument() -> None:
    records = list(read_inputs([], stdin=io.StringIO("one\ntwo\r\n\nthree")))
    assert [r.text for r in records] == ["one", "two", "", "three"]
    assert [r.line for r in records] == [1, 2, 3, 4]


def test_dash_reads_stdin() -> None:
    assert [r.text for r in read_inputs(["-"], stdin=io.StringIO("x\n"))] == ["x"]


def test_no_input_on_a_terminal_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no input"):
        read_inputs([], stdin=_Tty())


def test_dash_mixed_with_text_is_refused() -> None:
    with pytest.raises(UsageError, match="cannot be mixed"):
        read_inputs(["-", "x"], stdin=_Tty())


def test_jsonl_keeps_other_fields() -> None:
    stream = io.StringIO('{"id": 7, "text": "hello", "lang": "en"}\n\n{"id": 8, "text": "bye"}\n')
    records = list(read_inputs(["-"], input_format="jsonl", stdin=stream))
    assert [(r.text, r.fields) for r in records] == [("hello", {"id": 7, "lang": "en"}), ("bye", {"id": 8})]


def test_jsonl_custom_field_and_missing_field() -> None:
    stream = io.StringIO('{"prompt": "p1", "id": 1}\n')
    assert [r.text for r in read_inputs(["-"], input_format="jsonl", text_field="prompt", stdin=stream)] == ["p1"]
    with pytest.raises(DataError, match="no field 'text'.*--field"):
        list(read_inputs(["-"], input_format="jsonl", stdin=io.StringIO('{"prompt": "p"}\n')))


def test_jsonl_bad_line_names_the_line() -> None:
    with pytest.raises(DataError, match="<stdin>:2: not valid JSON"):
        list(read_inputs(["-"], input_format="jsonl", stdin=io.StringIO('{"text": "a"}\n{oops\n')))


def test_csv_and_tsv_files_by_suffix(tmp_path: Path) -> None:
    csv_file = tmp_path / "in.csv"
    csv_file.write_text('id,text\n1,"hello, world"\n2,bye\n', encoding="utf-8")
    records = list(read_inputs(None, input_file=csv_file, stdin=_Tty()))
    assert [(r.text, r.fields) for r in records] == [("hello, world", {"id": "1"}), ("bye", {"id": "2"})]
    tsv_file = tmp_path / "in.tsv"
    tsv_file.write_text("text\tlabel\nhi\tpos\n", encoding="utf-8")
    assert [(r.text, r.fields) for r in read_inputs(None, input_file=tsv_file, stdin=_Tty())] == [("hi", {"label": "pos"})]


def test_missing_column_lists_columns(tmp_path: Path) -> None:
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("id,body\n1,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="columns: id, body"):
        list(read_inputs(None, input_file=csv_file, stdin=_Tty()))


def test_missing_file_and_bad_bytes(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        read_inputs(None, input_file=tmp_path / "nope.txt", stdin=_Tty())
    raw = tmp_path / "latin1.txt"
    raw.write_bytes(b"caf\xe9\n")
    assert [r.text for r in read_inputs(None, input_file=raw, stdin=_Tty())] == ["caf\ufffd"]


def test_batched_is_lazy_and_complete() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
