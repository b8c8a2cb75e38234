"""llmkit.adapters on tiny checkpoints: adapters load unmerged on their base, equal the merged model (LoRA),
change the outputs (prompt, prefix), generate with their virtual tokens kept, and quantize's refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch

from llmkit.adapters import (
    ADAPTER_EXTRAS,
    generation_inputs,
    is_adapter_dir,
    load_adapter,
    merge_adapter,
    read_adapter,
    refuse_unmergeable,
    save_adapter,
)
from llmkit.errors import EXIT_USAGE, ModelNotFoundError, UsageError
from llmkit.strategies import build_peft_model

LABELS = {0: "negative", 1: "positive"}
LOAD = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def peaked_lm(tmp_path_factory: pytest.TempPathFactory, tiny_causal_lm: Path) -> Path:
    """The tiny Llama with weights scaled up: peaked next-token choices, so greedy paths have no near-ties."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    path = tmp_path_factory.mktemp("peaked") / "lm"
    model.save_pretrained(str(path))
    tiny.lm_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def sharp_classifier(tmp_path_factory: pytest.TempPathFactory, tiny_classifier: Path) -> Path:
    """The tiny classifier with a sharpened head (a random one gives near-equal logits for every text)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier))
    with torch.no_grad():
        model.classifier.weight.mul_(100.0)
    path = tmp_path_factory.mktemp("sharp") / "classifier"
    model.save_pretrained(str(path))
    tiny.bert_tokenizer().save_pretrained(str(path))
    return path


def _randomize_adapter(model) -> None:
    """Give the adapter weights that matter (LoRA's B starts at zero: an untrained adapter changes nothing)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "prompt_encoder" in name:
                p.normal_(0.0, 0.5)


def _make_adapter(base: Path, strategy: str, task: str, folder: Path, **kwargs) -> Path:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    model = build_peft_model(auto.from_pretrained(str(base)), strategy, task, **kwargs)
    _randomize_adapter(model)
    save_adapter(model, folder, base_spec=str(base), id2label=LABELS if task == "classification" else None)
    return folder


def _bert_batch():
    return tiny.bert_tokenizer()(["the movie was good", "a terrible boring film"], padding=True, return_tensors="pt")


def _lm_ids():
    return tiny.lm_tokenizer()(["the movie was good"], return_tensors="pt")


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_adapter_folder_is_recognised_and_read(tmp_path: Path, sharp_classifier: Path) -> None:
    folder = _make_adapter(sharp_classifier, "prompt-tuning", "classification", tmp_path / "a", num_virtual_tokens=5)
    assert is_adapter_dir(folder) and not is_adapter_dir(sharp_classifier)
    info = read_adapter(folder)
    assert (info.kind, info.base, info.task_type, info.num_virtual_tokens) == (
        "prompt-tuning", str(sharp_classifier), "SEQ_CLS", 5)
    assert info.id2label == LABELS and info.load_task == "sequence-classification"
    assert info.is_prompt_learning


def test_lora_classifier_equals_merged_and_differs_from_base(tmp_path: Path, sharp_classifier: Path) -> None:
    folder = _make_adapter(sharp_classifier, "lora", "classification", tmp_path / "lora")
    loaded = load_adapter(folder, "sequence-classification", **LOAD)
    assert type(loaded.model).__name__ == "PeftModelForSequenceClassification"  # not merged
    assert loaded.model.config.id2label == LABELS
    batch = _bert_batch()
    with_adapter = _logits(loaded.model, batch)

    merged = merge_adapter(load_adapter(folder, "sequence-classification", **LOAD).model)
    assert type(merged).__name__ == "BertForSequenceClassification"
    torch.testing.assert_close(_logits(merged, batch), with_adapter, atol=1e-4, rtol=1e-4)

    from llmkit.loading import load

    base = load(str(sharp_classifier), "sequence-classification", **LOAD).model
    assert (with_adapter - _logits(base, batch)).abs().max() > 1e-2


def test_lora_causal_lm_equals_merged_and_differs_from_base(tmp_path: Path, peaked_lm: Path) -> None:
    folder = _make_adapter(peaked_lm, "lora", "causal-lm", tmp_path / "lora-lm")
    loaded = load_adapter(folder, "causal-lm", **LOAD)
    batch = _lm_ids()
    with_adapter = _logits(loaded.model, batch)
    merged = merge_adapter(load_adapter(folder, "causal-lm", **LOAD).model)
    torch.testing.assert_close(_logits(merged, batch), with_adapter, atol=1e-3, rtol=1e-4)

    from llmkit.loading import load

    base = load(str(peaked_lm), "causal-lm", **LOAD).model
    assert (with_adapter - _logits(base, batch)).abs().max() > 1e-2


@pytest.mark.parametrize("strategy", ["prompt-tuning", "prefix-tuning"])
def test_prompt_adapters_on_a_classifier_load_and_change_the_outputs(
    tmp_path: Path, sharp_classifier: Path, strategy: str
) -> None:
    folder = _make_adapter(sharp_classifier, strategy, "classification", tmp_path / strategy, num_virtual_tokens=4)
    loaded = load_adapter(folder, "sequence-classification", **LOAD)
    batch = _bert_batch()
    with_adapter = _logits(loaded.model, batch)
    assert with_adapter.shape == (2, 2)

    from llmkit.loading import load

    base = load(str(sharp_classifier), "sequence-classification", **LOAD).model
    assert (with_adapter - _logits(base, batch)).abs().max() > 1e-2
    # reloading gives the same numbers: the adapter's weights came from the folder, not from a fresh init
    again = load_adapter(folder, "sequence-classification", **LOAD)
    torch.testing.assert_close(_logits(again.model, batch), with_adapter)


def _greedy_without_cache(model, ids: torch.Tensor, steps: int) -> list[int]:
    """The reference: the full forward pass (virtual tokens included by peft) at every step, no KV cache."""
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[0].tolist()


@pytest.mark.parametrize("strategy", ["prompt-tuning", "prefix-tuning"])
def test_prompt_adapters_generate_with_their_virtual_tokens(tmp_path: Path, peaked_lm: Path, strategy: str) -> None:
    folder = _make_adapter(peaked_lm, strategy, "causal-lm", tmp_path / strategy, num_virtual_tokens=4)
    model = load_adapter(folder, "causal-lm", **LOAD).model
    batch = _lm_ids()
    steps = 5
    expected = _greedy_without_cache(model, batch["input_ids"], steps)

    inputs = generation_inputs(model, batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        out = inputs.model.generate(**inputs.kwargs, max_new_tokens=steps, do_sample=False)
    prompt_len = batch["input_ids"].shape[1]
    new = out[0, prompt_len:] if inputs.echoes_prompt else out[0]
    assert batch["input_ids"][0].tolist() + new.tolist() == expected

    from llmkit.loading import load

    base = load(str(peaked_lm), "causal-lm", **LOAD).model
    assert _greedy_without_cache(base, batch["input_ids"], steps) != expected  # the adapter changes the text


def test_generation_inputs_pass_plain_and_lora_models_through(tmp_path: Path, peaked_lm: Path) -> None:
    folder = _make_adapter(peaked_lm, "lora", "causal-lm", tmp_path / "lora")
    model = load_adapter(folder, "causal-lm", **LOAD).model
    batch = _lm_ids()
    inputs = generation_inputs(model, batch["input_ids"], batch["attention_mask"])
    assert inputs.model is model and inputs.echoes_prompt
    assert set(inputs.kwargs) == {"input_ids", "attention_mask"}


def test_base_given_beside_the_adapter_and_missing_base(tmp_path: Path, sharp_classifier: Path) -> None:
    folder = _make_adapter(sharp_classifier, "lora", "classification", tmp_path / "lora")
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = None
    config_path.write_text(json.dumps(config))
    (folder / ADAPTER_EXTRAS).unlink()  # a foreign adapter: no labels, no base

    with pytest.raises(UsageError, match="does not name its base model; pass --model BASE --adapter"):
        load_adapter(folder, "sequence-classification", **LOAD)
    loaded = load_adapter(folder, "sequence-classification", base=str(sharp_classifier), **LOAD)
    # the head size comes from the adapter's saved classifier when no labels were recorded
    assert loaded.model.config.num_labels == 2


@pytest.fixture(scope="module")
def three_label_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier base with 3 labels, under which the adapters below learn 2 (issue 28)."""
    return tiny.build_classifier(tmp_path_factory.mktemp("three") / "base", labels=("neutral", "sad", "happy"), seed=5)


@pytest.mark.parametrize("strategy", ["lora", "prefix-tuning"])
def test_an_adapter_with_fewer_labels_than_its_base_brings_its_own_head(
    tmp_path: Path, three_label_classifier: Path, strategy: str
) -> None:
    """As finetune makes it: the base loaded with the table's 2 labels (a fresh head), the adapter trained on top,
    its head saved in the adapter (modules_to_save). Loading it must put that head on the base, not compare the
    two sizes; the planted truth is the in-memory model's own logits."""
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        str(three_label_classifier), num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
        ignore_mismatched_sizes=True)
    extra = {"num_virtual_tokens": 4} if strategy == "prefix-tuning" else {}
    model = build_peft_model(base, strategy, "classification", **extra)
    _randomize_adapter(model)
    folder = tmp_path / strategy
    save_adapter(model, folder, base_spec=str(three_label_classifier), id2label=LABELS)
    model.eval()
    batch = _bert_batch()
    expected = _logits(model, batch)

    loaded = load_adapter(folder, "sequence-classification", **LOAD)
    assert loaded.model.config.id2label == LABELS
    torch.testing.assert_close(_logits(loaded.model, batch), expected)


def test_missing_base_is_not_found(tmp_path: Path, sharp_classifier: Path) -> None:
    folder = _make_adapter(sharp_classifier, "lora", "classification", tmp_path / "lora")
    with pytest.raises(ModelNotFoundError, match="the base of adapter"):
        load_adapter(folder, "sequence-classification", base=str(tmp_path / "nowhere"), **LOAD)


def test_task_mismatch_is_refused(tmp_path: Path, sharp_classifier: Path) -> None:
    folder = _make_adapter(sharp_classifier, "lora", "classification", tmp_path / "lora")
    with pytest.raises(UsageError, match="is a sequence-classification adapter; it cannot run as causal-lm"):
        load_adapter(folder, "causal-lm", **LOAD)


def test_fill_mask_refuses_prompt_adapters(tmp_path: Path, sharp_classifier: Path) -> None:
    folder = _make_adapter(sharp_classifier, "prompt-tuning", "classification", tmp_path / "p", num_virtual_tokens=2)
    with pytest.raises(UsageError, match="fill-mask runs LoRA adapters only"):
        load_adapter(folder, "masked-lm", **LOAD)


@pytest.mark.parametrize("strategy", ["prompt-tuning", "prefix-tuning"])
def test_quantize_refuses_prompt_adapters(tmp_path: Path, peaked_lm: Path, strategy: str) -> None:
    folder = _make_adapter(peaked_lm, strategy, "causal-lm", tmp_path / strategy, num_virtual_tokens=2)
    with pytest.raises(UsageError, match=f"is a {strategy} adapter: it adds 2 virtual tokens") as err:
        refuse_unmergeable(read_adapter(folder))
    assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError, match="no weights to merge"):
        merge_adapter(load_adapter(folder, "causal-lm", **LOAD).model)


def test_lora_passes_the_quantize_check_and_merges_into_a_plain_model(tmp_path: Path, peaked_lm: Path) -> None:
    folder = _make_adapter(peaked_lm, "lora", "causal-lm", tmp_path / "lora")
    info = read_adapter(folder)
    assert (info.kind, info.is_prompt_learning, info.num_virtual_tokens) == ("lora", False, None)
    assert refuse_unmergeable(info) is None  # what quantize asks before loading anything: LoRA may go on
    # ... and what it then quantizes: the base's own architecture and parameter names, the LoRA deltas folded in
    from transformers import AutoModelForCausalLM

    merged = merge_adapter(load_adapter(folder, "causal-lm", **LOAD).model)
    base = AutoModelForCausalLM.from_pretrained(str(peaked_lm))
    assert type(merged) is type(base)
    assert merged.state_dict().keys() == base.state_dict().keys()
    moved = {k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert moved and all(k.endswith("_proj.weight") for k in moved), moved  # only LoRA's target linears changed


def test_not_an_adapter(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a peft adapter folder"):
        read_adapter(tmp_path)


def test_fill_mask_runs_a_lora_adapter_unmerged(tmp_path: Path, tiny_mlm: Path) -> None:
    import json as _json

    from transformers import AutoModelForMaskedLM
    from typer.testing import CliRunner

    from llmkit.cli import app

    model = build_peft_model(AutoModelForMaskedLM.from_pretrained(str(tiny_mlm)), "lora", "masked-lm")
    _randomize_adapter(model)
    folder = tmp_path / "mlm-lora"
    save_adapter(model, folder, base_spec=str(tiny_mlm))
    args = ["the [MASK] is good", "--json", "--device", "cpu", "--top-k", "3"]
    with_adapter = CliRunner().invoke(app, ["fill-mask", "--model", str(folder), *args])
    assert with_adapter.exit_code == 0, with_adapter.output
    stacked = CliRunner().invoke(app, ["fill-mask", "--model", str(tiny_mlm), "--adapter", str(folder), *args])
    base = CliRunner().invoke(app, ["fill-mask", "--model", str(tiny_mlm), *args])
    assert stacked.exit_code == 0 and base.exit_code == 0, stacked.output + base.output
    assert _json.loads(stacked.stdout) == _json.loads(with_adapter.stdout)
    assert _json.loads(with_adapter.stdout)["masks"] != _json.loads(base.stdout)["masks"]  # the adapter changes the answers
    # the records say which adapter answered, and on which base
    assert [(r["model"], r["base_model"]) for r in map(_json.loads, (with_adapter.stdout, base.stdout))] == [
        (str(folder), str(tiny_mlm)), (str(tiny_mlm), None)]


def _json_records(args: list[str]) -> list[dict]:
    from typer.testing import CliRunner

    from llmkit.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("command", ["classify", "generate"])
def test_records_name_the_adapter_the_user_gave_and_its_base_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sharp_classifier: Path, peaked_lm: Path, command: str
) -> None:
    """`--model ./ADAPTER` (and `--model BASE --adapter ./ADAPTER`): `model` is the adapter as typed, not the base
    it found in the adapter's config; `base_model` is that base. A plain model's records have `base_model` null."""
    base, task = (sharp_classifier, "classification") if command == "classify" else (peaked_lm, "causal-lm")
    _make_adapter(base, "lora", task, tmp_path / "my-adapter")
    monkeypatch.chdir(tmp_path)  # a relative spec, so "as typed" differs from the resolved path
    args = [command, "the movie was good", "--json", "--device", "cpu"]
    if command == "generate":
        args += ["--max-new-tokens", "2"]

    alone = _json_records([*args, "--model", "./my-adapter"])
    stacked = _json_records([*args, "--model", str(base), "--adapter", "./my-adapter"])
    plain = _json_records([*args, "--model", str(base)])

    for records in (alone, stacked):
        assert [(r["model"], r["base_model"]) for r in records] == [("./my-adapter", str(base))]
    assert [(r["model"], r["base_model"]) for r in plain] == [(str(base), None)]
    assert list(alone[0])[-1] == "base_model"  # appended: the fields before it keep their order


def test_loaded_model_names_the_adapter_and_its_base(tmp_path: Path, sharp_classifier: Path) -> None:
    from llmkit.loading import load

    folder = _make_adapter(sharp_classifier, "lora", "classification", tmp_path / "lora")
    direct = load_adapter(folder, "sequence-classification", **LOAD)
    assert (direct.spec, direct.base_spec) == (str(folder), str(sharp_classifier))
    stacked = load(str(sharp_classifier), "sequence-classification", adapter=str(folder), **LOAD)
    assert (stacked.spec, stacked.base_spec) == (str(folder), str(sharp_classifier))
    plain = load(str(sharp_classifier), "sequence-classification", **LOAD)
    assert (plain.spec, plain.base_spec, plain.adapter) == (str(sharp_classifier), None, None)
