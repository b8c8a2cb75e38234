"""training.py pieces on hand-made data: no model, no Trainer run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit import training
from llmkit.errors import DataError, NotFoundError, UsageError


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_every_table_format_reads_the_same_rows(tmp_path: Path) -> None:
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    _write(tmp_path / "a.csv", "text,label\ngood film,pos\nbad film,neg\n")
    _write(tmp_path / "a.tsv", "text\tlabel\ngood film\tpos\nbad film\tneg\n")
    _write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    _write(tmp_path / "a.json", json.dumps(rows))
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    for suffix in ("csv", "tsv", "jsonl", "json", "parquet"):
        ds = training.read_table(tmp_path / f"a.{suffix}")
        assert ds.to_list() == rows, suffix


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "latin.csv",
        "text,label\ncaf\xe9 ok,pos\nfine,neg\nna\xefve \xe9t\xe9,pos\n".encode("latin-1"),
    )
    stats = training.DataStats()
    ds = training.read_table(path, stats)
    assert ds["text"] == ["caf\ufffd ok", "fine", "na\ufffdve \ufffdt\ufffd"]
    assert (stats.replaced_bytes, stats.rows_with_replacements) == (4, 2)
    assert "replaced 4 undecodable byte sequence(s)" in stats.notes()[0]


def test_table_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="data file not found"):
        training.read_table(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="unknown table type '.xlsx'"):
        training.read_table(_write(tmp_path / "a.xlsx", "x"))
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        training.read_table(_write(tmp_path / "bad.jsonl", '{"text": "a"}\n{oops\n'))


def test_folder_of_splits_and_validation_file(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "train.csv", "text,label\na,x\nb,y\nc,x\n")
    _write(folder / "dev.jsonl", '{"text": "d", "label": "y"}\n')
    _write(folder / "test.tsv", "text\tlabel\ne\tx\n")
    splits = training.load_dataset_splits(folder)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (3, 1, 1)
    assert splits.stats.rows_read == {"train": 3, "validation": 1, "test": 1}
    other = _write(tmp_path / "val.csv", "text,label\nv1,x\nv2,y\n")
    assert len(training.load_dataset_splits(folder, validation_file=other).validation) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train.csv"):
        training.load_dataset_splits(tmp_path / "empty")


def test_clean_rows_counts_and_missing_column_lists_columns(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict(
        {"text": ["ok", "", "  ", "fine", "x"], "label": ["a", "b", "a", None, "b"]}
    )
    stats = training.DataStats()
    kept = training.clean_rows(ds, ["text"], "label", stats)
    assert kept["text"] == ["ok", "x"]
    assert (stats.skipped_empty_text, stats.skipped_no_label) == (2, 1)
    with pytest.raises(NotFoundError, match=r"no column 'review' in the data \(columns: text, label\)"):
        training.clean_rows(ds, ["review"], "label", stats)


def test_prepare_labels_maps_sorts_and_reports_unseen() -> None:
    import datasets

    train = datasets.Dataset.from_dict({"label": ["10", "2", "2", "1"]})
    val = datasets.Dataset.from_dict({"label": ["2", "7", "10", "7"]})
    stats = training.DataStats()
    train, val, labels = training.prepare_labels(train, val, "label", stats=stats)
    assert labels.names == ("1", "2", "10")  # numeric order, not string order
    assert labels.id2label == {0: "1", 1: "2", 2: "10"}
    assert train["labels"] == [2, 1, 1, 0]
    assert val["labels"] == [1, 2]
    assert stats.unseen_validation_labels == ["7"] and stats.skipped_unseen_label == 2
    with pytest.raises(DataError, match="only one label"):
        training.prepare_labels(datasets.Dataset.from_dict({"label": ["a", "a"]}), None, "label")
    with pytest.raises(DataError, match="not a number"):
        training.prepare_labels(
            datasets.Dataset.from_dict({"label": ["1.5", "x"]}), None, "label", task="regression"
        )


def test_split_validation_is_stratified_and_seeded() -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"labels": [0] * 90 + [1] * 10, "i": list(range(100))})
    train, val = training.split_validation(ds, 0.1, seed=3)
    assert sorted(val["labels"]) == [0] * 9 + [1]
    assert len(train) == 90 and not set(train["i"]) & set(val["i"])
    assert training.split_validation(ds, 0.1, seed=3)[1]["i"] == val["i"]
    assert training.split_validation(ds, 0.1, seed=4)[1]["i"] != val["i"]
    with pytest.raises(UsageError, match="between 0 and 1"):
        training.split_validation(ds, 1.5, seed=0)


def test_config_precedence_cli_over_file_over_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.toml", "epochs = 7\n[training]\nlearning-rate = 0.01\nbatch_size = 4\n")
    config = training.load_config(path)
    assert config == {"epochs": 7, "learning_rate": 0.01, "batch_size": 4}
    settings = training.settings_from(training.TrainSettings, config, {"batch_size": 2, "epochs": None})
    assert (settings.epochs, settings.learning_rate, settings.batch_size) == (7, 0.01, 2)
    assert settings.max_length == training.DEFAULT_MAX_LENGTH
    with pytest.raises(UsageError, match="unknown setting"):
        training.check_config_keys({"epoch": 1}, {"epochs"}, path)
    with pytest.raises(UsageError, match="not valid TOML"):
        training.load_config(_write(tmp_path / "bad.toml", "epochs = = 1"))
    with pytest.raises(UsageError, match="--batch-size must be >= 1"):
        training.settings_from(training.TrainSettings, {}, {"batch_size": 0})


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with training.atomic_output(target) as staging:
            (staging / "config.json").write_text("{}")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with training.atomic_output(target) as staging:
        (staging / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(UsageError, match="already exists"):
        with training.atomic_output(target):
            pass
    with training.atomic_output(target, overwrite=True) as staging:
        (staging / "new.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["new.json"]


def test_build_training_args_maps_settings(tmp_path: Path) -> None:
    settings = training.TrainSettings(
        epochs=2,
        learning_rate=1e-3,
        batch_size=4,
        gradient_accumulation=2,
        warmup_ratio=0.1,
        weight_decay=0.01,
        seed=5,
        eval_steps=3,
        save_steps=4,
        save_total_limit=1,
        group_by_length=False,
    )
    args = training.build_training_args(settings, tmp_path, has_eval=True, train_rows=40)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert (args.learning_rate, args.warmup_steps, args.weight_decay, args.seed) == (1e-3, 0.1, 0.01, 5)
    assert (args.eval_strategy, args.eval_steps, args.save_steps, args.save_total_limit) == ("steps", 3, 4, 1)
    assert args.train_sampling_strategy == "random" and args.report_to == [] and args.disable_tqdm
    early = training.build_training_args(
        training.TrainSettings(eval_steps=2, early_stopping_patience=1), tmp_path, has_eval=True
    )
    assert early.load_best_model_at_end and early.save_steps == 2
    with pytest.raises(UsageError, match="needs validation data"):
        training.build_training_args(
            training.TrainSettings(early_stopping_patience=1), tmp_path, has_eval=False
        )
    with pytest.raises(UsageError, match="--fp16 needs a GPU"):
        training.build_training_args(training.TrainSettings(precision="fp16"), tmp_path, has_eval=False)


def test_timed_checkpoint_asks_for_a_save_after_its_interval() -> None:
    from types import SimpleNamespace

    callback = training.TimedCheckpoint.create(training.TrainSettings(checkpoint_minutes=1.0))
    args, state = SimpleNamespace(save_strategy="no"), SimpleNamespace()
    control = SimpleNamespace(should_save=False)
    callback.on_step_end(args, state, control)
    assert control.should_save is False  # a minute has not passed
    callback.last -= 61
    callback.on_step_end(args, state, control)
    assert control.should_save is True
    callback.on_save(args, state, control)
    control.should_save = False
    callback.on_step_end(args, state, control)
    assert control.should_save is False  # the clock restarted at the save
    callback.last -= 61
    callback.on_step_end(SimpleNamespace(save_strategy="steps"), state, control)
    assert control.should_save is False  # --save-steps given: the step schedule rules
    default = training.build_training_args(training.TrainSettings(), "/tmp/unused", has_eval=False)
    assert default.save_strategy == "no"
