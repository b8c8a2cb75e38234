"""llmkit.strategies on tiny checkpoints: feed-forward-only freezing, peft strategies, parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch

from llmkit.errors import UsageError
from llmkit.strategies import (
    DEFAULT_NUM_VIRTUAL_TOKENS,
    build_peft_model,
    count_trainable,
    ffn_modules,
    train_only_ffn,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _classifier(path: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path))


def _causal(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path))


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _bert_batch():
    return tiny.bert_tokenizer()(["the movie was good", "bad film"], padding=True, return_tensors="pt")


def _lm_batch():
    return tiny.lm_tokenizer()(["the movie was good", "a bad film ."], padding=True, return_tensors="pt")


def _changed_after_one_step(model, loss_fn) -> set[str]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    loss_fn(model).backward()
    optimizer.step()
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_ffn_bert_trains_intermediate_and_output_dense_and_the_head(tiny_classifier: Path) -> None:
    model = _classifier(tiny_classifier)
    count = train_only_ffn(model)
    names = _trainable_names(model)
    expected = {
        f"bert.encoder.layer.{i}.{m}.{w}"
        for i in range(tiny.LAYERS)
        for m in ("intermediate.dense", "output.dense")
        for w in ("weight", "bias")
    } | {"classifier.weight", "classifier.bias"}
    assert names == expected  # attention.output.dense, LayerNorms, embeddings, pooler: frozen
    per_layer = 2 * tiny.HIDDEN * tiny.INTERMEDIATE + tiny.INTERMEDIATE + tiny.HIDDEN
    assert count.trainable == tiny.LAYERS * per_layer + 2 * tiny.HIDDEN + 2
    assert count.total == sum(p.numel() for p in model.parameters())
    assert 0 < count.share < 1

    batch = _bert_batch()
    changed = _changed_after_one_step(model, lambda m: m(**batch, labels=torch.tensor([1, 0])).loss)
    assert changed and changed <= expected
    assert any(".intermediate.dense." in n for n in changed)


def test_ffn_without_head(tiny_classifier: Path) -> None:
    model = _classifier(tiny_classifier)
    train_only_ffn(model, train_head=False)
    assert not any(n.startswith("classifier") for n in _trainable_names(model))


def test_ffn_llama_trains_the_mlp_and_leaves_the_tied_head_frozen(tiny_causal_lm: Path) -> None:
    model = _causal(tiny_causal_lm)
    count = train_only_ffn(model)
    names = _trainable_names(model)
    assert names == {
        f"model.layers.{i}.mlp.{proj}.weight" for i in range(tiny.LAYERS) for proj in ("gate_proj", "up_proj", "down_proj")
    }
    assert count.trainable == tiny.LAYERS * 3 * tiny.HIDDEN * tiny.INTERMEDIATE
    # the tied output embedding is one tensor with the input embedding: counted once, frozen
    assert count.total == sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    batch = _lm_batch()
    changed = _changed_after_one_step(model, lambda m: m(**batch, labels=batch["input_ids"]).loss)
    assert changed and changed <= names


def test_ffn_modules_names_the_blocks(tiny_causal_lm: Path) -> None:
    names = [n for n, _ in ffn_modules(_causal(tiny_causal_lm))]
    assert names[:3] == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    assert len(names) == 3 * tiny.LAYERS


def test_ffn_unknown_architecture_is_a_usage_error(tiny_seq2seq: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(str(tiny_seq2seq))
    with pytest.raises(UsageError, match="--train-only ffn: cannot find the feed-forward blocks"):
        train_only_ffn(model)


def test_count_trainable_counts_tied_weights_once(tiny_causal_lm: Path) -> None:
    model = _causal(tiny_causal_lm)
    count = count_trainable(model)
    vocab_by_hidden = model.model.embed_tokens.weight.numel()
    assert count.trainable == count.total == sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for _, p in model.named_parameters(
        remove_duplicate=False)) == count.total + vocab_by_hidden
    assert count.describe().endswith("trainable (100.00%)")


@pytest.mark.parametrize("strategy", ["lora", "prompt-tuning", "prefix-tuning"])
def test_peft_strategies_classification_train_only_adapter_and_head(tiny_classifier: Path, strategy: str) -> None:
    model = build_peft_model(_classifier(tiny_classifier), strategy, "classification", num_virtual_tokens=None)
    count = count_trainable(model)
    assert 0 < count.trainable < count.total / 2
    batch = _bert_batch()
    changed = _changed_after_one_step(model, lambda m: m(**batch, labels=torch.tensor([1, 0])).loss)
    kinds = {"lora": "lora_", "prompt-tuning": "prompt_encoder", "prefix-tuning": "prompt_encoder"}
    assert any(kinds[strategy] in n for n in changed), changed
    base_names = {n for n in changed if kinds[strategy] not in n}
    assert all("classifier" in n for n in base_names), base_names  # nothing of the base moves but the head


@pytest.mark.parametrize("strategy", ["lora", "prompt-tuning", "prefix-tuning"])
def test_peft_strategies_causal_lm(tiny_causal_lm: Path, strategy: str) -> None:
    virtual = 3 if strategy != "lora" else None
    model = build_peft_model(_causal(tiny_causal_lm), strategy, "causal-lm", num_virtual_tokens=virtual)
    count = count_trainable(model)
    if strategy == "prompt-tuning":
        assert count.trainable == 3 * tiny.HIDDEN  # one embedding per virtual token
    if strategy == "prefix-tuning":
        assert count.trainable == 3 * tiny.LAYERS * 2 * tiny.HIDDEN  # a key and a value per layer and token
    batch = _lm_batch()
    changed = _changed_after_one_step(model, lambda m: m(**batch, labels=batch["input_ids"]).loss)
    assert changed and all("lora_" in n or "prompt_encoder" in n for n in changed), changed


def test_default_prompt_length(tiny_causal_lm: Path) -> None:
    model = build_peft_model(_causal(tiny_causal_lm), "prompt-tuning", "causal-lm")
    assert model.active_peft_config.num_virtual_tokens == DEFAULT_NUM_VIRTUAL_TOKENS


def test_prefix_tuning_reaches_a_bert_classifier(tiny_classifier: Path) -> None:
    """transformers 5 calls the KV cache `cache`; the prefix must still reach every layer (and not leak
    across padding)."""
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier)).eval()
    with torch.no_grad():
        base.classifier.weight.mul_(100)
    model = build_peft_model(base, "prefix-tuning", "classification", num_virtual_tokens=4).eval()
    tok = tiny.bert_tokenizer()
    batch = _bert_batch()
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 2.0)
        adapted = model(**batch).logits
        alone = model(**tok(["bad film"], return_tensors="pt")).logits
    fresh = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier)).eval()
    with torch.no_grad():
        fresh.classifier.weight.mul_(100)
        plain = fresh(**batch).logits
    assert not torch.allclose(adapted, plain, atol=1e-3)
    torch.testing.assert_close(adapted[1:], alone, atol=1e-5, rtol=1e-4)


def test_prompt_strategies_refuse_masked_lm(tiny_mlm: Path) -> None:
    from transformers import AutoModelForMaskedLM

    with pytest.raises(UsageError, match="not masked-lm"):
        build_peft_model(AutoModelForMaskedLM.from_pretrained(str(tiny_mlm)), "prompt-tuning", "masked-lm")


def test_lora_on_masked_lm_works(tiny_mlm: Path) -> None:
    from transformers import AutoModelForMaskedLM

    model = build_peft_model(AutoModelForMaskedLM.from_pretrained(str(tiny_mlm)), "lora", "masked-lm")
    assert 0 < count_trainable(model).trainable


@pytest.mark.parametrize(
    ("strategy", "kwargs", "message"),
    [
        ("lora", {"num_virtual_tokens": 4}, "--num-virtual-tokens needs"),
        ("prompt-tuning", {"lora_r": 4}, "--lora-\\* settings belong to --strategy lora"),
        ("prompt-tuning", {"num_virtual_tokens": 0}, "must be >= 1"),
        ("full", {}, "unknown peft --strategy"),
        ("adapters", {}, "unknown peft --strategy"),
    ],
)
def test_bad_settings(tiny_classifier: Path, strategy: str, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_peft_model(_classifier(tiny_classifier), strategy, "classification", **kwargs)
