"""search.py on hand-made vectors: exact float32 neighbours, int8 and binary codes, rescoring, missing rows."""

from __future__ import annotations

import numpy as np
import pytest

from llmkit import search
from llmkit.errors import UsageError


def _corpus(vectors: np.ndarray, size: int = 3):
    for start in range(0, len(vectors), size):
        yield vectors[start : start + size], [{"row": i} for i in range(start, min(start + size, len(vectors)))]


RNG = np.random.default_rng(0)
DOCS = RNG.normal(size=(50, 16)).astype(np.float32)


def test_float32_is_exact_cosine_top_k_across_chunks() -> None:
    query = DOCS[7:8] + 0.01
    hits = search.search(query, _corpus(DOCS), query_texts=["q"], top_k=4)[0]
    cos = (DOCS @ query[0]) / np.linalg.norm(DOCS, axis=1) / np.linalg.norm(query[0])
    assert [h.index for h in hits] == list(np.argsort(-cos)[:4])
    assert [h.score for h in hits] == pytest.approx(sorted(cos, reverse=True)[:4], abs=1e-5)
    assert hits[0].fields == {"row": 7} and hits[0].rank == 1 and hits[0].query == "q"


def test_missing_rows_are_never_neighbours() -> None:
    docs = DOCS.copy()
    docs[3] = np.nan
    hits = search.search(DOCS[3:4], _corpus(docs), top_k=len(docs))[0]
    assert 3 not in [h.index for h in hits] and len(hits) == len(docs) - 1


def test_int8_codes_follow_sentence_transformers_ranges() -> None:
    codes = search.Int8Codes(DOCS)
    encoded = codes.encode(DOCS)
    assert encoded.dtype == np.int8 and encoded.min() == -128 and encoded.max() == 127
    assert np.abs(codes.decode(encoded) - DOCS).max() <= ((DOCS.max(0) - DOCS.min(0)) / 255).max() / 2 + 1e-6


def test_binary_bits_and_hamming() -> None:
    bits = search.pack_bits(np.array([[1.0, -1.0, 2.0] + [-1.0] * 5, [-1.0] * 8], np.float32))
    assert bits.tolist() == [[0b10100000], [0]]
    assert search.hamming(bits[:1], bits).tolist() == [[0, 2]]
    assert search.signs(bits[:1], 3).tolist() == [[1.0, -1.0, 1.0]]


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_quantized_search_finds_near_duplicates(precision: str) -> None:
    queries = DOCS[[4, 20, 33]] + RNG.normal(scale=0.05, size=(3, 16)).astype(np.float32)
    hits = search.search(queries, _corpus(DOCS, size=50), top_k=1, precision=precision)
    assert [h[0].index for h in hits] == [4, 20, 33]


def test_rescoring_reorders_the_candidates_by_the_float_query() -> None:
    queries = RNG.normal(size=(20, 16)).astype(np.float32)
    float_top = [h[0].index for h in search.search(queries, _corpus(DOCS), top_k=1)]
    rescored = [h[0].index for h in search.search(queries, _corpus(DOCS), top_k=1, precision="binary")]
    plain = search.search(queries, _corpus(DOCS), top_k=1, precision="binary", rescore=False)
    agree_rescored = sum(a == b for a, b in zip(float_top, rescored, strict=True))
    agree_plain = sum(a == h[0].index for a, h in zip(float_top, plain, strict=True))
    assert agree_rescored >= agree_plain
    for per_query in search.search(queries, _corpus(DOCS), top_k=5, precision="binary"):
        scores = [h.score for h in per_query]
        assert scores == sorted(scores, reverse=True)


def test_a_corpus_of_another_dimension_is_refused() -> None:
    with pytest.raises(UsageError, match="the corpus holds 16-dimensional vectors and the queries are 8-dimensional"):
        search.search(np.zeros((1, 8), np.float32), _corpus(DOCS))


def test_bad_settings() -> None:
    with pytest.raises(UsageError, match="unknown --precision 'int4'"):
        search.search(DOCS[:1], _corpus(DOCS), precision="int4")
    with pytest.raises(UsageError, match="--top-k must be at least 1"):
        search.search(DOCS[:1], _corpus(DOCS), top_k=0)
