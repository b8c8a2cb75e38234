from __future__ import annotations

import io
from pathlib import Path

import pytest

from llmkit import data
from llmkit.data import batched, read_inputs, read_table
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
    with pytest.raises(NotFoundError, match=r"<stdin>:1 \(columns: prompt\); pick the right one with --text-column"):
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
    with pytest.raises(NotFoundError, match=r"no column 'text' in .*in.csv \(columns: id, body\); pick the right one"):
        read_inputs(None, input_file=csv_file, stdin=_Tty())  # checked before the first row is asked for


def test_missing_file_and_bad_bytes(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        read_inputs(None, input_file=tmp_path / "nope.txt", stdin=_Tty())
    raw = tmp_path / "latin1.txt"
    raw.write_bytes(b"caf\xe9\n")
    assert [r.text for r in read_inputs(None, input_file=raw, stdin=_Tty())] == ["caf\ufffd"]


def test_batched_is_lazy_and_complete() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


class _Breaks:
    """A piped stdin that gives `lines` and then fails: reading past them shows up as an error."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self) -> _Breaks:
        return self

    def __iter__(self):  # noqa: ANN204
        yield from self.lines
        raise RuntimeError("read past the first record")


@pytest.mark.parametrize(
    ("fmt", "lines", "first"),
    [
        ("auto", [b"one\n"], "one"),
        ("jsonl", [b'{"text": "one", "id": 1}\n'], "one"),
        ("csv", [b"id,text\n", b"1,one\n"], "one"),
        ("tsv", [b"text\n", b"one\n"], "one"),
    ],
)
def test_reading_is_lazy_the_first_record_comes_before_the_rest_is_read(fmt: str, lines: list[bytes], first: str) -> None:
    records = read_inputs(["-"], input_format=fmt, stdin=_Breaks(lines))  # type: ignore[arg-type]
    assert next(records).text == first
    with pytest.raises(RuntimeError, match="read past the first record"):
        next(records)


def test_utf8_bom_is_dropped_in_every_reader(tmp_path: Path) -> None:
    csv_file = tmp_path / "excel.csv"
    csv_file.write_bytes("text,label\nhi,pos\n".encode("utf-8-sig"))
    assert [(r.text, r.fields) for r in read_inputs(None, input_file=csv_file, stdin=_Tty())] == [("hi", {"label": "pos"})]
    table = read_table(csv_file)
    assert table.columns == ["text", "label"] and [r.text for r in table.records] == ["hi"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes('{"text": "x"}\n'.encode("utf-8-sig"))
    assert [r.text for r in read_table(jsonl).records] == ["x"]
    stdin = _Breaks(["text\n".encode("utf-8-sig"), b"y\n"])
    assert next(read_inputs(["-"], input_format="csv", stdin=stdin)).text == "y"  # type: ignore[arg-type]


def test_undecodable_bytes_are_counted_and_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,a\nok,b\nna\xefve \xe9t\xe9,a\n".encode("latin-1"))
    rows = data.open_rows(path)
    assert [row["text"] for _, row in rows.rows] == ["caf\ufffd", "ok", "na\ufffdve \ufffdt\ufffd"]
    assert (rows.decoding.replaced, rows.decoding.rows) == (4, 2)
    list(read_table(path).records)
    err = " ".join(capsys.readouterr().err.split())
    assert "replaced 4 undecodable byte sequence(s) with U+FFFD in 2 row(s)" in err


def test_one_suffix_map_and_every_row_format(tmp_path: Path) -> None:
    import json

    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "a.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "a.tab").write_text("text\tlabel\ngood\tpos\nbad\tneg\n")
    (tmp_path / "a.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps({"data": rows}))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "a.pq"))
    for name in ("a.csv", "a.tab", "a.ndjson", "a.json", "a.pq"):
        read = data.open_rows(tmp_path / name)
        assert read.columns == ["text", "label"], name
        assert [row for _, row in read.rows] == rows, name
    from llmkit import output, training

    assert output.TABLE_SUFFIXES is data.TABLE_SUFFIXES and training.TABLE_SUFFIXES is data.TABLE_SUFFIXES


def test_csv_row_with_more_cells_than_the_header_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("text,label\na,b,c\n")
    with pytest.raises(DataError, match="bad.csv:2: 3 cells but the header has 2 columns"):
        list(read_table(path).records)


# --- stdin under --input-format auto: its first line says what it is ---------------------------------------------


def test_stdin_json_lines_holding_the_text_column_are_read_as_records() -> None:
    stream = io.StringIO('{"prompt": "p1", "id": 7}\n{"prompt": "p2", "id": 8}\n')
    records = list(read_inputs(["-"], text_field="prompt", stdin=stream))
    assert [(r.text, r.fields) for r in records] == [("p1", {"id": 7}), ("p2", {"id": 8})]


def test_stdin_json_lines_under_the_default_text_column_are_records() -> None:
    records = list(read_inputs([], stdin=io.BytesIO(b'\xef\xbb\xbf{"text": "a", "k": 1}\n')))  # type: ignore[arg-type]
    assert [(r.text, r.fields) for r in records] == [("a", {"k": 1})]


def test_stdin_json_without_the_text_column_stays_one_text_per_line() -> None:
    line = '{"role": "user"} is the shape I need'
    records = list(read_inputs([], stdin=io.StringIO(f"{line}\n" + '{"a": 1}\n')))
    assert [r.text for r in records] == [line, '{"a": 1}']


@pytest.mark.parametrize(("text", "fields"), [
    ("id\tprompt\n1\thello\n", {"id": "1"}),
    ("id,prompt\n1,hello\n", {"id": "1"}),
])
def test_stdin_with_a_header_naming_the_text_column_is_a_table(text: str, fields: dict[str, str]) -> None:
    records = list(read_inputs(["-"], text_field="prompt", stdin=io.StringIO(text)))
    assert [(r.text, r.fields) for r in records] == [("hello", fields)]


def test_a_text_column_that_stdin_does_not_have_is_an_error_not_ignored() -> None:
    with pytest.raises(UsageError, match="--text-column 'prompt': stdin is neither JSON lines with that field"):
        read_inputs(["-"], text_field="prompt", stdin=io.StringIO("just a line\n"))


def test_plain_stdin_lines_under_the_default_column_are_texts() -> None:
    assert [r.text for r in read_inputs(["-"], stdin=io.StringIO("a,b\nc\n"))] == ["a,b", "c"]
