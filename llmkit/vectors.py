"""Embedding files: written as they come (bounded memory), read back in chunks, and recovered after a kill.

Formats, by the output's suffix:

- `.jsonl`: one record per input, the `embedding` field a list of floats (null for an empty input);
- `.npy`: a float32 [rows, dimension] array (NaN rows for empty inputs) and, beside it, `NAME.ids.jsonl` with
  the rest of each record (ids and other input fields, text, model, ...), row for row;
- `.parquet`: one row per input, `embedding` a list<float32> column; written one row group at a time.

Every file is written under a temporary name that carries the writer's process id (tempnames.py) and renamed
into place at the end, so an output is never half-written. A run killed part-way leaves its temporary behind;
`--resume` reads the complete rows of that temporary (or of the finished output, whichever is newer) and goes on
from there. Parquet temporaries have no footer until they are closed and cannot be read back: a killed Parquet
run starts again.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from llmkit import tempnames
from llmkit.errors import DataError, UsageError

EMBEDDING = "embedding"  # the field / column that holds the vector
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".npy": "npy", ".parquet": "parquet", ".pq": "parquet"}
SIDECAR_SUFFIX = ".ids.jsonl"  # vectors.npy -> vectors.ids.jsonl
NPY_HEADER_BYTES = 128  # a fixed-size .npy header, so the row count can be written last
PARQUET_GROUP_ROWS = 1024  # rows per Parquet row group: what the writer holds at a time
READ_CHUNK_ROWS = 1024


def output_format(path: Path) -> str:
    """The embedding format of `path` by its suffix.

    Raises:
        UsageError: another suffix.
    """
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"--output {path}: use a .jsonl, .npy or .parquet file name")
    return fmt


def sidecar(path: Path) -> Path:
    """The rows file beside a `.npy` of vectors."""
    path = Path(path)
    return path.with_name(path.name[: -len(path.suffix)] + SIDECAR_SUFFIX)


def _journal() -> Path:
    return tempnames.journal_dir()


# --- .npy with a header written last ---------------------------------------------------------------------------


def npy_header(rows: int, dimension: int, dtype: str = "<f4") -> bytes:
    """A .npy version 1.0 header of exactly NPY_HEADER_BYTES bytes for a C-order [rows, dimension] array."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': ({rows}, {dimension}), }}"
    body = NPY_HEADER_BYTES - 10
    if len(text) + 1 > body:
        raise DataError(f"{rows} x {dimension} does not fit a {NPY_HEADER_BYTES}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body) + (text.ljust(body - 1) + "\n").encode("latin-1")


def _npy_dimension(path: Path) -> int | None:
    """The dimension written in one of our .npy headers (temporaries hold 0 rows there until they are done)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(NPY_HEADER_BYTES)
    except OSError:
        return None
    if len(head) < NPY_HEADER_BYTES or not head.startswith(b"\x93NUMPY"):
        return None
    import ast

    try:
        header = ast.literal_eval(head[10:].decode("latin-1").strip())
        return int(header["shape"][1])
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
        return None


# --- writing -----------------------------------------------------------------------------------------------------


class VectorWriter:
    """Writes embedding records to `path` under temporary names; renamed into place when the block ends cleanly.

    Use as a context manager: `write()` each record as it comes. On an error the temporaries are deleted; on
    Ctrl-C (KeyboardInterrupt) they are kept, so that `--resume` can go on from them.

    Args:
        path: the output (.jsonl, .npy or .parquet).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fmt = output_format(self.path)
        self.count = 0
        self.dimension: int | None = None
        self.interrupted = False
        self._tmp: Path | None = None
        self._rows_tmp: Path | None = None
        self._handle: IO[Any] | None = None
        self._rows: IO[Any] | None = None
        self._parquet: Any = None
        self._schema: Any = None
        self._buffer: list[dict[str, Any]] = []

    def __enter__(self) -> VectorWriter:
        journal = _journal()
        self._tmp = tempnames.temp_file(self.path, self.path.suffix, journal=journal)
        if self.fmt == "npy":
            self._rows_tmp = tempnames.temp_file(sidecar(self.path), ".jsonl", journal=journal)
            self._handle = open(self._tmp, "wb")
            self._rows = open(self._rows_tmp, "w", encoding="utf-8")
        elif self.fmt == "jsonl":
            self._handle = open(self._tmp, "w", encoding="utf-8")
        return self

    def write(self, row: dict[str, Any], vector: Any, dimension: int) -> None:
        """One record: its fields (everything but the vector) and the vector (None for an empty input)."""
        if self.dimension is None:
            self.dimension = dimension
            if self.fmt == "npy":
                assert self._handle is not None
                self._handle.write(npy_header(0, dimension))
        elif dimension != self.dimension:
            raise DataError(f"--output {self.path}: a {dimension}-dimensional vector after {self.dimension}-dimensional "
                            "ones; one file holds one model's vectors")
        if self.fmt == "npy":
            assert self._handle is not None and self._rows is not None
            array = np.full(dimension, np.nan, np.float32) if vector is None else np.asarray(vector, np.float32)
            self._handle.write(array.tobytes())
            self._rows.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
        elif self.fmt == "jsonl":
            assert self._handle is not None
            from llmkit.output import json_line

            record = _plain(row)
            record[EMBEDDING] = None if vector is None else np.asarray(vector, np.float32)
            self._handle.write(json_line(record) + "\n")
        else:
            record = dict(row)
            record[EMBEDDING] = None if vector is None else np.asarray(vector, np.float32)
            self._buffer.append(record)
            if len(self._buffer) >= PARQUET_GROUP_ROWS:
                self._flush_parquet()
        self.count += 1

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        rows = [{k: v for k, v in r.items() if k != EMBEDDING} for r in self._buffer]
        vectors = [r[EMBEDDING] for r in self._buffer]
        if self._schema is None:
            inferred = pa.Table.from_pylist([_plain(r) for r in rows]).schema
            fields = [pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in inferred]
            self._schema = pa.schema([*fields, pa.field(EMBEDDING, pa.list_(pa.float32()))])
        columns = {name: [r.get(name) for r in rows] for name in self._schema.names if name != EMBEDDING}
        try:
            arrays = [pa.array([_plain(v) for v in columns[f.name]], type=f.type) for f in self._schema
                      if f.name != EMBEDDING]
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"--output {self.path}: a column changes type part-way ({exc}); write .jsonl "
                            "instead") from None
        arrays.append(pa.array([None if v is None else v for v in vectors], type=pa.list_(pa.float32())))
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        if self._parquet is None:
            assert self._tmp is not None
            self._parquet = pq.ParquetWriter(str(self._tmp), self._schema)
        self._parquet.write_table(table)
        self._buffer = []

    def _close(self) -> None:
        for handle in (self._handle, self._rows):
            if handle is not None:
                handle.close()
        self._handle = self._rows = None
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None

    def _finish(self) -> None:
        from llmkit.fsutil import make_public

        assert self._tmp is not None
        if self.fmt == "parquet":
            self._flush_parquet()
            if self._parquet is None:  # no rows at all: still a valid, empty file
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({EMBEDDING: pa.array([], type=pa.list_(pa.float32()))}), str(self._tmp))
        self._close()
        if self.fmt == "npy":
            with open(self._tmp, "r+b") as handle:
                handle.write(npy_header(self.count, self.dimension or 0))
            assert self._rows_tmp is not None
            make_public(self._rows_tmp)
            os.replace(self._rows_tmp, sidecar(self.path))
        make_public(self._tmp)
        os.replace(self._tmp, self.path)
        self._forget()

    def _forget(self) -> None:
        journal = _journal()
        for tmp in (self._tmp, self._rows_tmp):
            if tmp is not None:
                tempnames.forget(tmp, journal)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self._finish()
            return
        self._close()
        if isinstance(exc, KeyboardInterrupt) and self.count:
            from llmkit.console import warn

            self.interrupted = True  # kept for --resume; `llmkit models --clean` removes it otherwise
            warn(f"{self.count} embeddings are kept in {self._tmp}; run again with --resume to go on from them")
            return
        for tmp in (self._tmp, self._rows_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self._forget()


def _plain(value: Any) -> Any:
    from llmkit.output import to_record

    return to_record(value) if isinstance(value, dict) else value


# --- reading -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """An embedding file (or a killed run's temporary) to read back.

    Attributes:
        path: the vectors (.npy, .jsonl, .parquet).
        fmt: "npy", "jsonl" or "parquet".
        dimension: the vectors' length (None when the file holds no vector).
        count: how many complete rows to read (None: all).
        rows_path: the .npy's rows file.
    """

    path: Path
    fmt: str
    dimension: int | None
    count: int | None = None
    rows_path: Path | None = None

    def chunks(self, size: int = READ_CHUNK_ROWS) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        """(float32 [k, dimension] with NaN rows for missing vectors, the k rows' other fields), in file order."""
        if self.fmt == "npy":
            yield from self._npy_chunks(size)
        elif self.fmt == "jsonl":
            yield from self._jsonl_chunks(size)
        else:
            yield from self._parquet_chunks(size)

    def _npy_chunks(self, size: int) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        if self.count is not None:  # a temporary: the header does not hold the row count yet
            dim = self.dimension or 0
            vectors = np.memmap(self.path, dtype="<f4", mode="r", offset=NPY_HEADER_BYTES, shape=(self.count, dim))
        else:
            vectors = np.load(self.path, mmap_mode="r")
        rows = _jsonl_rows(self.rows_path) if self.rows_path is not None and self.rows_path.exists() else None
        total = len(vectors)
        for start in range(0, total, size):
            block = np.asarray(vectors[start : start + size], dtype=np.float32)
            fields = [next(rows) if rows is not None else {"index": start + i} for i in range(len(block))]
            yield block, fields

    def _jsonl_chunks(self, size: int) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        dim = self.dimension or 0
        fields: list[dict[str, Any]] = []
        block: list[Any] = []
        for n, row in enumerate(_jsonl_rows(self.path)):
            if self.count is not None and n >= self.count:
                break
            vector = row.pop(EMBEDDING, None)
            block.append(np.full(dim, np.nan, np.float32) if vector is None else np.asarray(vector, np.float32))
            fields.append(row)
            if len(block) >= size:
                yield _stack(block, dim, self.path), fields
                block, fields = [], []
        if block:
            yield _stack(block, dim, self.path), fields

    def _parquet_chunks(self, size: int) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        import pyarrow.parquet as pq

        dim = self.dimension or 0
        parquet = pq.ParquetFile(str(self.path))
        for batch in parquet.iter_batches(batch_size=size):
            column = batch.column(batch.schema.get_field_index(EMBEDDING))
            block = np.full((len(batch), dim), np.nan, np.float32)
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            if valid.any():
                block[valid] = values.reshape(-1, dim)
            rest = batch.drop_columns([EMBEDDING]).to_pylist()
            yield block, rest


def _stack(block: list[Any], dim: int, path: Path) -> np.ndarray:
    if any(len(v) != dim for v in block):
        raise DataError(f"{path}: vectors of different lengths; one file must hold one model's vectors")
    return np.stack(block).astype(np.float32, copy=False)


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Complete JSON lines of `path` (a last line without its newline, cut by a kill, is not one)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                return
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{number}: not valid JSON; is this an embedding file?") from None


def _first_jsonl(path: Path) -> dict[str, Any] | None:
    return next(_jsonl_rows(path), None)


def open_saved(path: Path) -> Saved | None:
    """The embedding file at `path`, or None when it is a plain table (no `embedding` column) to embed.

    Raises:
        DataError: a damaged .npy or Parquet file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy file ({exc})") from None
        if array.ndim != 2 or array.dtype.kind != "f":
            raise DataError(f"{path}: expected a 2-D float array of vectors, got {array.dtype} {array.shape}")
        rows = sidecar(path)
        return Saved(path, "npy", int(array.shape[1]), rows_path=rows if rows.exists() else None)
    fmt = SUFFIXES.get(suffix)
    if fmt == "jsonl":
        first = _first_jsonl(path)
        if first is None or EMBEDDING not in first:
            return None
        dim = next((len(r[EMBEDDING]) for r in _jsonl_rows(path) if r.get(EMBEDDING) is not None), None)
        return Saved(path, "jsonl", dim)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(str(path))
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        if EMBEDDING not in parquet.schema_arrow.names:
            return None
        dim = None
        for batch in parquet.iter_batches(batch_size=READ_CHUNK_ROWS, columns=[EMBEDDING]):
            lengths = [len(v) for v in batch.column(0).to_pylist() if v is not None]
            if lengths:
                dim = lengths[0]
                break
        return Saved(path, "parquet", dim)
    return None


# --- --resume: what a killed or finished run left ---------------------------------------------------------------


def _recover_temp(path: Path, fmt: str, tmp: Path, pid: int) -> Saved | None:
    """The complete rows of a killed run's temporary of `path` (None when there are none or it cannot be read)."""
    if fmt == "jsonl":
        count = sum(1 for _ in _jsonl_rows(tmp))
        if not count:
            return None
        first = _first_jsonl(tmp)
        dim = len(first[EMBEDDING]) if first and first.get(EMBEDDING) is not None else None
        if dim is None:
            dim = next((len(r[EMBEDDING]) for r in _jsonl_rows(tmp) if r.get(EMBEDDING) is not None), None)
        return Saved(tmp, "jsonl", dim, count=count)
    if fmt == "npy":
        rows = [p for p, owner in tempnames.stale(path.parent, sidecar(path).name) if owner == pid]
        dim = _npy_dimension(tmp)
        if not rows or not dim:
            return None
        vectors = max(0, (tmp.stat().st_size - NPY_HEADER_BYTES) // (4 * dim))
        count = min(vectors, sum(1 for _ in _jsonl_rows(rows[0])))
        return Saved(tmp, "npy", dim, count=count, rows_path=rows[0]) if count else None
    return None  # a Parquet temporary has no footer: unreadable


def resume_source(path: Path) -> Saved | None:
    """What `--resume` continues from: the newest of the finished output and the temporaries that killed runs
    left for it (their complete rows), or None when there is neither."""
    path = Path(path)
    fmt = output_format(path)
    found: list[tuple[float, Saved]] = []
    if path.exists():
        saved = open_saved(path)
        if saved is None:
            raise UsageError(f"--resume: {path} holds no embeddings (no {EMBEDDING!r} column)")
        found.append((path.stat().st_mtime, saved))
    for tmp, pid in tempnames.stale(path.parent, path.name):
        recovered = _recover_temp(path, fmt, tmp, pid)
        if recovered is not None:
            found.append((tmp.stat().st_mtime, recovered))
    return max(found, key=lambda item: item[0])[1] if found else None


def remove_leftovers(path: Path) -> int:
    """Delete the temporaries that killed runs left for `path` (after a resumed run replaced them); how many."""
    journal = _journal()
    removed = 0
    for target in (path, sidecar(path)):
        for item in tempnames.remove_stale(path.parent, target.name):
            tempnames.forget_for(Path(item.path), item.owner_pid, journal)
            removed += 1
    return removed
