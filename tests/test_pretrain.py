"""`llmkit pretrain`: tiny BERT and Llama runs end to end, the output in the other commands, bad input, the
plan, --resume, the settings that reach the Trainer, and 2 processes under accelerate."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit import training
from llmkit.pretrain import SIZES
from tests.helpers import invoke, json_lines

ROOT = Path(__file__).resolve().parent.parent
SENTIMENT = Path(__file__).parent / "data" / "sentiment.csv"
LAUNCHER = Path(sys.executable).parent / "accelerate"

# Shapes far below the presets, so a run takes seconds; dropout off so 1 and 2 processes compare exactly.
TINY_CONFIGS = {
    # the architecture of the mlm presets (ModernBERT), so the other commands are tried on what users get
    "mlm": {"model_type": "modernbert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64,
            "layer_types": ["full_attention", "full_attention"]},
    "clm": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 256,
            "tie_word_embeddings": True},  # quantize's llama.cpp check writes 32 tokens after a ~60-token prompt
}  # fmt: skip
FAST = ["--block-size", "32", "--batch-size", "8", "--max-steps", "6", "--eval-steps", "3", "--seed", "0"]


def _texts() -> list[str]:
    with SENTIMENT.open(encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pretrain")
    (folder / "corpus.txt").write_text("\n".join(_texts()) + "\n", encoding="utf-8")
    for objective, config in TINY_CONFIGS.items():
        (folder / f"{objective}.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def run(args: list[str]) -> tuple[int, list[dict], str]:
    result = invoke(["pretrain", *args])
    records = json_lines(result.stdout) if result.stdout.strip() else []
    return result.exit_code, records, result.stderr


def final(records: list[dict]) -> dict:
    return records[-1]


def _base(work: Path, objective: str, vocab: int) -> list[str]:
    return [str(work / "corpus.txt"), "--objective", objective, "--model-config", str(work / f"{objective}.json"),
            "--vocab-size", str(vocab), "--json"]  # fmt: skip


@pytest.fixture(scope="module")
def clm_run(work: Path) -> tuple[Path, dict, str]:
    out = work / "gpt"
    code, records, stderr = run([*_base(work, "clm", 400), *FAST, "-o", str(out)])
    assert code == 0, stderr
    return out, final(records), stderr


@pytest.fixture(scope="module")
def mlm_run(work: Path) -> tuple[Path, dict, str]:
    out = work / "bert"
    code, records, stderr = run([*_base(work, "mlm", 300), *FAST, "-o", str(out)])
    assert code == 0, stderr
    return out, final(records), stderr


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# --- a run and its report -----------------------------------------------------------------------------------------


def test_clm_run_writes_a_model_folder_and_its_report(clm_run: tuple[Path, dict, str]) -> None:
    out, result, stderr = clm_run
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "report.json",
            "training_args.json"} <= {p.name for p in out.iterdir()}  # fmt: skip
    assert not training.checkpoint_dir(out).exists()
    assert result["event"] == "result" and result["objective"] == "clm"
    assert result["architecture"]["model_type"] == "llama" and result["architecture"]["vocab_size"] == 400
    assert result["steps"] == 6 and result["tokens_per_step"] == 8 * 32
    assert result["tokens_seen"] == 6 * 8 * 32
    assert [e["step"] for e in result["evaluations"]] == [0, 3, 6]
    assert [e["tokens"] for e in result["evaluations"]] == [0, 3 * 256, 6 * 256]
    before, after = result["perplexity_before"], result["perplexity_after"]
    assert 200 < before < 800  # an untrained model is about as unsure as the vocabulary is large
    assert after < before
    assert result["tokens_per_second"] > 0 and 0 <= result["eval_seconds"] < result["train_seconds"]
    assert set(result["sample"]) == {"prompt", "completion"} and result["sample"]["completion"]
    assert stderr.startswith("model: llama (")
    assert "tokens/s" in stderr and "step 0: loss" in stderr and "perplexity" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["result"]["evaluations"] == result["evaluations"]
    assert report["corpus"]["texts"] == 400 and report["validation"]["blocks"] == result["blocks"]["validation"]
    assert report["log"] and all("loss" in r for r in report["log"])
    assert report["task"] == "causal-lm"
    assert [(e["step"], e["eval_perplexity"]) for e in report["evaluations"]] == [
        (e["step"], e["perplexity"]) for e in result["evaluations"]
    ]
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")  # drawn from that report (llmkit plot's figure)
    assert f"Curves: {out / 'curves.png'}" in stderr


def test_the_saved_tokenizer_and_model_load_with_auto_classes(clm_run: tuple[Path, dict, str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = clm_run
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(tok).__name__ == "GPT2Tokenizer" and len(tok) == model.config.vocab_size == 400
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert tok.decode(tok("this film is fun !")["input_ids"]) == "this film is fun !"


def test_clm_output_works_in_generate_finetune_distill_and_quantize(
    clm_run: tuple[Path, dict, str], work: Path, tmp_path: Path
) -> None:
    out = str(clm_run[0])
    result = invoke(["generate", "--model", out, "this film", "--max-new-tokens", "5", "--seed", "0", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json_lines(result.stdout)[0]["text"]
    result = invoke(["finetune", str(SENTIMENT), "-m", out, "--task", "causal-lm", "--max-steps", "1",
                     "-o", str(tmp_path / "ft"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = invoke(["distill", str(work / "corpus.txt"), "--teacher", out, "--student-layers", "1", "--max-steps",
                     "1", "-o", str(tmp_path / "small"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = invoke(["quantize", "-m", out, "--method", "int8-weight", "--eval-data", str(work / "corpus.txt"),
                     "-o", str(tmp_path / "q"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = invoke(["quantize", "-m", out, "--method", "gguf", "--eval-data", str(work / "corpus.txt"),
                     "-o", str(tmp_path / "q.gguf"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "q.gguf").stat().st_size > 0


def test_mlm_run_reports_a_cloze_and_works_in_fill_mask_finetune_distill_quantize_embed(
    mlm_run: tuple[Path, dict, str], work: Path, tmp_path: Path
) -> None:
    out, result, stderr = mlm_run
    assert stderr.startswith("model: modernbert (")
    assert result["architecture"]["model_type"] == "modernbert"
    assert result["perplexity_after"] < result["perplexity_before"]
    cloze = result["sample"]
    assert "[MASK]" in cloze["text"] and len(cloze["top"]) == 5 and cloze["answer"]
    folder = str(out)
    done = invoke(["fill-mask", "--model", folder, "this film is [MASK] .", "--top-k", "3", "--json"])
    assert done.exit_code == 0, done.stderr
    assert len(json_lines(done.stdout)[0]["masks"][0]) == 3
    done = invoke(["finetune", str(SENTIMENT), "-m", folder, "--max-steps", "2", "-o", str(tmp_path / "cls"),
                   "--json"])  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert json.loads((tmp_path / "cls" / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    done = invoke(["distill", str(work / "corpus.txt"), "--teacher", folder, "--student-layers", "1", "--max-steps",
                   "1", "-o", str(tmp_path / "small"), "--json"])  # fmt: skip
    assert done.exit_code == 0, done.stderr
    done = invoke(["quantize", "-m", folder, "--method", "int8-weight", "--eval-data", str(work / "corpus.txt"),
                   "-o", str(tmp_path / "q"), "--json"])  # fmt: skip
    assert done.exit_code == 0, done.stderr
    # embed: no sentence-transformers files, so mean pooling of the encoder's last hidden states
    done = invoke(["embed", "--model", folder, "this film is fun", "a dull plot", "--json"])
    assert done.exit_code == 0, done.stderr
    rows = json_lines(done.stdout)
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    with torch.inference_mode():
        hidden = encoder(**tok(["this film is fun"], return_tensors="pt")).last_hidden_state
    assert [(r["pooling"], r["dimension"]) for r in rows] == [("mean", TINY_CONFIGS["mlm"]["hidden_size"])] * 2
    assert rows[0]["embedding"] == pytest.approx(hidden[0].mean(0).tolist(), abs=1e-4)


# --- bad input: one line, exit 2, nothing written -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "no text to pre-train on"),
        ("one-block", "fewer than one block of 128; add text or lower --block-size"),
        ("alphabet-clm", "--vocab-size 100 is below the tokenizer's alphabet (258 tokens"),
        ("alphabet-mlm", "--vocab-size 20 is below the tokenizer's alphabet ("),
        ("preset", "unknown --size 'huge'; use one of tiny, small, base"),
        ("objective", "give --objective mlm"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(work: Path, tmp_path: Path, case: str, message: str) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text({"empty": "\n\n", "one-block": "just a few words here\n"}.get(case, "\n".join(_texts()[:50])))
    args = {
        "empty": ["--objective", "clm"],
        "one-block": ["--objective", "clm"],
        "alphabet-clm": ["--objective", "clm", "--vocab-size", "100"],
        "alphabet-mlm": ["--objective", "mlm", "--vocab-size", "20"],
        "preset": ["--objective", "mlm", "--size", "huge"],
        "objective": [],
    }[case]
    out = tmp_path / "out"
    code, records, stderr = run([str(corpus), *args, "-o", str(out)])
    assert code == 2, stderr
    assert stderr.startswith("Error: ") and message in stderr and len(stderr.strip().splitlines()) == 1
    assert records == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]  # no output, no checkpoints, no staging


def test_a_model_config_without_the_objectives_head_is_refused(work: Path, tmp_path: Path) -> None:
    config = tmp_path / "t5.json"
    config.write_text(json.dumps({"model_type": "t5", "d_model": 32, "num_layers": 1, "num_heads": 2}))
    code, _, stderr = run([str(work / "corpus.txt"), "--objective", "mlm", "--model-config", str(config),
                           "--vocab-size", "300", "-o", str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and "has no masked-LM head" in stderr
    assert not (tmp_path / "o").exists() and not training.checkpoint_dir(tmp_path / "o").exists()
    code, _, stderr = run([str(work / "corpus.txt"), "--objective", "mlm", "--model-config", str(work / "mlm.json"),
                           "--size", "small", "--dry-run"])  # fmt: skip
    assert code == 2 and "give --size or --model-config, not both" in stderr


# --- the plan ----------------------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    base = [str(work / "corpus.txt"), "--vocab-size", "400", "-o", str(out), "--dry-run", "--json"]
    code, records, stderr = run([*base, "--objective", "clm", "--block-size", "32", "--batch-size", "4",
                                 "--gradient-accumulation", "2", "--validation-split", "0.1"])  # fmt: skip
    assert code == 0, stderr
    plan = final(records)
    assert plan["event"] == "plan" and plan["dry_run"]
    assert plan["tokens_per_step"] == 4 * 2 * 32
    train_blocks = plan["blocks"]["train"]
    assert plan["blocks"]["validation"] == round(0.1 * (train_blocks + plan["blocks"]["validation"]))
    assert plan["steps"] == math.ceil(math.ceil(train_blocks / 4) / 2)  # one epoch
    assert plan["total_tokens"] == plan["steps"] * plan["tokens_per_step"]
    shape = SIZES["clm"]["tiny"]
    assert stderr.startswith(f"model: llama (tiny): {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}")
    hidden, ffn, vocab = shape["hidden_size"], shape["intermediate_size"], plan["architecture"]["vocab_size"]
    per_layer = 4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden  # attention, SwiGLU, two RMSNorms
    expected = shape["num_hidden_layers"] * per_layer + vocab * hidden + hidden  # tied embeddings, final norm
    assert plan["architecture"]["parameters"] == expected and plan["precision"] == "fp32"
    assert not out.exists() and not training.checkpoint_dir(out).exists()

    _, records, _ = run([*base, "--objective", "mlm", "--size", "small"])
    small_plan = final(records)
    small = small_plan["architecture"]
    _, records, _ = run([*base, "--objective", "mlm", "--size", "tiny"])
    tiny_plan = final(records)
    tiny = tiny_plan["architecture"]
    # batch size and learning rate go with the size (SIZE_TRAIN_DEFAULTS) and, for the tiny BERT, the objective
    # (OBJECTIVE_TRAIN_DEFAULTS); flags win
    assert (tiny_plan["batch_size"], tiny_plan["learning_rate"]) == (8, 1e-3)
    _, records, _ = run([*base, "--objective", "clm", "--size", "tiny"])
    assert (final(records)["batch_size"], final(records)["learning_rate"]) == (8, 3e-3)
    assert (small_plan["batch_size"], small_plan["learning_rate"]) == (16, 1e-3)
    assert tiny_plan["tokens_per_step"] == 8 * 128
    _, records, _ = run([*base, "--objective", "mlm", "--size", "base", "--lr", "1e-4", "-b", "2"])
    assert (final(records)["batch_size"], final(records)["learning_rate"]) == (2, 1e-4)
    assert (small["hidden"], small["layers"]) == (512, 4) and (tiny["hidden"], tiny["layers"]) == (128, 2)
    assert small["parameters"] > 2 * tiny["parameters"] and small["context"] == 128
    _, records, _ = run([*base, "--objective", "mlm", "--epochs", "3"])
    three = final(records)
    _, records, _ = run([*base, "--objective", "mlm", "--epochs", "1"])
    assert three["steps"] == 3 * final(records)["steps"]
    _, records, _ = run([*base, "--objective", "mlm", "--max-steps", "7"])
    assert final(records)["steps"] == 7
    _, records, _ = run([*base, "--objective", "mlm", "--bf16"])
    assert final(records)["precision"] == "bf16"
    code, _, stderr = run([*base, "--objective", "mlm", "--fp16"])
    assert code == 2 and "--fp16 needs a GPU" in stderr


def test_config_file_fills_what_the_flags_leave(work: Path, tmp_path: Path) -> None:
    config = tmp_path / "pretrain.toml"
    config.write_text('objective = "clm"\nblock_size = 16\nvocab_size = 450\n[training]\nbatch-size = 2\n')
    base = [str(work / "corpus.txt"), "--config", str(config), "--dry-run", "--json"]
    code, records, stderr = run(base)
    assert code == 0, stderr
    plan = final(records)
    assert plan["architecture"]["vocab_size"] == 450 and plan["tokens_per_step"] == 2 * 16
    _, records, _ = run([*base, "--vocab-size", "300", "--block-size", "8"])
    plan = final(records)
    assert plan["architecture"]["vocab_size"] == 300 and plan["architecture"]["context"] == 8
    config.write_text('objective = "clm"\nblocksize = 16\n')
    code, _, stderr = run(base)
    assert code == 2 and "unknown setting(s) blocksize" in stderr


def test_a_table_corpus_and_a_reused_tokenizer(work: Path, tmp_path: Path, tiny_causal_lm: Path) -> None:
    from transformers import AutoTokenizer

    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(_texts())))
    out = tmp_path / "reused"
    code, records, stderr = run([str(table), "--text-column", "body", "--objective", "clm", "--tokenizer",
                                 str(tiny_causal_lm), "--model-config", str(work / "clm.json"), "--max-steps", "2",
                                 "--block-size", "16", "-o", str(out), "--json"])  # fmt: skip
    assert code == 0, stderr
    result = final(records)
    assert result["tokenizer"] == f"reused from {tiny_causal_lm}"
    original, saved = AutoTokenizer.from_pretrained(str(tiny_causal_lm)), AutoTokenizer.from_pretrained(str(out))
    assert saved.get_vocab() == original.get_vocab() and result["architecture"]["vocab_size"] == len(original)
    assert json.loads((out / "report.json").read_text())["corpus"]["texts"] == 400
    code, _, stderr = run([str(table), "--objective", "clm", "--dry-run"])
    assert code == 3 and "no column 'text'" in stderr
    original.save_pretrained(str(tmp_path / "tokenizer-only"))  # a folder of tokenizer files, no model
    code, records, stderr = run([str(table), "--text-column", "body", "--objective", "clm", "--tokenizer",
                                 str(tmp_path / "tokenizer-only"), "--dry-run", "--json"])  # fmt: skip
    assert code == 0, stderr
    assert final(records)["architecture"]["vocab_size"] == len(original)


# --- settings that reach the Trainer -------------------------------------------------------------------------------


def test_training_flags_reach_the_trainer(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llmkit.pretrain

    kept: list[bool] = []  # a CPU run keeps freed memory in the process (allocator.py); a plan does not
    monkeypatch.setattr(llmkit.pretrain, "keep_freed_memory", lambda: kept.append(True) or True)
    code, _, stderr = run([*_base(work, "clm", 300), "--device", "cpu", "--dry-run"])
    assert code == 0 and kept == [], stderr
    out = tmp_path / "flags"
    code, records, stderr = run([
        *_base(work, "clm", 300), "--block-size", "16", "--batch-size", "4", "--max-steps", "2", "--lr", "0.003",
        "--warmup-ratio", "0.25", "--weight-decay", "0.1", "--gradient-accumulation", "2", "--save-total-limit", "3",
        "--validation-split", "0.2", "--seed", "5", "--device", "cpu", "--fp32", "-o", str(out),
    ])  # fmt: skip
    assert code == 0, stderr
    assert kept == [True]
    args = json.loads((out / "training_args.json").read_text())
    assert (args["learning_rate"], args["warmup_steps"], args["weight_decay"]) == (0.003, 0.25, 0.1)
    assert (args["gradient_accumulation_steps"], args["save_total_limit"], args["seed"]) == (2, 3, 5)
    assert args["use_cpu"] is True and args["per_device_train_batch_size"] == 4
    blocks = final(records)["blocks"]
    assert blocks["validation"] == round(0.2 * (blocks["train"] + blocks["validation"]))


def test_seed_and_mlm_probability_change_the_run(work: Path, tmp_path: Path) -> None:
    def before(seed: str, probability: str | None) -> tuple[float, int]:
        out = tmp_path / f"s{seed}-{probability}"
        rate = ["--mlm-probability", probability] if probability else []
        code, records, stderr = run([*_base(work, "mlm", 300), "--block-size", "32", "--max-steps", "1", "--seed",
                                     seed, *rate, "-o", str(out)])  # fmt: skip
        assert code == 0, stderr
        report = json.loads((out / "report.json").read_text())
        return final(records)["perplexity_before"], report["validation"]["scored_tokens"]

    first, masked_15 = before("1", "0.15")
    second, _ = before("2", "0.15")
    _, masked_45 = before("1", "0.45")
    assert first != second  # another initialisation
    assert 2 * masked_15 < masked_45 < 4 * masked_15
    _, masked_default = before("1", None)
    assert 1.5 * masked_15 < masked_default < 2.5 * masked_15  # the default masks 30%, twice BERT's 15%


def test_the_mlm_presets_are_modernbert_with_whole_block_attention_and_no_dropout(tmp_path: Path) -> None:
    # BERT's learned absolute positions kept a tiny BERT at the unigram plateau (benchmarks/pretrain_mlm_check.py)
    from llmkit.pretrain import PretrainOptions, model_config
    from llmkit.tokenizer_training import train_tokenizer

    tokenizer = train_tokenizer(_texts(), "mlm", 300, max_length=32)
    for size, shape in SIZES["mlm"].items():
        config = model_config(PretrainOptions(objective="mlm", size=size, block_size=32), tokenizer)
        assert config.model_type == "modernbert"
        assert (config.num_hidden_layers, config.hidden_size) == (shape["num_hidden_layers"], shape["hidden_size"])
        assert config.layer_types == ["full_attention"] * shape["num_hidden_layers"]
        assert (config.attention_dropout, config.mlp_dropout, config.embedding_dropout) == (0.0, 0.0, 0.0)
        assert (config.vocab_size, config.max_position_embeddings) == (len(tokenizer), 32)
        assert (config.pad_token_id, config.cls_token_id, config.sep_token_id) == (
            tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)  # fmt: skip
    # --model-config: ModernBERT's own cls/sep ids (50281, 50282) are replaced by the tokenizer's
    config_file = tmp_path / "modernbert.json"
    config_file.write_text(json.dumps(TINY_CONFIGS["mlm"]), encoding="utf-8")
    config = model_config(PretrainOptions(objective="mlm", model_config=str(config_file), block_size=32), tokenizer)
    assert (config.cls_token_id, config.sep_token_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)


def test_existing_output_needs_overwrite(clm_run: tuple[Path, dict, str], work: Path) -> None:
    out = clm_run[0]
    before = _tensors(out)
    code, _, stderr = run([*_base(work, "clm", 400), *FAST, "-o", str(out)])
    assert code == 2 and "already exists" in stderr
    code, _, stderr = run([*_base(work, "clm", 300), *FAST, "-o", str(out), "--overwrite"])
    assert code == 0, stderr
    after = _tensors(out)
    assert after["model.embed_tokens.weight"].shape[0] == 300 != before["model.embed_tokens.weight"].shape[0]


# --- resume ------------------------------------------------------------------------------------------------------


def test_resume_after_a_crash_equals_an_uninterrupted_run(
    work: Path, tmp_path: Path, tiny_mlm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reused tokenizer, so the two runs compared share one: the WordPiece trainer is not repeatable (see
    # tokenizer_training.py). The resumed run takes its tokenizer from the checkpoint.
    args = [*_base(work, "mlm", 300), "--tokenizer", str(tiny_mlm), "--block-size", "32", "--batch-size", "8",
            "--max-steps", "6", "--save-steps", "2", "--eval-steps", "3"]  # fmt: skip
    code, _, stderr = run([*args, "-o", str(tmp_path / "straight")])
    assert code == 0, stderr

    out = tmp_path / "crashed"

    def crash(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    monkeypatch.setattr(training._ProgressMixin, "on_save", crash, raising=False)
    code, _, stderr = run([*args, "-o", str(out)])
    assert code == 130 and "--resume" in stderr
    assert not out.exists()
    assert training.last_checkpoint(out).name == "checkpoint-4"
    monkeypatch.undo()

    code, _, stderr = run([*args, "-o", str(out)])
    assert code == 2 and "add --resume" in stderr
    code, records, stderr = run([*args, "-o", str(out), "--resume"])
    assert code == 0, stderr
    resumed = final(records)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 6
    assert [e["step"] for e in resumed["evaluations"]] == [0, 3, 6]  # the earlier ones come from the checkpoint
    straight_tensors, resumed_tensors = _tensors(tmp_path / "straight"), _tensors(out)
    assert straight_tensors.keys() == resumed_tensors.keys()
    for name in straight_tensors:
        assert (straight_tensors[name] - resumed_tensors[name]).abs().max() < 1e-6, name
    assert not training.checkpoint_dir(out).exists()


def test_report_to_tensorboard_logs_the_run_under_its_name_and_plot_draws_it(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpt"
    code, records, stderr = run([*_base(work, "clm", 300), *FAST, "-o", str(out), "--report-to", "tensorboard",
                                 "--run-name", "pre-1"])  # fmt: skip
    assert code == 0, stderr
    losses = {r["step"]: r["loss"] for r in records if r.get("event") == "log" and "loss" in r}
    evals = {e["step"]: e["loss"] for e in final(records)["evaluations"]}
    assert losses and sorted(evals) == [0, 3, 6]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(out / "runs" / "pre-1"))  # OUTPUT/runs/<--run-name>
    board.Reload()
    train = {e.step: e.value for e in board.Scalars("train/loss")}
    assert train.keys() == losses.keys() and all(train[s] == pytest.approx(losses[s], abs=1e-4) for s in losses)
    assert {e.step: e.value for e in board.Scalars("eval/loss")} == pytest.approx(evals, abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt"]  # the log moved in; no checkpoints left
    assert "Log for tensorboard: tensorboard --logdir" in stderr

    picture = tmp_path / "again.png"
    result = invoke(["plot", str(out), "-o", str(picture), "--json"])
    assert result.exit_code == 0, result.stderr
    drawn = json_lines(result.stdout)[-1]
    # the validation panel holds the perplexity of report.json's evaluations
    assert drawn["runs"] == ["gpt"] and drawn["panels"] == ["Loss", "Learning rate", "Validation metrics"]
    assert picture.read_bytes().startswith(b"\x89PNG")


# --- two processes -------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not LAUNCHER.exists() and shutil.which("accelerate") is None, reason="no accelerate CLI")
def test_one_process_of_a_cpu_launch_is_the_main_one(tmp_path: Path) -> None:
    # The main process alone trains and saves the tokenizer, before the Trainer exists. A bare PartialState()
    # made every rank of a CPU launch its own main process: both trained a tokenizer (WordPiece numbers tokens
    # differently from run to run) and both replaced OUTPUT.checkpoints/tokenizer at once ("Directory not
    # empty" from rmtree).
    script = tmp_path / "ranks.py"
    # one write per rank, line and newline together: the launcher runs the ranks unbuffered on one pipe, and
    # print()'s separate writes of each argument interleaved ("rankrank 0  12 ...") in about half the runs
    script.write_text("import os\nfrom llmkit.pretrain import process_state\nstate = process_state('cpu')\n"
                      "line = f\"rank {os.environ['RANK']} {state.num_processes} {state.process_index} "
                      "{state.is_main_process}\\n\"\n"
                      "os.write(1, line.encode())\n")  # fmt: skip
    cmd = [str(LAUNCHER if LAUNCHER.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), str(script)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert lines == ["rank 0 2 0 True", "rank 1 2 1 False"]


@pytest.mark.skipif(not LAUNCHER.exists() and shutil.which("accelerate") is None, reason="no accelerate CLI")
def test_two_processes_train_the_same_model_as_one(work: Path, tmp_path: Path) -> None:
    # 2 x 4 blocks against 1 x 8: the same global batches and masks. The 2-process run trains the tokenizer
    # once, in the main process; the 1-process run reuses it (WordPiece training is not repeatable, so a second
    # process training its own could number tokens differently and the weights would not match).
    # (This compared at 15% masking for a while: at 30% it failed in 4 of 6 runs. The cause was not the masking
    # rate: both processes were each their own main process while the tokenizer was made, so each trained its
    # own WordPiece, and rank 1 trained on token ids numbered differently from the saved tokenizer's.)
    args = ["pretrain", *_base(work, "mlm", 300), "--block-size", "32", "--max-steps", "3", "--eval-steps", "3",
            "--seed", "0"]  # fmt: skip
    two_out = tmp_path / "two"
    cmd = [str(LAUNCHER if LAUNCHER.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), "-m", "llmkit", *args, "-o", str(two_out), "--batch-size", "4"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    two = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    records = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    results = [r for r in records if r.get("event") == "result"]
    assert len(results) == 1 and results[0]["processes"] == 2  # the main process alone reports
    assert two.stderr.count("model: modernbert") == 1
    one = invoke([*args, "--tokenizer", str(two_out), "-o", str(tmp_path / "one"), "--batch-size", "8"])
    assert one.exit_code == 0, one.stderr
    single = json_lines(one.stdout)[-1]
    assert results[0]["tokens_per_step"] == single["tokens_per_step"] == 8 * 32
    # Evaluation losses are means of batch means, and the batches differ with the process count: steps only.
    assert [e["step"] for e in results[0]["evaluations"]] == [e["step"] for e in single["evaluations"]] == [0, 3]
    # The same batches and masks: the training losses agree to float32 rounding.
    assert results[0]["train_loss"] == pytest.approx(single["train_loss"], abs=1e-5)
    logs = [json.loads((out / "report.json").read_text())["log"] for out in (two_out, tmp_path / "one")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], abs=1e-4)
    # The weights: the 2-process gradient is an all-reduced mean, summed in another order, so it agrees to
    # rounding; but Adam divides by sqrt(v), and where a gradient is itself rounding-sized (attention query/key
    # weights at initialisation, whose softmax is nearly flat) the update is rounding noise scaled to a step
    # (differences up to 1.4e-3 seen there at lr 1e-3). Every other weight agrees to ~1e-7: the median.
    import torch

    one_tensors, two_tensors = _tensors(tmp_path / "one"), _tensors(two_out)
    assert one_tensors.keys() == two_tensors.keys()
    difference = torch.cat([(one_tensors[name] - two_tensors[name]).abs().flatten() for name in one_tensors])
    assert difference.median() < 1e-6, difference.median()
