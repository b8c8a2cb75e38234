"""Inputs: text arguments, `-`/piped stdin, or `--input FILE`, as lines, JSON lines or CSV/TSV rows.

Each input becomes an `InputRecord`: the text to process plus the record's other fields, which every command
copies into its output record so results can be joined back to their inputs (ids, labels, ...).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from llmkit.errors import DataError, NotFoundError, UsageError

INPUT_FORMATS = ("auto", "text", "jsonl", "csv", "tsv")
DEFAULT_FIELD = "text"


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


def _format_for(path: Path | None, input_format: str) -> str:
    if input_format != "auto":
        return input_format
    if path is not None:
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            return "jsonl"
        if suffix == ".csv":
            return "csv"
        if suffix == ".tsv":
            return "tsv"
    return "text"


def open_text(path: Path) -> TextIO:
    """Open a text file as UTF-8; undecodable bytes become U+FFFD instead of a crash."""
    if not path.exists():
        raise NotFoundError(f"input file not found: {path}")
    if path.is_dir():
        raise UsageError(f"--input {path} is a directory; give a file")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _stdin_text(stdin: TextIO) -> TextIO:
    buffer = getattr(stdin, "buffer", None)
    if buffer is not None:
        return io.TextIOWrapper(buffer, encoding="utf-8", errors="replace", newline="")
    return stdin


def _lines(stream: TextIO) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(stream, start=1):
        yield number, raw.rstrip("\r\n")


def _json_objects(stream: TextIO, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank JSON line; a bad line is an error that names it."""
    for number, raw in _lines(stream):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{number}: not valid JSON ({exc.msg}); fix the line or use --input-format text") from None
        if not isinstance(obj, dict):
            raise DataError(f"{source}:{number}: expected a JSON object, one per line")
        yield number, obj


def _jsonl(stream: TextIO, text_field: str, source: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    for number, obj in _json_objects(stream, source):
        if text_field not in obj:
            present = ", ".join(sorted(obj)) or "none"
            raise DataError(f"{source}:{number}: no field {text_field!r} (fields: {present}); pick one with --field")
        value = obj.pop(text_field)
        yield number, "" if value is None else str(value), obj


def _delimited(stream: TextIO, text_field: str, delimiter: str, source: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    reader = csv.DictReader(stream, delimiter=delimiter)
    columns = reader.fieldnames or []
    if text_field not in columns:
        raise DataError(f"{source}: no column {text_field!r} (columns: {', '.join(columns) or 'none'}); pick one with --field")
    for number, row in enumerate(reader, start=2):
        value = row.pop(text_field)
        yield number, value or "", {k: v for k, v in row.items() if k is not None}


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
        input_format: auto (by file suffix, else one text per line), text, jsonl, csv or tsv.
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
        stream, source, fmt = _stdin_text(stdin), "<stdin>", _format_for(None, input_format)
    else:
        assert input_file is not None
        stream, source, fmt = open_text(input_file), str(input_file), _format_for(input_file, input_format)
    return _records(stream, source, fmt, text_field, close=not use_stdin)


def _records(stream: TextIO, source: str, fmt: str, text_field: str, *, close: bool) -> Iterator[InputRecord]:
    try:
        if fmt == "text":
            rows: Iterator[tuple[int, str, dict[str, Any]]] = ((n, t, {}) for n, t in _lines(stream))
        elif fmt == "jsonl":
            rows = _jsonl(stream, text_field, source)
        else:
            rows = _delimited(stream, text_field, "," if fmt == "csv" else "\t", source)
        for index, (number, text, fields) in enumerate(rows):
            yield InputRecord(text=text, index=index, fields=fields, line=number)
    finally:
        if close:
            stream.close()


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


# --- tables (classify --input data.csv|.tsv|.jsonl|.parquet --text-column COL) -------------------------------------

TABLE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
_TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PARQUET_READ_ROWS = 1024  # rows per Parquet record batch: memory stays flat on big files


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
    return _TABLE_SUFFIXES.get(path.suffix.lower())


def read_table(
    path: Path,
    text_column: str = DEFAULT_FIELD,
    *,
    table_format_name: str = "auto",
    required: Iterable[str] = (),
) -> Table:
    """Read a CSV/TSV/JSONL/Parquet table row by row.

    Args:
        path: the file.
        text_column: the column with the text.
        table_format_name: auto (by suffix), csv, tsv, jsonl or parquet.
        required: other columns that must exist (e.g. a label or pair column).

    Raises:
        NotFoundError: no such file or column.
        UsageError: not a table format.
    """
    fmt = table_format(path, table_format_name)
    if fmt is None:
        raise UsageError(f"{path}: not a table; use a .csv, .tsv, .jsonl or .parquet file (or --input-format)")
    if not path.exists():
        raise NotFoundError(f"input file not found: {path}")
    source = str(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(str(path))
        columns = list(parquet.schema_arrow.names)

        def parquet_rows() -> Iterator[dict[str, Any]]:
            for batch in parquet.iter_batches(batch_size=PARQUET_READ_ROWS):
                yield from batch.to_pylist()

        rows: Iterator[dict[str, Any]] = parquet_rows()
    elif fmt == "jsonl":
        stream = open_text(path)
        first = ""
        for raw in stream:
            if raw.strip():
                first = raw
                break
        stream.seek(0)
        try:
            columns = list(json.loads(first)) if first else []
        except (json.JSONDecodeError, TypeError):
            raise DataError(f"{source}: the first line is not a JSON object") from None
        rows = _jsonl_rows(stream, source)
    else:
        stream = open_text(path)
        reader = csv.DictReader(stream, delimiter="," if fmt == "csv" else "\t")
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        rows = _closing(reader, stream)
    for column in [text_column, *required]:
        if column not in columns:
            raise NotFoundError(f"{source}: no column {column!r} (columns: {', '.join(columns) or 'none'})")

    def records() -> Iterator[InputRecord]:
        for index, row in enumerate(rows):
            value = row.get(text_column)
            fields = {k: v for k, v in row.items() if k != text_column and k is not None}
            yield InputRecord(text="" if value is None else str(value), index=index, fields=fields, line=index + 2)

    return Table(columns=columns, records=records(), source=source)


def _jsonl_rows(stream: TextIO, source: str) -> Iterator[dict[str, Any]]:
    try:
        for _, obj in _json_objects(stream, source):
            yield obj
    finally:
        stream.close()


def _closing(rows: Iterable[dict[str, Any]], stream: TextIO) -> Iterator[dict[str, Any]]:
    try:
        yield from rows
    finally:
        stream.close()
