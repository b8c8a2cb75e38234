"""`llmkit finetune` end to end on the tiny checkpoints: CliRunner -> exit code -> JSON stdout -> stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmkit import training
from llmkit.cli import app

SENTIMENT = Path(__file__).parent / "data" / "sentiment.csv"
# Fast, loud settings for the tiny models: a high learning rate so a few steps move the loss.
FAST = ["--lr", "0.01", "--batch-size", "8", "--seed", "1", "--json"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The machine's cores are shared: one thread is ~10x faster than two busy-waiting ones for tiny models.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(args: list[str]) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(app, ["finetune", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, records, result.stderr


def final(records: list[dict]) -> dict:
    return next(r for r in records if r.get("event") in ("result", "plan"))


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 rows, 2 labels: small enough to memorise in a few dozen steps."""
    rows = SENTIMENT.read_text().splitlines()
    pos = [r for r in rows[1:] if r.endswith(",positive")][:8]
    neg = [r for r in rows[1:] if r.endswith(",negative")][:8]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    path.write_text("\n".join([rows[0]] + [x for pair in zip(pos, neg, strict=True) for x in pair]) + "\n")
    return path


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_classification_labels_round_trip_into_a_classifier(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path
):
    out = tmp_path / "sentiment"
    code, records, stderr = run(
        [
            str(small_csv),
            "-m",
            str(tiny_encoder),
            "-o",
            str(out),
            "--max-steps",
            "40",
            "--validation-split",
            "0.25",
            *FAST,
        ]
    )
    assert code == 0, stderr
    result = final(records)
    assert result["task"] == "classification" and result["labels"] == ["negative", "positive"]
    assert result["rows"] == {"train": 12, "validation": 4}
    assert result["losses"][-1] < result["losses"][0]
    assert result["validation"]["labels"] == ["negative", "positive"]
    assert sum(map(sum, result["validation"]["confusion_matrix"])) == 4
    assert any(r["event"] == "eval" and "eval_accuracy" in r and "eval_macro_f1" in r for r in records)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert {"model.safetensors", "tokenizer.json", "report.json", "training_args.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not any(p.suffix == ".bin" for p in out.iterdir())
    assert not training.checkpoint_dir(out).exists()
    report = json.loads((out / "report.json").read_text())
    assert report["result"]["validation"]["per_class"].keys() == {"negative", "positive"}
    # what `llmkit classify` does: AutoModelForSequenceClassification through loading.load
    from llmkit.loading import load

    loaded = load(str(out), "sequence-classification")
    assert loaded.model.config.id2label == {0: "negative", 1: "positive"}
    assert loaded.tokenizer("good film")["input_ids"]


def test_numeric_labels_and_regression(tiny_encoder: Path, tmp_path: Path) -> None:
    stars = tmp_path / "stars.jsonl"
    stars.write_text(
        "".join(
            json.dumps({"review": f"film {w}", "stars": s}) + "\n"
            for w, s in [("good", 5), ("bad", 1), ("great", 10), ("awful", 2)] * 3
        )
    )
    out = tmp_path / "stars"
    code, records, stderr = run(
        [
            str(stars),
            "-m",
            str(tiny_encoder),
            "-o",
            str(out),
            "--text-column",
            "review",
            "--label-column",
            "stars",
            "--max-steps",
            "2",
            *FAST,
        ]
    )
    assert code == 0, stderr
    assert final(records)["labels"] == ["1", "2", "5", "10"]
    assert json.loads((out / "config.json").read_text())["id2label"]["3"] == "10"
    code, records, stderr = run(
        [
            str(stars),
            "-m",
            str(tiny_encoder),
            "-o",
            str(tmp_path / "reg"),
            "--text-column",
            "review",
            "--label-column",
            "stars",
            "--task",
            "regression",
            "--max-steps",
            "2",
            "--validation-split",
            "0.25",
            *FAST,
        ]
    )
    assert code == 0, stderr
    result = final(records)
    assert result["task"] == "regression" and result["labels"] is None and "eval_mse" in result["metrics"]
    assert json.loads((tmp_path / "reg" / "config.json").read_text())["problem_type"] == "regression"


def test_causal_lm_text_prompt_completion_and_chat(tiny_causal_lm: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.csv"
    text.write_text("text\n" + "the cat is on the house .\nthe dog is in the car .\n" * 4)
    code, records, stderr = run(
        [
            str(text),
            "-m",
            str(tiny_causal_lm),
            "-o",
            str(tmp_path / "a"),
            "--max-steps",
            "15",
            "--validation-split",
            "0.25",
            *FAST,
        ]
    )
    assert code == 0, stderr
    result = final(records)
    assert result["task"] == "causal-lm" and result["losses"][-1] < result["losses"][0]
    assert result["metrics"]["eval_perplexity"] > 1

    pc = tmp_path / "pc.jsonl"
    pc.write_text(
        "".join(
            json.dumps({"prompt": f"what is {a} ?", "completion": b}) + "\n"
            for a, b in [("paris", "france"), ("rome", "italy")] * 4
        )
    )
    code, records, stderr = run(
        [str(pc), "-m", str(tiny_causal_lm), "-o", str(tmp_path / "b"), "--max-steps", "15", *FAST]
    )
    assert code == 0, stderr
    assert (
        final(records)["task"] == "causal-lm" and final(records)["losses"][-1] < final(records)["losses"][0]
    )

    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            + "\n"
            for q, a in [("hello", "hello ! how are you ?"), ("who are you ?", "a bird .")] * 4
        )
    )
    code, records, stderr = run(
        [str(chat), "-m", str(tiny_causal_lm), "-o", str(tmp_path / "c"), "--max-steps", "15", *FAST]
    )
    assert code == 0, stderr
    assert final(records)["losses"][-1] < final(records)["losses"][0]


def test_loss_masks_the_prompt_and_chat_turns(tiny_causal_lm: Path) -> None:
    import datasets

    from llmkit import finetune as ft
    from llmkit.loading import load_tokenizer, resolve

    tok = load_tokenizer(resolve(str(tiny_causal_lm)))
    cols = ft.Columns()
    ds = datasets.Dataset.from_list([{"prompt": "what is paris ?", "completion": "france"}])
    row = ft._tokenize_causal_lm(ds, tok, cols, 64, "prompt-completion")[0]
    prompt_len = len(tok("what is paris ?")["input_ids"])
    assert row["labels"][:prompt_len] == [ft.IGNORE_INDEX] * prompt_len
    assert row["labels"][prompt_len:] == tok("france", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]
    chat = datasets.Dataset.from_list(
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    )
    row = ft._tokenize_causal_lm(chat, tok, cols, 64, "chat")[0]
    learned = [t for t in row["labels"] if t != ft.IGNORE_INDEX]
    assert tok.decode(learned).split() == ["hello", "</s>"]


def test_masked_lm_uses_mlm_probability(tiny_mlm: Path, tmp_path: Path) -> None:
    text = tmp_path / "domain.txt.csv"
    text.write_text(
        "text\n" + "the king and the queen of the city .\nthe river of the country is blue .\n" * 4
    )
    code, records, stderr = run(
        [
            str(text),
            "-m",
            str(tiny_mlm),
            "-o",
            str(tmp_path / "m"),
            "--max-steps",
            "15",
            "--mlm-probability",
            "0.3",
            *FAST,
        ]
    )
    assert code == 0, stderr
    result = final(records)
    assert result["task"] == "masked-lm" and result["losses"][-1] < result["losses"][0]
    from transformers import BertTokenizerFast  # noqa: F401  (the collator below is what finetune builds)

    from llmkit import finetune as ft
    from llmkit.loading import load_tokenizer, resolve

    tok = load_tokenizer(resolve(str(tiny_mlm)))
    assert ft._collator("masked-lm", tok, 0.3).mlm_probability == 0.3
    code, _, stderr = run(
        [str(text), "-m", str(tiny_mlm), "-o", str(tmp_path / "n"), "--mlm-probability", "1.5"]
    )
    assert code == 2 and "--mlm-probability must be between 0 and 1" in stderr


def test_train_only_head_and_top_layers_freeze_the_rest(tiny_encoder: Path, small_csv: Path, tmp_path: Path):
    from llmkit.loading import load

    code, records, stderr = run(
        [
            str(small_csv),
            "-m",
            str(tiny_encoder),
            "-o",
            str(tmp_path / "h"),
            "--train-only",
            "head",
            "--max-steps",
            "3",
            *FAST,
        ]
    )
    assert code == 0, stderr
    before, after = _tensors(tiny_encoder), _tensors(tmp_path / "h")
    for name, value in before.items():
        assert (after["bert." + name] == value).all(), name  # the encoder did not move
    head = load(str(tiny_encoder), "sequence-classification", model_kwargs={"num_labels": 2}).model
    assert final(records)["trainable_parameters"] == sum(p.numel() for p in head.classifier.parameters())

    from llmkit.strategies import train_only_head

    train_only_head(head, 1)
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert any(n.startswith("bert.encoder.layer.1.") for n in trainable)
    assert not any(n.startswith(("bert.encoder.layer.0.", "bert.embeddings.")) for n in trainable)
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= trainable
    code, _, stderr = run(
        [str(small_csv), "-m", str(tiny_encoder), "-o", str(tmp_path / "x"), "--train-only", "top-9"]
    )
    assert code == 2 and "only 2 layers" in stderr


def test_lora_adapters_and_merge(tiny_encoder: Path, small_csv: Path, tmp_path: Path) -> None:
    code, records, stderr = run(
        [
            str(small_csv),
            "-m",
            str(tiny_encoder),
            "-o",
            str(tmp_path / "lora"),
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--lora-targets",
            "query,value",
            "--max-steps",
            "3",
            *FAST,
        ]
    )
    assert code == 0, stderr
    adapter = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], sorted(adapter["target_modules"])) == (
        4,
        8,
        ["query", "value"],
    )
    full_params = final(records)["total_parameters"]
    assert final(records)["trainable_parameters"] < full_params / 2

    code, records, stderr = run(
        [
            str(small_csv),
            "-m",
            str(tiny_encoder),
            "-o",
            str(tmp_path / "merged"),
            "--lora-r",
            "4",
            "--lora-dropout",
            "0.0",
            "--merge-lora",
            "--max-steps",
            "3",
            *FAST,
        ]
    )
    assert code == 0, stderr
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "adapter_config.json" not in names and "model.safetensors" in names
    assert not any("lora" in k for k in _tensors(tmp_path / "merged"))
    from llmkit.loading import load

    assert load(str(tmp_path / "merged"), "sequence-classification").model.config.id2label[1] == "positive"
    code, _, stderr = run([str(small_csv), "-o", str(tmp_path / "y"), "--merge-lora"])
    assert code == 2 and "need --strategy lora" in stderr


def test_resume_after_a_crash_equals_an_uninterrupted_run(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [
        "-m",
        str(tiny_encoder),
        "--max-steps",
        "6",
        "--save-steps",
        "2",
        "--validation-split",
        "0.25",
        *FAST,
    ]
    code, _, stderr = run([str(small_csv), "-o", str(tmp_path / "straight"), *args])
    assert code == 0, stderr

    out = tmp_path / "crashed"

    def crash(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    monkeypatch.setattr(training._ProgressMixin, "on_save", crash, raising=False)
    code, _, stderr = run([str(small_csv), "-o", str(out), *args])
    assert code == 130 and "--resume" in stderr
    assert not out.exists()  # nothing that looks finished
    assert training.last_checkpoint(out).name == "checkpoint-4"
    monkeypatch.undo()

    code, _, stderr = run([str(small_csv), "-o", str(out), *args])
    assert code == 2 and "add --resume" in stderr
    code, records, stderr = run([str(small_csv), "-o", str(out), *args, "--resume"])
    assert code == 0, stderr
    assert final(records)["resumed_from_step"] == 4 and final(records)["steps"] == 6
    straight, resumed = _tensors(tmp_path / "straight"), _tensors(out)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert (straight[name] - resumed[name]).abs().max() < 1e-6, name
    assert not training.checkpoint_dir(out).exists()


def test_dry_run_plans_and_writes_nothing(tiny_encoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    base = [str(SENTIMENT), "-m", str(tiny_encoder), "-o", str(out), "--dry-run", "--json"]
    code, records, stderr = run([*base, "--epochs", "2", "--batch-size", "10", "--validation-split", "0.2"])
    assert code == 0, stderr
    plan = final(records)
    assert plan["rows"] == {"train": 320, "validation": 80} and plan["steps"] == 64 and plan["dry_run"]
    assert (
        plan["labels"] == ["negative", "positive"]
        and plan["trainable_parameters"] == plan["total_parameters"]
    )
    assert not out.exists() and not training.checkpoint_dir(out).exists()
    _, records, _ = run([*base, "--max-steps", "5", "--gradient-accumulation", "4"])
    assert final(records)["steps"] == 5
    _, records, _ = run([*base, "--epochs", "1", "--batch-size", "8", "--gradient-accumulation", "4"])
    assert final(records)["steps"] == 12  # ceil(ceil(360 / 8) / 4)
    small = final(run([*base, "--max-length", "16"])[1])["memory_estimate_bytes"]["activations"]
    large = final(run([*base, "--max-length", "64"])[1])["memory_estimate_bytes"]["activations"]
    assert large > 4 * small
    _, records, _ = run([*base, "--bf16"])
    assert final(records)["precision"] == "bf16"
    code, _, stderr = run([*base, "--fp16"])
    assert code == 2 and "--fp16 needs a GPU" in stderr


def test_config_file_and_flags_that_reach_the_trainer(tiny_encoder: Path, small_csv: Path, tmp_path: Path):
    config = tmp_path / "train.toml"
    config.write_text(
        f'model = "{tiny_encoder}"\nepochs = 9\n[training]\nbatch-size = 2\nweight_decay = 0.5\n'
    )
    out = tmp_path / "cfg"
    code, records, stderr = run(
        [
            str(small_csv),
            "-o",
            str(out),
            "--config",
            str(config),
            "--batch-size",
            "4",
            "--max-steps",
            "4",
            "--gradient-accumulation",
            "2",
            "--warmup-ratio",
            "0.25",
            "--seed",
            "3",
            "--save-total-limit",
            "1",
            "--eval-steps",
            "2",
            "--save-steps",
            "2",
            "--validation-split",
            "0.25",
            "--no-group-by-length",
            "--bf16",
            "--lr",
            "0.002",
            "--json",
        ]
    )
    assert code == 0, stderr
    args = json.loads((out / "training_args.json").read_text())
    assert args["per_device_train_batch_size"] == 4  # the flag beats the file's 2
    assert args["weight_decay"] == 0.5 and args["num_train_epochs"] == 9  # from the file
    assert (args["max_steps"], args["gradient_accumulation_steps"], args["warmup_steps"]) == (4, 2, 0.25)
    assert (args["seed"], args["save_total_limit"], args["eval_steps"], args["save_steps"]) == (3, 1, 2, 2)
    assert (args["learning_rate"], args["train_sampling_strategy"], args["bf16"]) == (0.002, "random", True)
    assert [r["step"] for r in records if r["event"] == "eval"] == [2, 4]
    bad = tmp_path / "bad.toml"
    bad.write_text("epoch = 3\n")
    code, _, stderr = run([str(small_csv), "-o", str(tmp_path / "z"), "--config", str(bad)])
    assert code == 2 and "unknown setting(s) epoch" in stderr


def test_early_stopping_patience_stops_early(tiny_encoder: Path, small_csv: Path, tmp_path: Path) -> None:
    # learning rate 0: the metric never improves, so patience 1 stops after the second evaluation
    code, records, stderr = run(
        [
            str(small_csv),
            "-m",
            str(tiny_encoder),
            "-o",
            str(tmp_path / "e"),
            "--max-steps",
            "20",
            "--eval-steps",
            "2",
            "--early-stopping-patience",
            "1",
            "--validation-split",
            "0.25",
            "--json",
            "--lr",
            "1e-12",
        ]
    )
    assert code == 0, stderr
    assert final(records)["steps"] == 4


def test_text_pair_and_validation_file(tiny_encoder: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a\tb\tlabel\n" + "the cat\ta cat\tsame\nthe dog\tthe sun\tdifferent\n" * 4)
    val = tmp_path / "val.tsv"
    val.write_text("a\tb\tlabel\nthe king\ta king\tsame\n")
    out = tmp_path / "pair"
    code, records, stderr = run(
        [
            str(pairs),
            "-m",
            str(tiny_encoder),
            "-o",
            str(out),
            "--text-column",
            "a",
            "--text-pair-column",
            "b",
            "--validation-file",
            str(val),
            "--max-steps",
            "2",
            *FAST,
        ]
    )
    assert code == 0, stderr
    assert final(records)["rows"] == {"train": 8, "validation": 1}
    assert final(records)["validation"]["per_class"]["same"]["support"] == 1
    code, _, stderr = run(
        [
            str(pairs),
            "-m",
            str(tiny_encoder),
            "-o",
            str(out) + "2",
            "--text-column",
            "a",
            "--text-pair-column",
            "nope",
        ]
    )
    assert code == 3 and "no column 'nope'" in stderr and "columns: a, b, label" in stderr


def test_messy_data_is_skipped_counted_and_reported(tiny_encoder: Path, tmp_path: Path) -> None:
    messy = tmp_path / "messy.csv"
    messy.write_bytes(
        b"text,label\ngood film,pos\n,neg\nbad film,\ncaf\xe9 film,neg\ngreat film,pos\nawful film,neg\n"
    )
    val = tmp_path / "val.csv"
    val.write_text("text,label\ngood,pos\nmeh,neutral\n")
    code, records, stderr = run(
        [
            str(messy),
            "-m",
            str(tiny_encoder),
            "-o",
            str(tmp_path / "m"),
            "--validation-file",
            str(val),
            "--max-steps",
            "1",
            *FAST,
        ]
    )
    assert code == 0, stderr
    assert final(records)["rows"] == {"train": 4, "validation": 1}
    stderr = " ".join(stderr.split())
    assert "skipped 1 row(s) with empty text" in stderr
    assert "skipped 1 row(s) with no label" in stderr
    assert "replaced 1 undecodable byte sequence(s)" in stderr
    assert "label(s) neutral appear only in validation" in stderr
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["data"]["skipped_unseen_label"] == 1 and report["data"]["replaced_bytes"] == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing.csv"], 3, "data file not found"),
        (["{csv}", "--label-column", "stars"], 3, "no column 'stars' in the data (columns: text, label)"),
        (["{csv}", "--task", "poetry"], 2, "unknown --task 'poetry'"),
        (["{csv}", "--train-only", "middle"], 2, "use 'head', 'ffn' or 'top-N'"),
        (["{csv}", "--bf16", "--fp32"], 2, "at most one of --bf16, --fp16, --fp32"),
        (["{csv}", "--batch-size", "0"], 2, "--batch-size must be >= 1"),
        (["{csv}", "--validation-split", "2"], 2, "--validation-split must be between 0 and 1"),
    ],
)
def test_usage_and_data_errors(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path, args, code, message
) -> None:
    args = [a.replace("{csv}", str(small_csv)) for a in args]
    exit_code, _, stderr = run(
        [*args, "-m", str(tiny_encoder), "-o", str(tmp_path / "o"), "--max-steps", "1"]
    )
    assert exit_code == code
    assert message in " ".join(stderr.split()) and "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(tiny_encoder: Path, small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, stderr = run([str(small_csv), "-m", str(tiny_encoder), "-o", str(out), "--max-steps", "1"])
    assert code == 2 and "already exists" in stderr and (out / "keep.txt").exists()
    code, _, stderr = run(
        [str(small_csv), "-m", str(tiny_encoder), "-o", str(out), "--max-steps", "1", "--overwrite", "--json"]
    )
    assert code == 0, stderr
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_lm_column_flags_and_device(tiny_causal_lm: Path, tmp_path: Path) -> None:
    pc = tmp_path / "qa.jsonl"
    pc.write_text(
        "".join(json.dumps({"q": f"what is {a} ?", "a": b}) + "\n" for a, b in [("paris", "france")] * 4)
    )
    base = ["-m", str(tiny_causal_lm), "-o", str(tmp_path / "o"), "--dry-run", "--json"]
    code, records, stderr = run([str(pc), *base, "--prompt-column", "q", "--completion-column", "a"])
    assert code == 0, stderr
    assert final(records)["task"] == "causal-lm"
    code, _, stderr = run([str(pc), *base])  # without the flags nothing names the columns
    assert code == 2 and "cannot tell the task from the columns (q, a)" in " ".join(stderr.split())

    chat = tmp_path / "conv.jsonl"
    chat.write_text(
        json.dumps({"conv": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    )
    code, records, stderr = run([str(chat), *base, "--messages-column", "conv"])
    assert code == 0, stderr
    assert final(records)["task"] == "causal-lm"

    code, _, stderr = run(
        [str(pc), *base, "--prompt-column", "q", "--completion-column", "a", "--device", "cuda"]
    )
    assert code == 4 and "no CUDA device" in stderr


def test_unknown_dataset_id_is_not_found(tmp_path: Path) -> None:
    code, _, stderr = run(["no-such-dataset-xyz", "-o", str(tmp_path / "o")])
    assert code == 3 and "neither a data file nor a dataset" in " ".join(stderr.split())


def test_text_and_rich_formats(tiny_encoder: Path, small_csv: Path, tmp_path: Path) -> None:
    base = ["finetune", str(small_csv), "-m", str(tiny_encoder), "-o", str(tmp_path / "o"), "--dry-run"]
    text = CliRunner().invoke(app, [*base, "--format", "text"])
    assert text.exit_code == 0 and text.stdout.startswith("plan: classification on ")
    rich = CliRunner().invoke(app, [*base, "--format", "rich"])
    assert rich.exit_code == 0 and "Fine-tuning plan" in rich.stdout and "trainable parameters" in rich.stdout
