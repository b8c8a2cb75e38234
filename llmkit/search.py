"""Nearest neighbours of query vectors in a stream of corpus vectors, at float32, int8 or binary precision.

The corpus goes by in chunks (memory stays flat whatever its size); each query keeps its best candidates.

- float32: cosine similarity, exact.
- int8: each dimension mapped to 256 steps between its minimum and maximum over a calibration sample (the first
  chunk), as sentence-transformers' `quantize_embeddings` does; candidates by the int8 dot product of query and
  document codes, then rescored: the float32 query against the dequantized document.
- binary: one sign bit per dimension (32x less than float32); candidates by Hamming distance, then rescored: the
  float32 query against the document's +-1 signs, as sentence-transformers' rescoring does (it reports about 96%
  of float32 retrieval quality).

A store that keeps vectors at int8 or binary precision holds only those codes, so the rescoring here uses only
them: the quality measured is the quality such a store gives. `rescore_multiplier` x top_k candidates per query
are rescored.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from llmkit.errors import UsageError

if TYPE_CHECKING:  # numpy loads when a search runs, not for `llmkit embed --help`
    import numpy as np

PRECISIONS = ("float32", "int8", "binary")
DEFAULT_PRECISION = "float32"
DEFAULT_TOP_K = 5
RESCORE_MULTIPLIER = 4  # candidates per query rescored in float32, as a multiple of top_k
BYTES_PER_DIMENSION = {"float32": 4.0, "int8": 1.0, "binary": 1 / 8}


@dataclass(frozen=True)
class Hit:
    """One neighbour of a query.

    Attributes:
        query: the query text.
        rank: 1 for the nearest.
        score: cosine similarity (int8: with the dequantized vector; binary: with the vector's signs).
        index: the neighbour's 0-based row in the corpus.
        fields: the neighbour's other fields (text, ids, ...).
    """

    query: str
    rank: int
    score: float
    index: int
    fields: dict[str, Any] = field(default_factory=dict)


def _unit(x: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Int8Codes:
    """sentence-transformers' int8 scheme: per-dimension [min, max] in 255 steps, codes -128..127."""

    def __init__(self, calibration: np.ndarray) -> None:
        import numpy as np

        self.starts = calibration.min(axis=0).astype(np.float32)
        steps = (calibration.max(axis=0) - self.starts) / 255
        self.steps = np.where(steps == 0, 1, steps).astype(np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        import numpy as np

        return (np.clip(np.floor((x - self.starts) / self.steps), 0, 255) - 128).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        import numpy as np

        # the middle of each step
        return ((codes.astype(np.float32) + 128.5) * self.steps + self.starts).astype(np.float32)


def pack_bits(x: np.ndarray) -> np.ndarray:
    """One bit per dimension, set where the value is positive, packed 8 to a byte."""
    import numpy as np

    return np.packbits(x > 0, axis=-1)


def signs(bits: np.ndarray, dimension: int) -> np.ndarray:
    """Packed bits -> +-1 float32 vectors of `dimension`."""
    import numpy as np

    return np.unpackbits(bits, axis=-1)[..., :dimension].astype(np.float32) * 2 - 1


@cache
def _popcount() -> np.ndarray:
    """Set bits per byte value."""
    import numpy as np

    return np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(query_bits: np.ndarray, doc_bits: np.ndarray) -> np.ndarray:
    """Hamming distances [queries, docs] between packed bit vectors."""
    import numpy as np

    xor = np.bitwise_xor(query_bits[:, None, :], doc_bits[None, :, :])
    return _popcount()[xor].sum(axis=-1, dtype=np.int32)


class _Best:
    """The best `size` (score, index, payload) seen so far, for one query."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.heap: list[tuple[float, int, Any]] = []

    def offer(self, scores: np.ndarray, start: int, payloads: Any) -> None:
        import numpy as np

        take = min(self.size, len(scores))
        if take == 0:
            return
        top = np.argpartition(-scores, take - 1)[:take] if take < len(scores) else np.arange(len(scores))
        for i in top:
            item = (float(scores[i]), -(start + int(i)), payloads(int(i)))
            if len(self.heap) < self.size:
                heapq.heappush(self.heap, item)
            elif item[:2] > self.heap[0][:2]:
                heapq.heapreplace(self.heap, item)

    def ranked(self) -> list[tuple[float, int, Any]]:
        return [(s, -neg, p) for s, neg, p in sorted(self.heap, key=lambda t: (-t[0], -t[1]))]


def search(
    queries: np.ndarray,
    corpus: Iterable[tuple[np.ndarray, list[dict[str, Any]]]],
    *,
    query_texts: list[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    precision: str = DEFAULT_PRECISION,
    rescore: bool = True,
    rescore_multiplier: int = RESCORE_MULTIPLIER,
) -> list[list[Hit]]:
    """The `top_k` nearest corpus rows of each query.

    Args:
        queries: float32 [q, d] query vectors.
        corpus: chunks of (float32 [k, d] vectors, NaN rows for missing ones; the k rows' fields), in order.
        query_texts: the queries' texts, for the hits.
        top_k: neighbours per query.
        precision: float32, int8 or binary (see the module docstring).
        rescore: rescore int8/binary candidates with the float32 query (False: rank by the codes alone).
        rescore_multiplier: candidates rescored per query, as a multiple of top_k.

    Returns:
        Per query, its hits, nearest first.

    Raises:
        UsageError: an unknown precision, top_k < 1, or vectors of another dimension than the queries'.
    """
    import numpy as np

    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    queries = np.asarray(queries, dtype=np.float32)
    dimension = queries.shape[1]
    texts = query_texts or [""] * len(queries)
    unit_queries = _unit(queries)
    quantized = precision != "float32"
    keep = top_k * max(1, rescore_multiplier) if quantized and rescore else top_k
    best = [_Best(keep) for _ in range(len(queries))]
    int8: Int8Codes | None = None
    query_codes: Any = None
    start = 0
    for vectors, rows in corpus:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != dimension):
            raise UsageError(f"the corpus holds {vectors.shape[-1]}-dimensional vectors and the queries are "
                             f"{dimension}-dimensional")
        present = ~np.isnan(vectors).any(axis=1)
        if precision == "float32":
            scores = unit_queries @ _unit(np.nan_to_num(vectors)).T
            codes: Any = None
        elif precision == "int8":
            if int8 is None:
                int8 = Int8Codes(vectors[present] if present.any() else np.zeros((1, dimension), np.float32))
                query_codes = int8.encode(queries).astype(np.int32)
            codes = int8.encode(np.nan_to_num(vectors))
            scores = (query_codes @ codes.astype(np.int32).T).astype(np.float32)
        else:
            codes = pack_bits(np.nan_to_num(vectors))
            if query_codes is None:
                query_codes = pack_bits(queries)
            scores = -hamming(query_codes, codes).astype(np.float32)
        scores[:, ~present] = -np.inf
        for q, heap in enumerate(best):
            heap.offer(scores[q], start, lambda i, rows=rows, codes=codes: (rows[i], None if codes is None else codes[i]))
        start += len(vectors)
    out = []
    for q, heap in enumerate(best):
        ranked = [(s, i, p) for s, i, p in heap.ranked() if np.isfinite(s)]
        if quantized and ranked:
            stack = np.stack([p[1] for _, _, p in ranked])
            docs = int8.decode(stack) if int8 is not None else signs(stack, dimension)
            cosines = _unit(docs) @ unit_queries[q]
            # rescored: ranked by the float32 query against the codes; otherwise ranked by the codes alone and
            # reported as the same cosines
            ranked = [(float(c), i, p) for c, (_, i, p) in zip(cosines, ranked, strict=True)]
            if rescore:
                ranked.sort(key=lambda t: (-t[0], t[1]))
        out.append([Hit(query=texts[q], rank=r + 1, score=float(s), index=i, fields=dict(p[0]))
                    for r, (s, i, p) in enumerate(ranked[:top_k])])
    return out


def chunked(pairs: Iterator[tuple[np.ndarray | None, dict[str, Any]]], dimension: int,
            size: int = 1024) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """(vector or None, fields) pairs -> the (vectors, fields) chunks `search` reads (None -> a NaN row)."""
    import numpy as np

    block: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    for vector, fields in pairs:
        block.append(np.full(dimension, np.nan, np.float32) if vector is None else np.asarray(vector, np.float32))
        rows.append(fields)
        if len(block) >= size:
            yield np.stack(block), rows
            block, rows = [], []
    if block:
        yield np.stack(block), rows
