"""Unlabelled text for pre-training: files, folders and tables in, fixed-length token blocks out.

- `read_corpus`: text files (one text per non-blank line), a folder of them (read recursively, in name order;
  tables inside it by suffix), or a table with a text column. Every file goes through data.py's one row reader
  (UTF-8, BOM dropped, undecodable bytes replaced and counted).
- `pack_blocks`: token lists -> blocks of exactly `block_size` tokens, a separator after each text and, for
  BERT, `[CLS] ... [SEP]` around each block (the transformers `run_clm.py`/`run_mlm.py` `group_texts` layout).
- `split_blocks`: a seeded held-out share of the blocks.

Torch-free and model-free: these are unit-tested on hand-made lists.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.data import DEFAULT_FIELD, TABLE_SUFFIXES, column_error, decoding_note, open_rows
from llmkit.errors import DataError, NotFoundError, UsageError


@dataclass
class Corpus:
    """The texts of a corpus and what reading it found."""

    source: str
    texts: list[str] = field(default_factory=list)
    files: int = 0
    tables: int = 0
    skipped_empty: int = 0  # blank lines and empty cells
    replaced_bytes: int = 0
    rows_with_replacements: int = 0

    @property
    def characters(self) -> int:
        return sum(len(t) for t in self.texts)

    def notes(self) -> list[str]:
        """One human line per thing the user should know about."""
        note = decoding_note(self.replaced_bytes, self.rows_with_replacements)
        return [note] if note else []


def _files(folder: Path) -> list[Path]:
    """Every visible regular file under `folder`, in path order (hidden files and folders are skipped)."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append(path)
    return found


def read_corpus(sources: str | Path | Sequence[str | Path], *, text_column: str | None = None) -> Corpus:
    """Read every text of `sources`.

    Args:
        sources: one or more of: a text file (each non-blank line is a text), a table (.csv .tsv .jsonl .json
            .parquet; each non-empty cell of `text_column` is a text), a folder of such files (read recursively).
        text_column: the tables' text column (default "text"); naming one when no table is read is an error,
            so that a typo is not silently ignored.

    Returns:
        The Corpus, texts in the order given (files of a folder in path order).

    Raises:
        NotFoundError: no such file or folder, or a table without the column. DataError: no text at all.
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    if not paths:
        raise UsageError("no corpus: give text files, a folder of them or a table")
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise NotFoundError(f"corpus not found: {path}")
        files.extend(_files(path) if path.is_dir() else [path])
    name = ", ".join(str(p) for p in paths)
    corpus = Corpus(source=name)
    column = text_column or DEFAULT_FIELD
    for file in files:
        table = file.suffix.lower() in TABLE_SUFFIXES
        rows = open_rows(file, "auto" if table else "text", text_column=column)
        if table:
            if column not in rows.columns:
                raise column_error(column, rows.columns, str(file))
            corpus.tables += 1
        corpus.files += 1
        for _, row in rows.rows:
            value = row.get(column)
            text = "" if value is None else str(value).strip()
            if text:
                corpus.texts.append(text)
            else:
                corpus.skipped_empty += 1
        corpus.replaced_bytes += rows.decoding.replaced
        corpus.rows_with_replacements += rows.decoding.rows
    if text_column is not None and corpus.files and not corpus.tables:
        raise UsageError(
            f"--text-column {text_column!r} names a table column, but {name} holds no table "
            "(.csv .tsv .jsonl .json .parquet); text files are read one text per line"
        )
    if not corpus.texts:
        what = "no files" if not files else "no text"
        raise DataError(f"{name}: {what} to pre-train on; give text files, a folder of them or a table")
    return corpus


@dataclass(frozen=True)
class Packing:
    """How texts become blocks.

    Attributes:
        block_size: tokens per block, all included.
        separator: token id put after every text (EOS for GPT-style models, [SEP] for BERT), or None.
        prefix / suffix: ids that open and close every block ([CLS] and [SEP] for BERT); the text inside a block
            is `block_size - len(prefix) - len(suffix)` tokens.
    """

    block_size: int
    separator: int | None = None
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    @property
    def body(self) -> int:
        return self.block_size - len(self.prefix) - len(self.suffix)


@dataclass(frozen=True)
class Packed:
    """Blocks of exactly `block_size` ids, and the token counts behind them."""

    blocks: list[list[int]]
    tokens: int  # text tokens + separators that went in
    dropped: int  # the tail shorter than one block, left out

    @property
    def block_tokens(self) -> int:
        return sum(len(b) for b in self.blocks)


def _stream(texts: Iterable[list[int]], separator: int | None) -> Iterator[int]:
    for ids in texts:
        yield from ids
        if separator is not None:
            yield separator


def pack_blocks(texts: Iterable[list[int]], packing: Packing) -> Packed:
    """Concatenate the texts' ids (a separator after each) and cut them into blocks; the short tail is dropped.

    Args:
        texts: token ids of each text, without special tokens.
        packing: block size, separator and block prefix/suffix.

    Returns:
        Packed blocks (empty when there are fewer tokens than one block holds).

    Raises:
        UsageError: a block too small to hold its prefix and suffix plus one token.
    """
    body = packing.body
    if body < 1:
        raise UsageError(f"--block-size {packing.block_size} leaves no room for text; use a larger block size")
    blocks: list[list[int]] = []
    chunk: list[int] = []
    total = 0
    for token in _stream(texts, packing.separator):
        total += 1
        chunk.append(token)
        if len(chunk) == body:
            blocks.append([*packing.prefix, *chunk, *packing.suffix])
            chunk = []
    return Packed(blocks, tokens=total, dropped=len(chunk))


def split_blocks(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (train, validation) blocks: a seeded random `fraction` of them held out (at least one).

    Random blocks rather than the tail, so a corpus sorted by topic is not evaluated on its last topic alone.

    Raises:
        UsageError: a fraction outside [0, 1). DataError: too few blocks to hold any out.
    """
    if not 0 <= fraction < 1:
        raise UsageError("--validation-split must be in [0, 1) (e.g. 0.05; 0 turns evaluation off)")
    if fraction == 0:
        return list(range(count)), []
    if count < 2:
        raise DataError(
            f"the corpus makes {count} block(s): too few to hold one out for validation; add text, lower "
            "--block-size, or pass --validation-split 0"
        )
    held = max(1, round(fraction * count))
    held = min(held, count - 1)
    chosen = set(random.Random(seed).sample(range(count), held))
    return [i for i in range(count) if i not in chosen], sorted(chosen)
