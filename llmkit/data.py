"""The one data layer: inputs and tables, read row by row for every command (inference and training).

- `TABLE_SUFFIXES`: the one suffix -> format map (read here, written by `output.write_table`, used by training).
- `open_rows` / `stream_rows`: the one row reader for CSV/TSV/JSONL/JSON/Parquet/text lines. Text is UTF-8; a
  byte-order mark (Excel's "CSV UTF-8") is dropped; undecodable bytes become U+FFFD and are counted in a
  `Decoding`, whose `note()` is the one sentence that reports them.
- `column_error` / `require_columns`: the one missing-column error (exit 3), naming the columns found.
- `read_inputs` (command inputs: arguments, `-`/stdin, `--input FILE`) and `read_table` (classify's tables) give
  `InputRecord`s; `training.read_table` builds a `datasets.Dataset` from the same rows.

Each input becomes an `InputRecord`: the text to process plus the record's other fields, which every command
copies into its output record so results can be joined back to their inputs (ids, labels, ...).
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from llmkit.errors import DataError, NotFoundError, UsageError

INPUT_FORMATS = ("auto", "text", "jsonl", "csv", "tsv")
DEFAULT_FIELD = "text"

# The one suffix map: every reader and writer of tables asks it (output.write_table writes WRITE_FORMATS).
TABLE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
TABLE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
ROW_FORMATS = ("text", *TABLE_FORMATS)
WRITE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
PARQUET_READ_ROWS = 1024  # rows per Parquet record batch: memory stays flat on big files


@dataclass(frozen=True)
class InputRecord:
    """One input.

    Attributes:
        text: the text to process.
        index: 0-based position in the input stream.
        fields: the input record's other fields (JSONL/CSV inputs), passed through to the output.
        line: 1-based line (or row) number in the source, for error messages.
    """

    text: str
    index: int
    fields: dict[str, Any] = field(default_factory=dict)
    line: int = 0


# --- decoding: UTF-8, BOM dropped, undecodable bytes counted ---------------------------------------------------


@dataclass
class Decoding:
    """What decoding a text source had to repair (filled while it is read)."""

    replaced: int = 0  # undecodable byte sequences turned into U+FFFD
    rows: int = 0  # lines holding at least one of them

    def note(self) -> str | None:
        """The one sentence that reports repairs (None when there were none)."""
        return decoding_note(self.replaced, self.rows)


def decoding_note(replaced: int, rows: int) -> str | None:
    """`replaced N undecodable byte sequence(s) ...`: the same words for every command and for training."""
    if not replaced:
        return None
    return (
        f"replaced {replaced} undecodable byte sequence(s) with U+FFFD "
        f"in {rows} row(s) (the file is not valid UTF-8)"
    )


def decoded_lines(stream: IO[Any], decoding: Decoding) -> Iterator[str]:
    """Lines of a byte stream (or a text stream) as text with their line endings, read one at a time.

    Bytes are decoded line by line as UTF-8 with replacement (a newline byte is never inside a UTF-8 sequence,
    so this equals decoding the whole file); a leading BOM is dropped.
    """
    first = True
    for raw in stream:
        if isinstance(raw, bytes):
            text = raw.decode("utf-8", errors="replace")
            bad = text.count("\ufffd") - raw.count("\ufffd".encode())
            if bad:
                decoding.replaced += bad
                decoding.rows += 1
        else:
            text = raw
        if first:
            text = text.removeprefix("\ufeff")
            first = False
        yield text


def open_text(path: Path) -> TextIO:
    """Open a text file as UTF-8 (BOM dropped); undecodable bytes become U+FFFD instead of a crash.

    Raises:
        NotFoundError: no such file. UsageError: a directory.
    """
    _check_file(path)
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise NotFoundError(f"input file not found: {path}")
    if path.is_dir():
        raise UsageError(f"--input {path} is a directory; give a file")


# --- columns: one error -----------------------------------------------------------------------------------------


def column_error(column: str, present: Iterable[str], where: str = "the data") -> NotFoundError:
    """The one error for a missing column (exit 3): it names the columns found and the flags that pick one."""
    found = ", ".join(str(c) for c in present) or "none"
    return NotFoundError(
        f"no column {column!r} in {where} (columns: {found}); pick the right one with --text-column/--label-column"
    )


def require_columns(present: Iterable[str], wanted: Iterable[str], where: str = "the data") -> None:
    """Raise `column_error` for the first of `wanted` that is not in `present`."""
    present = list(present)
    for column in wanted:
        if column not in present:
            raise column_error(column, present, where)


# --- the one row reader ---------------------------------------------------------------------------------------


@dataclass
class Rows:
    """Rows read lazily: the columns (in file order; for JSON lines those of the first row) and
    (line number, row dict) pairs. `decoding` fills up as the rows are read."""

    columns: list[str]
    rows: Iterator[tuple[int, dict[str, Any]]]
    source: str
    fmt: str
    decoding: Decoding = field(default_factory=Decoding)


def format_for(path: Path | None, requested: str = "auto", *, default: str | None = "text") -> str | None:
    """The format to read `path` as: `requested` unless auto, else by suffix (TABLE_SUFFIXES), else `default`.

    Raises:
        UsageError: an unknown requested format.
    """
    if requested != "auto":
        if requested not in ROW_FORMATS:
            raise UsageError(f"unknown format {requested!r}; use one of {', '.join(ROW_FORMATS)}")
        return requested
    if path is not None:
        return TABLE_SUFFIXES.get(path.suffix.lower(), default)
    return default


def open_rows(path: Path | str, fmt: str = "auto", *, text_column: str = DEFAULT_FIELD) -> Rows:
    """Read a file row by row (text lines become rows `{text_column: line}`).

    Args:
        path: the file.
        fmt: auto (by suffix; an unknown suffix is read as text lines) or one of ROW_FORMATS.
        text_column: the column name text lines get.

    Raises:
        NotFoundError: no such file. DataError: malformed content (named by line).
    """
    path = Path(path)
    _check_file(path)
    name = format_for(path, fmt)
    assert name is not None
    if name == "parquet":
        return _parquet_rows(path)
    return stream_rows(open(path, "rb"), name, str(path), text_column=text_column, close=True)


def stream_rows(
    stream: IO[Any], fmt: str, source: str, *, text_column: str = DEFAULT_FIELD, close: bool = False
) -> Rows:
    """Rows from an open byte (or text) stream, e.g. stdin; read as they arrive except for whole-file JSON.

    Args:
        stream: the stream; bytes are decoded as UTF-8 with counted replacement.
        fmt: one of ROW_FORMATS except parquet.
        source: the name used in error messages.
        text_column: the column name text lines get.
        close: close the stream once the rows are read.
    """
    decoding = Decoding()
    lines = decoded_lines(stream, decoding)
    columns: list[str]
    if fmt == "text":
        columns = [text_column]
        rows: Iterator[tuple[int, dict[str, Any]]] = (
            (n, {text_column: line.rstrip("\r\n")}) for n, line in enumerate(lines, start=1)
        )
    elif fmt in ("csv", "tsv"):
        reader = csv.reader(lines, delimiter="," if fmt == "csv" else "\t")
        header = next(reader, None) or []
        columns = list(header)
        rows = _delimited_rows(reader, columns, source)
    elif fmt == "jsonl":
        objects = _json_objects(lines, source)
        first = next(objects, None)
        columns = list(first[1]) if first else []
        rows = _chain(first, objects)
    elif fmt == "json":
        rows = _json_document("".join(lines), source)
        materialized = list(rows)
        columns = []
        for _, row in materialized:  # union of keys in first-seen order: JSON rows may differ
            columns.extend(k for k in row if k not in columns)
        rows = iter(materialized)
    else:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(ROW_FORMATS)}")
    return Rows(columns, _closing(rows, stream) if close else rows, source, fmt, decoding)


def _chain(first: tuple[int, dict[str, Any]] | None, rest: Iterator[tuple[int, dict[str, Any]]]) -> Iterator[
    tuple[int, dict[str, Any]]
]:
    if first is not None:
        yield first
    yield from rest


def _delimited_rows(reader: Any, columns: list[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for cells in reader:
        if not cells:
            continue  # a blank line
        if len(cells) > len(columns):
            raise DataError(
                f"{source}:{reader.line_num}: {len(cells)} cells but the header has {len(columns)} columns; "
                "quote cells that hold the delimiter"
            )
        row = dict(zip(columns, cells, strict=False))
        for column in columns[len(cells) :]:
            row[column] = ""  # a short row: its missing cells are empty
        yield reader.line_num, row


def _json_objects(lines: Iterable[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank JSON line; a bad line is an error that names it."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{number}: not valid JSON ({exc.msg}); fix or remove the line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{source}:{number}: expected a JSON object, one per line")
        yield number, obj


def _json_document(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
        obj = next(iter(obj.values()))  # {"data": [...]}
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"{source}: expected a JSON list of objects (or use .jsonl)")
    return ((i + 1, row) for i, row in enumerate(obj))


def _parquet_rows(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(str(path))
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    columns = list(parquet.schema_arrow.names)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        number = 1
        for batch in parquet.iter_batches(batch_size=PARQUET_READ_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield number, row

    return Rows(columns, rows(), str(path), "parquet")


def _closing(rows: Iterator[Any], stream: IO[Any]) -> Iterator[Any]:
    try:
        yield from rows
    finally:
        stream.close()


def _report_decoding(decoding: Decoding, source: str) -> None:
    note = decoding.note()
    if note:
        from llmkit.console import warn

        warn(f"{source}: {note}")


# --- command inputs ---------------------------------------------------------------------------------------------


def read_inputs(
    texts: Iterable[str] | None = None,
    *,
    input_file: Path | None = None,
    input_format: str = "auto",
    text_field: str = DEFAULT_FIELD,
    stdin: TextIO | None = None,
) -> Iterator[InputRecord]:
    """The inputs of a command: checked now, read lazily (stdin is read as it arrives).

    Args:
        texts: positional arguments; `["-"]` means stdin.
        input_file: `--input FILE`.
        input_format: auto (a file by its suffix, else one text per line; stdin as `sniff_stdin` finds it), text,
            jsonl, csv or tsv.
        text_field: the field/column holding the text for jsonl/csv/tsv.
        stdin: the stream to read for `-` or when no text is given and stdin is not a terminal.

    Raises:
        UsageError: no input at all, or both text arguments and --input.
    """
    if input_format not in INPUT_FORMATS:
        raise UsageError(f"unknown --input-format {input_format!r}; use one of {', '.join(INPUT_FORMATS)}")
    texts = list(texts or [])
    stdin = stdin if stdin is not None else sys.stdin
    if texts and input_file is not None:
        raise UsageError("give either text arguments or --input FILE, not both")

    use_stdin = texts == ["-"] or (not texts and input_file is None and stdin is not None and not _isatty(stdin))
    if not texts and input_file is None and not use_stdin:
        raise UsageError("no input: give text as an argument, pipe lines on stdin ('-'), or use --input FILE")
    if "-" in texts and texts != ["-"]:
        raise UsageError("'-' (read stdin) cannot be mixed with text arguments")

    if texts and not use_stdin:
        if input_format not in ("auto", "text"):
            raise UsageError(f"--input-format {input_format} applies to --input FILE or stdin, not text arguments")
        return iter([InputRecord(text=text, index=i, line=i + 1) for i, text in enumerate(texts)])

    if use_stdin:
        stream: Any = getattr(stdin, "buffer", None) or stdin
        if input_format == "auto":
            fmt, stream = sniff_stdin(stream, text_field)
        else:
            fmt = input_format
        rows = stream_rows(stream, fmt, "<stdin>", text_column=text_field)
    else:
        assert input_file is not None
        fmt = format_for(input_file, input_format) or "text"
        if fmt not in INPUT_FORMATS:
            fmt = "text"  # .json/.parquet are tables (classify); other commands read such a file as lines
        rows = open_rows(input_file, fmt, text_column=text_field)
    if fmt in ("csv", "tsv"):
        require_columns(rows.columns, [text_field], rows.source)
    return _records(rows, text_field, per_row_check=fmt == "jsonl")


def sniff_stdin(stream: Iterable[Any], text_field: str) -> tuple[str, Iterator[Any]]:
    """The format of stdin under `--input-format auto`, from its first line (which is kept for reading).

    JSON lines when the first line is a JSON object holding the text field; with a `--text-column` other than the
    default, TSV or CSV when the first line is a header naming that column; otherwise one text per line.

    Raises:
        UsageError: a `--text-column` other than the default, and stdin is neither (the column would be ignored).
    """
    lines = iter(stream)
    first = next(lines, None)
    if first is None:
        return "text", iter(())
    rest = itertools.chain([first], lines)
    head = (first.decode("utf-8", errors="replace") if isinstance(first, bytes) else first)
    head = head.removeprefix("\ufeff").strip()
    if head.startswith("{"):
        try:
            obj = json.loads(head)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and text_field in obj:
            return "jsonl", rest
    if text_field == DEFAULT_FIELD:
        return "text", rest
    for fmt, delimiter in (("tsv", "\t"), ("csv", ",")):
        if text_field in next(csv.reader([head], delimiter=delimiter), []):
            return fmt, rest
    raise UsageError(f"--text-column {text_field!r}: stdin is neither JSON lines with that field nor a CSV/TSV "
                     "header naming it; give --input-format jsonl|csv|tsv, or drop --text-column for one text per line")


def _records(rows: Rows, text_field: str, *, per_row_check: bool = False) -> Iterator[InputRecord]:
    for index, (number, row) in enumerate(rows.rows):
        if per_row_check and text_field not in row:
            raise column_error(text_field, row, f"{rows.source}:{number}")
        value = row.pop(text_field, None)
        yield InputRecord(text="" if value is None else str(value), index=index, fields=row, line=number)
    _report_decoding(rows.decoding, rows.source)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive chunks of at most `size` items (lazy: a chunk is yielded as soon as it is full)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- tables (classify --input data.csv|.tsv|.jsonl|.json|.parquet --text-column COL) ---------------------------


@dataclass
class Table:
    """A table read lazily: its columns (in file order) and one `InputRecord` per row.

    `InputRecord.fields` holds every column except the text column, so an output can rebuild the original row.
    """

    columns: list[str]
    records: Iterator[InputRecord]
    source: str


def table_format(path: Path, table_format: str = "auto") -> str | None:
    """The table format of `path` (`table_format` wins unless auto), or None for a plain text file."""
    if table_format != "auto":
        if table_format not in TABLE_FORMATS:
            raise UsageError(f"unknown table format {table_format!r}; use one of {', '.join(TABLE_FORMATS)}")
        return table_format
    return TABLE_SUFFIXES.get(path.suffix.lower())


def read_table(
    path: Path,
    text_column: str = DEFAULT_FIELD,
    *,
    table_format_name: str = "auto",
    required: Iterable[str] = (),
) -> Table:
    """Read a CSV/TSV/JSONL/JSON/Parquet table row by row.

    Args:
        path: the file.
        text_column: the column with the text.
        table_format_name: auto (by suffix), csv, tsv, jsonl, json or parquet.
        required: other columns that must exist (e.g. a label or pair column).

    Raises:
        NotFoundError: no such file or column.
        UsageError: not a table format.
    """
    fmt = table_format(path, table_format_name)
    if fmt is None:
        raise UsageError(f"{path}: not a table; use a .csv, .tsv, .jsonl, .json or .parquet file (or --input-format)")
    rows = open_rows(path, fmt, text_column=text_column)
    require_columns(rows.columns, [text_column, *required], rows.source)

    def records() -> Iterator[InputRecord]:
        for index, (number, row) in enumerate(rows.rows):
            value = row.get(text_column)
            fields = {k: v for k, v in row.items() if k != text_column}
            yield InputRecord(text="" if value is None else str(value), index=index, fields=fields, line=number)
        _report_decoding(rows.decoding, rows.source)

    return Table(columns=rows.columns, records=records(), source=rows.source)
