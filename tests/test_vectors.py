"""vectors.py: embedding files written as they come, read back in chunks, and what a killed run leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmkit import vectors
from llmkit.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, n: int, dim: int = 4) -> np.ndarray:
    data = np.arange(n * dim, dtype=np.float32).reshape(n, dim) / 10
    with vectors.VectorWriter(path) as writer:
        for i, row in enumerate(data):
            writer.write({"id": f"r{i}", "text": f"t{i}"}, None if i == 1 else row, dim)
    return data


@pytest.mark.parametrize("suffix", [".npy", ".jsonl", ".parquet"])
def test_written_files_read_back_row_for_row(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"v{suffix}"
    data = _write(path, 5)
    saved = vectors.open_saved(path)
    assert saved is not None and saved.dimension == 4
    chunks = list(saved.chunks(size=2))
    assert [len(c[1]) for c in chunks] == [2, 2, 1]
    got = np.concatenate([c[0] for c in chunks])
    assert np.isnan(got[1]).all()
    np.testing.assert_array_equal(np.delete(got, 1, axis=0), np.delete(data, 1, axis=0))
    assert [r["id"] for c in chunks for r in c[1]] == ["r0", "r1", "r2", "r3", "r4"]


def test_npy_header_is_fixed_size_and_numpy_reads_it(tmp_path: Path) -> None:
    assert len(vectors.npy_header(0, 384)) == len(vectors.npy_header(10**12, 384)) == vectors.NPY_HEADER_BYTES
    path = tmp_path / "v.npy"
    _write(path, 3)
    assert np.load(path).shape == (3, 4)


def test_parquet_is_written_one_row_group_at_a_time(tmp_path: Path, monkeypatch) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setattr(vectors, "PARQUET_GROUP_ROWS", 2)
    path = tmp_path / "v.parquet"
    _write(path, 5)
    assert pq.ParquetFile(str(path)).num_row_groups == 3
    assert pq.read_table(path).num_rows == 5


def test_a_table_that_is_not_embeddings_is_none(tmp_path: Path) -> None:
    plain = tmp_path / "t.jsonl"
    plain.write_text(json.dumps({"text": "hello"}) + "\n")
    assert vectors.open_saved(plain) is None
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 4), np.float32))
    with pytest.raises(DataError, match="expected a 2-D float array of vectors"):
        vectors.open_saved(bad)


def test_vectors_of_another_length_in_one_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="a 3-dimensional vector after 4-dimensional ones"):
        with vectors.VectorWriter(tmp_path / "v.jsonl") as writer:
            writer.write({"text": "a"}, [0.0] * 4, 4)
            writer.write({"text": "b"}, [0.0] * 3, 3)
    assert list(tmp_path.iterdir()) == []  # an error removes the temporary


INTERRUPTED = """
import sys
from pathlib import Path
from llmkit.vectors import VectorWriter
with VectorWriter(Path(sys.argv[1])) as writer:
    for i in range(3):
        writer.write({"id": f"r{i}", "text": f"t{i}"}, [float(i)] * 4, 4)
    raise KeyboardInterrupt
"""


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_ctrl_c_keeps_the_rows_for_resume(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"v{suffix}"
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and not path.exists()
    assert "Warning: 3 embeddings are kept in" in proc.stderr and "run again with --resume" in proc.stderr
    source = vectors.resume_source(path)
    assert source is not None and source.count == 3 and source.path.name.startswith(f".v{suffix}.pid")
    block, rows = next(source.chunks())
    np.testing.assert_array_equal(block[:, 0], [0.0, 1.0, 2.0])
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    assert vectors.remove_leftovers(path) == (2 if suffix == ".npy" else 1)
    assert list(tmp_path.iterdir()) == []


def test_the_newer_of_output_and_leftover_wins(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    _write(path, 2)  # a finished output written after the interrupted run
    source = vectors.resume_source(path)
    assert source is not None and source.path == path


def test_jsonl_vectors_are_the_shortest_float32_text_and_read_back_exactly(tmp_path: Path) -> None:
    data = (np.random.default_rng(3).standard_normal((3, 8)) / 7).astype(np.float32)
    path = tmp_path / "v.jsonl"
    with vectors.VectorWriter(path) as writer:
        for i, row in enumerate(data):
            writer.write({"id": i, "note": "café"}, row, 8)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert '"note":"café"' in lines[0]  # UTF-8 as written, not \u escapes
    for line, row in zip(lines, data, strict=True):
        numbers = line.split('"embedding":[')[1].rstrip("]}").split(",")
        assert numbers == [str(v) for v in row]  # numpy's shortest float32 text, not the 17 digits of a double
        np.testing.assert_array_equal(np.array(json.loads(line)["embedding"], dtype=np.float32), row)


def test_json_line_falls_back_to_json_for_what_orjson_refuses() -> None:
    from llmkit.output import json_line

    record = {"big": 2**70, "embedding": np.array([0.5, 0.25], dtype=np.float32)}
    assert json.loads(json_line(record)) == {"big": 2**70, "embedding": [0.5, 0.25]}
