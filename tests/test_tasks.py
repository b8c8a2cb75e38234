"""One task detector (llmkit.tasks): the same answer for every command, and the three cases it fixed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import invoke, json_lines

from llmkit import tasks


def _config(*archs: str, model_type: str = "", encoder_decoder: bool = False) -> SimpleNamespace:
    return SimpleNamespace(architectures=list(archs), model_type=model_type, is_encoder_decoder=encoder_decoder)


@pytest.mark.parametrize(
    ("config", "head"),
    [
        (_config("GPT2LMHeadModel", model_type="gpt2"), "causal-lm"),  # gpt2's own class: no "ForCausalLM"
        (_config("LlamaForCausalLM", model_type="llama"), "causal-lm"),
        (_config("BertForMaskedLM", model_type="bert"), "masked-lm"),
        (_config("BertForSequenceClassification", model_type="bert"), "sequence-classification"),
        (_config("T5ForConditionalGeneration", model_type="t5", encoder_decoder=True), "seq2seq-lm"),
        (_config("BertModel", model_type="bert"), "base"),
        (_config("BertForPreTraining", model_type="bert"), "masked-lm"),  # MLM (+ NSP) head: one answer
        (_config("ElectraForPreTraining", model_type="electra"), "masked-lm"),
        (_config("MyOwnForCausalLM", model_type="remote"), "causal-lm"),  # unknown to transformers: by suffix
        (_config(model_type="t5", encoder_decoder=True), "seq2seq-lm"),
        (_config(), "base"),
    ],
)
def test_head_of_reads_the_auto_mappings(config: SimpleNamespace, head: str) -> None:
    assert tasks.head_of(config) == head


def test_family_of_says_what_finetune_trains() -> None:
    assert tasks.family_of(_config("BertModel", model_type="bert")) == "masked-lm"  # a base encoder
    assert tasks.family_of(_config("GPT2Model", model_type="gpt2")) == "causal-lm"
    assert tasks.family_of(_config("BertForSequenceClassification", model_type="bert")) == "sequence-classification"


def test_training_tasks_and_load_tasks_are_one_vocabulary() -> None:
    assert [tasks.load_task(t) for t in tasks.TRAINING_TASKS] == [
        "sequence-classification", "sequence-classification", "causal-lm", "masked-lm"]
    assert tasks.training_task("sequence-classification") == "classification"
    assert tasks.training_task("base") is None
    with pytest.raises(tasks.UsageError):
        tasks.load_task("summarization")


def test_importing_tasks_does_not_import_torch() -> None:
    code = "import sys, llmkit.tasks, llmkit.metrics; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_every_command_gets_the_same_head(tiny_mlm: Path, tiny_causal_lm: Path, tiny_classifier: Path) -> None:
    from llmkit import distill, loading

    for model, head in ((tiny_mlm, "masked-lm"), (tiny_causal_lm, "causal-lm"), (tiny_classifier, "sequence-classification")):
        assert loading.detect_task(str(model)) == head
        assert loading.model_heads(str(model))[0] == head
        assert distill.detect_task(loading.read_config(str(model))) == tasks.training_task(head)


# --- item 8: no silent guessing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tiny
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny.lm_tokenizer(chat=False)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=tiny.HIDDEN, n_layer=tiny.LAYERS, n_head=tiny.HEADS,
                        n_positions=tiny.MAX_POSITIONS, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tiny._save(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("gpt2") / "gpt2")


def test_fill_mask_on_a_gpt2_lm_head_model_uses_the_causal_lm_method(tiny_gpt2: Path) -> None:
    result = invoke(["fill-mask", "-m", str(tiny_gpt2), "--targets", "capital,city", "--json",
                     "paris is the [MASK] of france ."])
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["method"] == "causal-lm"
    assert {f["token"] for f in record["masks"][0]} == {"capital", "city"}


def test_generate_on_a_masked_lm_exits_2_with_a_clear_message(tiny_mlm: Path) -> None:
    result = invoke(["generate", "-m", str(tiny_mlm), "--max-new-tokens", "3", "hello"])
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "masked-lm model and cannot generate" in result.stderr and "fill-mask" in result.stderr
    assert "Traceback" not in result.stderr


def test_finetune_of_a_classifier_without_label_column_asks_for_one(tiny_classifier: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,sentiment\ngood film,pos\nbad film,neg\nfine,pos\nawful,neg\nnice,pos\n", encoding="utf-8")
    result = invoke(["finetune", "-m", str(tiny_classifier), str(data), "-o", str(tmp_path / "out"),
                     "--max-steps", "1"])
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    message = " ".join(result.stderr.split())
    assert "columns: text, sentiment" in message and "--label-column" in message and "--task" in message
    assert not (tmp_path / "out").exists()
    # the fix it names works: the same table with --label-column trains a classifier
    result = invoke(["finetune", "-m", str(tiny_classifier), str(data), "-o", str(tmp_path / "out"),
                     "--label-column", "sentiment", "--max-steps", "1", "--dry-run", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json_lines(result.stdout)[-1]["task"] == "classification"
