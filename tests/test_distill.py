"""`llmkit distill` on tiny checkpoints: the command, its flags, the student, the cache and the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llmkit.cli import app

DATA = Path(__file__).parent / "data" / "sentiment.csv"
FAST = ["--max-length", "16", "--batch-size", "8", "--seed", "1", "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one thread is ~40x faster than two fighting over the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _invoke(args: list[str]):
    return CliRunner().invoke(app, ["distill", *args])


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tiny_classifier: Path) -> Path:
    """The tiny classifier with a sharpened head: a random one is near-uniform and has nothing to teach."""
    from llmkit.loading import load

    lm = load(str(tiny_classifier), "sequence-classification", device="cpu", dtype="float32")
    with torch.no_grad():
        lm.model.classifier.weight.mul_(200.0)
    path = tmp_path_factory.mktemp("teacher") / "classifier"
    lm.model.save_pretrained(str(path))
    lm.tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 labelled rows of the shared sentiment set (enough for a few steps, cheap on 2 cores)."""
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:60]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def distilled(teacher: Path, small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("runs") / "student"
    result = _invoke(
        [
            str(small_data),
            "--teacher",
            str(teacher),
            "--output",
            str(out),
            "--student-layers",
            "1",
            "--epochs",
            "4",
            "--learning-rate",
            "1e-3",
            "--baseline",
            "--json",
            *FAST,
        ]
    )
    return _json(result), out


def test_distill_trains_a_student_closer_to_its_teacher(distilled: tuple[dict, Path]) -> None:
    record, out = distilled
    assert record["task"] == "classification"
    assert record["kept_layers"] == [0]
    assert record["train_examples"] + record["validation_examples"] == 60
    # 4 epochs of ceil(train/8) steps
    assert record["steps"] == 4 * -(-record["train_examples"] // 8)
    roles = [m["role"] for m in record["models"]]
    assert roles == ["teacher", "student", "baseline"]
    teacher, student, baseline = record["models"]
    assert teacher["layers"] == 2 and student["layers"] == 1
    assert student["parameters"] < teacher["parameters"]
    assert 0 < student["size_bytes"] < teacher["size_bytes"]
    assert all(m["latency_ms"] > 0 and m["throughput"] > 0 for m in record["models"])
    assert all(0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1 for m in record["models"])
    assert teacher["kl_to_teacher"] == 0.0 and baseline["kl_to_teacher"] > 0
    # "closer to its teacher": the distilled student ends closer to the teacher than the same student trained
    # on the labels alone (not closer than before training: it starts as the teacher minus a layer, KL ~0).
    assert student["kl_to_teacher"] == pytest.approx(record["kl_after"])
    assert student["kl_to_teacher"] < baseline["kl_to_teacher"], (student, baseline)
    assert record["summary"]["accuracy_share"] == pytest.approx(student["accuracy"] / teacher["accuracy"], abs=1e-3)
    assert record["summary"]["accuracy_gain_over_baseline"] == pytest.approx(
        student["accuracy"] - baseline["accuracy"], abs=1e-3
    )
    # report.json always, holding what stdout said; the student is a complete model folder
    assert json.loads((out / "report.json").read_text()) == record
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not (out.parent / (out.name + ".checkpoints")).exists()  # finished runs leave no checkpoints


def test_kd_loss_falls_and_the_student_moves_towards_its_teacher(
    teacher: Path, small_data: Path, tmp_path: Path
) -> None:
    import tiny

    # A fresh random student (uniform outputs) is far from the sharp teacher: pure distillation (alpha 0).
    fresh = tiny.build_classifier(tmp_path / "fresh", seed=5)
    record = _json(
        _invoke(
            [
                str(small_data),
                "--teacher",
                str(teacher),
                "--student",
                str(fresh),
                "--alpha",
                "0",
                "--output",
                str(tmp_path / "s"),
                "--epochs",
                "3",
                "--learning-rate",
                "3e-3",
                "--json",
                *FAST,
            ]
        )
    )
    history = record["loss_history"]
    assert len(history) == record["steps"] >= 15
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5  # the KD loss falls
    assert record["kl_after"] < 0.5 * record["kl_before"]  # and the student's KL to the teacher shrinks


def test_layer_dropped_student_loads_and_classifies(distilled: tuple[dict, Path], teacher: Path) -> None:
    from llmkit.loading import load

    record, out = distilled
    student = load(str(out), "sequence-classification", device="cpu", dtype="float32")
    config = student.model.config
    assert config.num_hidden_layers == 1 and config.distilled_from_layers == [0]
    assert config.id2label == {0: "negative", 1: "positive"}
    batch = student.tokenizer(["a wonderful film", "a terrible meal"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = student.model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    result = CliRunner().invoke(app, ["classify", "--model", str(out), "--json", "--device", "cpu", "a wonderful film"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] in ("negative", "positive")


def test_cache_teacher_gives_the_same_result_and_is_reused(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    common = [
        str(small_data),
        "--teacher",
        str(teacher),
        "--student-layers",
        "1",
        "--max-steps",
        "4",
        "--json",
        *FAST,
    ]
    plain = _json(_invoke([*common, "--output", str(tmp_path / "plain")]))
    filled = _json(_invoke([*common, "--output", str(tmp_path / "cached"), "--cache-teacher"]))
    again = _json(_invoke([*common, "--output", str(tmp_path / "again"), "--cache-teacher"]))
    assert (plain["teacher_cache"], filled["teacher_cache"], again["teacher_cache"]) == (
        "off",
        "filled",
        "hit",
    )
    for run in (filled, again):
        assert run["loss_history"] == pytest.approx(plain["loss_history"], abs=1e-4)
        assert run["kl_after"] == pytest.approx(plain["kl_after"], abs=1e-5)
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "plain" / "model.safetensors")),
        load_file(str(tmp_path / "again" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_student_layers_keep_every_kth_teacher_layer() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from llmkit.student import drop_layers

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    teacher = BertForSequenceClassification(config)
    student, kept = drop_layers(teacher, 3)
    assert kept == [0, 2, 4]
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    for new, old in enumerate(kept):
        s = student.bert.encoder.layer[new].state_dict()
        t = teacher.bert.encoder.layer[old].state_dict()
        assert all(torch.equal(s[k], t[k]) for k in s)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    student.classifier.weight.data.add_(1.0)  # a copy, not shared with the teacher
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)


def test_causal_lm_student_distills_and_generates(tiny_causal_lm: Path, tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(
        "\n".join(
            f"the {w} is a good {v} in the city ."
            for w in ("dog", "cat", "bird", "fish")
            for v in ("movie", "book", "song")
        )
        + "\n"
    )
    out = tmp_path / "lm-student"
    record = _json(
        _invoke(
            [
                str(text),
                "--teacher",
                str(tiny_causal_lm),
                "--output",
                str(out),
                "--student-layers",
                "1",
                "--max-steps",
                "6",
                "--learning-rate",
                "1e-3",
                "--hidden-weight",
                "1",
                "--json",
                *FAST,
            ]
        )
    )
    assert record["task"] == "causal-lm" and record["kept_layers"] == [0]
    teacher, student = record["models"]
    assert teacher["perplexity"] > 1 and student["perplexity"] > 1 and student["accuracy"] is None
    gen = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(out),
            "--raw",
            "--max-new-tokens",
            "3",
            "--json",
            "--device",
            "cpu",
            "the dog",
        ],
    )
    assert gen.exit_code == 0, gen.output
    assert json.loads(gen.stdout)["completion_tokens"] >= 1


def test_masked_lm_student_reports_perplexity(tiny_mlm: Path, tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(
        "\n".join(
            f"the {w} was {v} today ." for w in ("movie", "book", "song", "meal") for v in ("good", "bad", "great")
        )
        + "\n"
    )
    record = _json(
        _invoke(
            [
                str(text),
                "--teacher",
                str(tiny_mlm),
                "--output",
                str(tmp_path / "mlm"),
                "--student-layers",
                "1",
                "--max-steps",
                "3",
                "--attention-weight",
                "1",
                "--json",
                *FAST,
            ]
        )
    )
    assert record["task"] == "masked-lm"
    assert all(m["perplexity"] > 1 for m in record["models"])
    assert record["summary"]["perplexity_ratio"] > 0


def _first_loss(teacher: Path, data: Path, out: Path, *extra: str) -> float:
    record = _json(
        _invoke(
            [
                str(data),
                "--teacher",
                str(teacher),
                "--output",
                str(out),
                "--student-layers",
                "1",
                "--max-steps",
                "1",
                "--json",
                *FAST,
                *extra,
            ]
        )
    )
    return record["loss_history"][0]


def test_loss_flags_change_the_loss(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    """Each loss flag changes the first step's loss (same data, same seed, same student)."""
    base = _first_loss(teacher, small_data, tmp_path / "base")
    hard_only = _first_loss(teacher, small_data, tmp_path / "alpha1", "--alpha", "1")
    soft_only = _first_loss(teacher, small_data, tmp_path / "alpha0", "--alpha", "0")
    assert base == pytest.approx((hard_only + soft_only) / 2, rel=1e-4)  # alpha 0.5 mixes the two
    hot = _first_loss(teacher, small_data, tmp_path / "t4", "--alpha", "0", "--temperature", "4")
    assert hot != pytest.approx(soft_only, rel=1e-3)
    hidden = _first_loss(teacher, small_data, tmp_path / "hidden", "--hidden-weight", "1")
    attention = _first_loss(teacher, small_data, tmp_path / "attn", "--attention-weight", "1")
    assert hidden > base and attention > base


def test_alpha_zero_distills_from_unlabeled_text(teacher: Path, tmp_path: Path) -> None:
    unlabeled = tmp_path / "unlabeled.csv"
    with open(DATA, newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:30]
    unlabeled.write_text("text\n" + "\n".join(f'"{t}"' for t in texts) + "\n")
    record = _json(
        _invoke(
            [
                str(unlabeled),
                "--teacher",
                str(teacher),
                "--output",
                str(tmp_path / "s"),
                "--alpha",
                "0",
                "--max-steps",
                "2",
                "--json",
                *FAST,
            ]
        )
    )
    assert record["steps"] == 2 and record["models"][1]["accuracy"] is None  # no labels: no accuracy
    # The same data with the default alpha needs labels, and says which column is missing.
    result = _invoke([str(unlabeled), "--teacher", str(teacher), "--output", str(tmp_path / "t"), *FAST])
    assert result.exit_code == 3
    assert "no column 'label'" in result.stderr and "Traceback" not in result.output


def test_training_flags_are_applied(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    record = _json(
        _invoke(
            [
                str(small_data),
                "--teacher",
                str(teacher),
                "--output",
                str(tmp_path / "a"),
                "--student-layers",
                "1",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--validation-split",
                "0.5",
                "--json",
                "--max-length",
                "16",
                "--device",
                "cpu",
            ]
        )
    )
    assert record["validation_examples"] == 30 and record["steps"] == 30 // 4 + (30 % 4 > 0)


def test_config_file_fills_settings_and_flags_win(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "distill.toml"
    config.write_text(f'teacher = "{teacher}"\nmax-steps = 2\nstudent-layers = 1\n[loss]\nalpha = 1.0\n')
    record = _json(
        _invoke([str(small_data), "--config", str(config), "--output", str(tmp_path / "a"), "--json", *FAST])
    )
    assert record["steps"] == 2 and record["settings"]["alpha"] == 1.0 and record["teacher"] == str(teacher)
    record = _json(
        _invoke(
            [
                str(small_data),
                "--config",
                str(config),
                "--max-steps",
                "3",
                "--output",
                str(tmp_path / "b"),
                "--json",
                *FAST,
            ]
        )
    )
    assert record["steps"] == 3
    config.write_text("alpah = 0.5\n")
    result = _invoke([str(small_data), "--config", str(config), "--output", str(tmp_path / "c"), *FAST])
    assert result.exit_code == 2 and "unknown setting(s) alpah" in result.stderr


def test_validation_file_and_columns(teacher: Path, tmp_path: Path) -> None:
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:40]
    for name, part in (("train.jsonl", rows[:30]), ("dev.jsonl", rows[30:])):
        (tmp_path / name).write_text(
            "".join(json.dumps({"review": r["text"], "sentiment": r["label"]}) + "\n" for r in part)
        )
    record = _json(
        _invoke(
            [
                str(tmp_path / "train.jsonl"),
                "--validation-file",
                str(tmp_path / "dev.jsonl"),
                "--text-column",
                "review",
                "--label-column",
                "sentiment",
                "--teacher",
                str(teacher),
                "--output",
                str(tmp_path / "s"),
                "--max-steps",
                "1",
                "--json",
                *FAST,
            ]
        )
    )
    assert record["train_examples"] == 30 and record["validation_examples"] == 10
    assert record["models"][0]["accuracy"] is not None


def test_ready_student_must_share_labels(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    import tiny

    other = tiny.build_classifier(tmp_path / "other", labels=("a", "b", "c"))
    result = _invoke(
        [
            str(small_data),
            "--teacher",
            str(teacher),
            "--student",
            str(other),
            "--output",
            str(tmp_path / "s"),
            *FAST,
        ]
    )
    assert result.exit_code == 2 and "labels" in result.stderr
    same = tiny.build_classifier(tmp_path / "same", seed=3)
    record = _json(
        _invoke(
            [
                str(small_data),
                "--teacher",
                str(teacher),
                "--student",
                str(same),
                "--output",
                str(tmp_path / "s2"),
                "--max-steps",
                "1",
                "--json",
                *FAST,
            ]
        )
    )
    assert record["student"] == str(same) and record["kept_layers"] is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--student-layers", "1", "--student", "x"], 2, "either --student"),
        (["--alpha", "1.5"], 2, "--alpha must be in [0, 1]"),
        (["--temperature", "0"], 2, "--temperature must be > 0"),
        (["--student-layers", "5"], 2, "between 1 and the teacher's 2 layers"),
        (["--task", "masked-lm"], 2, "has no trained masked-lm head"),
    ],
)
def test_bad_settings_fail_with_one_line(teacher: Path, small_data: Path, tmp_path: Path, args, code, message):
    result = _invoke([str(small_data), "--teacher", str(teacher), "--output", str(tmp_path / "s"), *FAST, *args])
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


def test_output_is_not_overwritten_without_flag(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _invoke([str(small_data), "--teacher", str(teacher), "--output", str(out), *FAST])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    record = _json(
        _invoke(
            [
                str(small_data),
                "--teacher",
                str(teacher),
                "--output",
                str(out),
                "--overwrite",
                "--max-steps",
                "1",
                "--json",
                *FAST,
            ]
        )
    )
    assert record["steps"] == 1 and not (out / "keep.txt").exists()


def test_teacher_must_be_a_classifier(tiny_encoder: Path, small_data: Path, tmp_path: Path) -> None:
    result = _invoke(
        [
            str(small_data),
            "--teacher",
            str(tiny_encoder),
            "--task",
            "classification",
            "--output",
            str(tmp_path / "s"),
            *FAST,
        ]
    )
    assert result.exit_code == 2 and "llmkit finetune" in result.stderr


def test_resume_continues_an_interrupted_run(
    teacher: Path, small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmkit.distill as distill_module

    config = tmp_path / "c.toml"
    config.write_text("save-steps = 1\nmax-steps = 4\nstudent-layers = 1\n")
    args = [str(small_data), "--teacher", str(teacher), "--config", str(config), "--json", *FAST]
    whole = _json(_invoke([*args, "--output", str(tmp_path / "whole")]))

    make = distill_module._make_trainer_class

    def interrupted_at_step_3():  # Ctrl-C during the fourth step
        base = make()

        class Interrupted(base):
            def training_step(self, *a, **k):
                if self.state.global_step == 3:
                    raise KeyboardInterrupt
                return super().training_step(*a, **k)

        return Interrupted

    out = tmp_path / "cut"
    monkeypatch.setattr(distill_module, "_make_trainer_class", interrupted_at_step_3)
    cut = _invoke([*args, "--output", str(out)])
    assert cut.exit_code == 130 and not out.exists()
    monkeypatch.setattr(distill_module, "_make_trainer_class", make)
    again = _invoke([*args, "--output", str(out)])  # without --resume: told what to do
    assert again.exit_code == 2 and "--resume" in again.stderr
    resumed = _json(_invoke([*args, "--output", str(out), "--resume"]))
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 4 and len(resumed["loss_history"]) == 1
    assert resumed["loss_history"][0] == pytest.approx(whole["loss_history"][3], abs=1e-4)
    assert resumed["kl_after"] == pytest.approx(whole["kl_after"], abs=1e-4)
    assert not (tmp_path / "cut.checkpoints").exists()


def test_hidden_matching_learns_a_projection_when_widths_differ(
    teacher: Path, small_data: Path, tmp_path: Path
) -> None:
    import tiny
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tiny.bert_tokenizer()
    torch.manual_seed(0)
    narrow = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=tiny.MAX_POSITIONS,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=2,
            id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1},
        )
    )
    path = tmp_path / "narrow"
    narrow.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    common = [
        str(small_data),
        "--teacher",
        str(teacher),
        "--student",
        str(path),
        "--max-steps",
        "2",
        "--json",
        *FAST,
    ]
    plain = _json(_invoke([*common, "--output", str(tmp_path / "a")]))
    matched = _json(_invoke([*common, "--output", str(tmp_path / "b"), "--hidden-weight", "1"]))
    assert matched["models"][1]["parameters"] == plain["models"][1]["parameters"]  # the projection is not saved
    assert matched["loss_history"][0] > plain["loss_history"][0]  # the hidden-state term is in the loss


def test_unlabeled_text_with_a_labelled_validation_file(teacher: Path, tmp_path: Path) -> None:
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:40]
    (tmp_path / "unlabeled.txt").write_text("".join(r["text"] + "\n" for r in rows[:30]))
    with open(tmp_path / "dev.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows[30:])
        writer.writerow({"text": "a label the teacher never saw", "label": "neutral"})
    record = _json(_invoke([str(tmp_path / "unlabeled.txt"), "--validation-file", str(tmp_path / "dev.csv"),
                            "--teacher", str(teacher), "--alpha", "0", "--output", str(tmp_path / "s"),
                            "--max-steps", "1", "--json", *FAST]))  # fmt: skip
    assert record["train_examples"] == 30 and record["validation_examples"] == 10  # the unknown label left out
    assert all(m["accuracy"] is not None for m in record["models"])


def test_training_labels_must_be_the_teachers(teacher: Path, tmp_path: Path) -> None:
    (tmp_path / "odd.csv").write_text("text,label\na good film,positive\na bad film,negative\nso so,neutral\n")
    result = _invoke([str(tmp_path / "odd.csv"), "--teacher", str(teacher), "--output", str(tmp_path / "s"), *FAST])
    assert result.exit_code == 2 and "neutral are not among the teacher's labels" in result.stderr


def test_text_and_rich_formats(teacher: Path, small_data: Path, tmp_path: Path) -> None:
    common = [str(small_data), "--teacher", str(teacher), "--student-layers", "1", "--max-steps", "1", *FAST]
    text = _invoke([*common, "--output", str(tmp_path / "t"), "--format", "text"])
    assert text.exit_code == 0, text.output
    rows = [line.split("\t") for line in text.stdout.splitlines()]
    assert [r[0] for r in rows] == ["teacher", "student"] and [r[1] for r in rows] == ["2", "1"]
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert float(rows[1][4]) == report["models"][1]["accuracy"]
    rich = _invoke([*common, "--output", str(tmp_path / "r"), "--format", "rich"])
    assert rich.exit_code == 0, rich.output
    assert "Distillation report" in rich.stdout and "KL to teacher" in rich.stdout
    assert "teacher layers [0] of 2" in rich.stdout


def test_the_log_splits_the_loss_into_kd_and_hard_parts_for_trackers_and_curves(
    teacher: Path, small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = tmp_path / "small"
    record = _json(_invoke([str(small_data), "--teacher", str(teacher), "--output", str(out), "--student-layers", "1",
                            "--max-steps", "4", "--alpha", "0.3", "--baseline", "--report-to", "tensorboard",
                            "--json", *FAST]))  # fmt: skip
    log = [r for r in record["log"] if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for r in log:  # loss = alpha * hard + (1 - alpha) * KD, each part the mean over the same batches
        assert r["loss"] == pytest.approx(0.3 * r["loss_hard"] + 0.7 * r["loss_kd"], abs=1e-5)
        assert r["learning_rate"] > 0
    assert [r["step"] for r in record["baseline_log"] if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss"] == pytest.approx(r["loss_hard"]) for r in record["baseline_log"] if "loss" in r)
    assert (out / "curves.png").exists()
    # the student and its baseline are two runs in OUTPUT/runs, the student's with its parts
    runs = {}
    for name in ("small", "small-baseline"):
        accumulator = EventAccumulator(str(out / "runs" / name))
        accumulator.Reload()
        runs[name] = accumulator
    kd = {e.step: e.value for e in runs["small"].Scalars("train/loss_kd")}
    assert kd == pytest.approx({r["step"]: r["loss_kd"] for r in log}, abs=1e-5)
    assert [e.step for e in runs["small-baseline"].Scalars("train/loss")] == [1, 2, 3, 4]
    assert "train/loss_kd" not in runs["small-baseline"].Tags()["scalars"]
