"""llmkit.pruning on tiny checkpoints: importance, FFN and head slicing, config, reload, known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch

from llmkit.errors import UsageError
from llmkit.pruning import (
    Importance,
    calibration_batches,
    measure_importance,
    prune,
    prune_ffn,
    prune_heads,
)

TEXTS = [
    "the movie was good and the music was great",
    "a terrible boring film",
    "what is the capital of france ?",
    "paris is a city in france",
    "i loved the story , the actor was wonderful",
    "the food was bad and the service was awful",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _classifier(path: Path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(100.0)  # logits that move visibly when the encoder changes
    return model


def _llama(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _bert_inputs():
    return tiny.bert_tokenizer()(TEXTS, padding=True, return_tensors="pt")


def _lm_inputs(tokenizer):
    return tokenizer(TEXTS, padding=True, return_tensors="pt")


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _importance(model, tokenizer, heads=True) -> Importance:
    return measure_importance(model, calibration_batches(tokenizer, TEXTS, batch_size=4), heads=heads)


def test_keep_everything_changes_nothing(tiny_classifier: Path) -> None:
    model = _classifier(tiny_classifier)
    batch = _bert_inputs()
    before = _logits(model, batch)
    kept = prune_ffn(model, 1.0, _importance(model, tiny.bert_tokenizer(), heads=False))
    assert kept == [list(range(tiny.INTERMEDIATE))] * tiny.LAYERS
    torch.testing.assert_close(_logits(model, batch), before, atol=0, rtol=0)


def test_keep_everything_changes_nothing_llama(tiny_causal_lm_bpe: Path) -> None:
    tok = tiny.lm_tokenizer_bpe()
    model = _llama(tiny_causal_lm_bpe)
    batch = _lm_inputs(tok)
    before = _logits(model, batch)
    importance = _importance(model, tok)
    prune_ffn(model, 1.0, importance)
    prune_heads(model, 1.0, importance)
    torch.testing.assert_close(_logits(model, batch), before, atol=0, rtol=0)


def test_bert_ffn_shapes_config_and_reload(tmp_path: Path, tiny_classifier: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = _classifier(tiny_classifier)
    result = prune(model, tiny.bert_tokenizer(), TEXTS, ffn_keep=0.5)
    half = tiny.INTERMEDIATE // 2
    layer = model.bert.encoder.layer[0]
    assert layer.intermediate.dense.weight.shape == (half, tiny.HIDDEN)
    assert layer.intermediate.dense.bias.shape == (half,)
    assert layer.output.dense.weight.shape == (tiny.HIDDEN, half)
    assert layer.attention.output.dense.weight.shape == (tiny.HIDDEN, tiny.HIDDEN)  # attention untouched
    assert model.config.intermediate_size == half
    assert result.parameters_after == result.parameters_before - tiny.LAYERS * half * (2 * tiny.HIDDEN + 1)
    assert result.ffn_kept is not None and all(len(k) == half for k in result.ffn_kept)
    record = model.config.llmkit_pruning
    assert record["ffn"]["intermediate_size"] == [tiny.INTERMEDIATE, half]
    assert record["ffn"]["kept"] == result.ffn_kept
    assert record["calibration"]["texts"] == len(TEXTS)

    batch = _bert_inputs()
    pruned_logits = _logits(model, batch)
    model.save_pretrained(str(tmp_path / "pruned"))
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert saved["intermediate_size"] == half and saved["llmkit_pruning"]["ffn"]["kept"] == result.ffn_kept
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "pruned")).eval()
    torch.testing.assert_close(_logits(reloaded, batch), pruned_logits)
    assert not torch.allclose(pruned_logits, _logits(_classifier(tiny_classifier), batch), atol=1e-3)


def test_llama_heads_and_ffn_shapes_config_and_reload(tmp_path: Path, tiny_causal_lm_bpe: Path) -> None:
    """The BPE tiny Llama has 4 query heads in 2 key/value groups: a group is kept or dropped whole."""
    from transformers import AutoModelForCausalLM

    tok = tiny.lm_tokenizer_bpe()
    model = _llama(tiny_causal_lm_bpe)
    hidden, head_dim = model.config.hidden_size, model.config.hidden_size // 4
    inter = model.config.intermediate_size
    result = prune(model, tok, TEXTS, ffn_keep=0.25, heads_keep=0.5)
    attn = model.model.layers[1].self_attn
    assert attn.q_proj.weight.shape == (2 * head_dim, hidden)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (head_dim, hidden)
    assert attn.o_proj.weight.shape == (hidden, 2 * head_dim)
    assert model.model.layers[1].mlp.down_proj.weight.shape == (hidden, inter // 4)
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, head_dim)
    assert config.intermediate_size == inter // 4
    assert result.heads_kept is not None
    assert all(k in ([0, 1], [2, 3]) for k in result.heads_kept)  # whole groups
    assert config.llmkit_pruning["heads"]["num_key_value_heads"] == [2, 1]

    batch = _lm_inputs(tok)
    pruned_logits = _logits(model, batch)
    model.save_pretrained(str(tmp_path / "pruned"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "pruned")).eval()
    torch.testing.assert_close(_logits(reloaded, batch), pruned_logits)
    # generation with a KV cache runs on the pruned shapes
    out = reloaded.generate(**tok(["the movie"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1


def test_dead_ffn_neurons_are_the_ones_pruned_bert(tiny_classifier: Path) -> None:
    """Neurons whose up-projection is zero output GELU(0) = 0 on every token: least important, pruned first,
    and removing them leaves the outputs exactly as they were."""
    model = _classifier(tiny_classifier)
    dead = list(range(0, tiny.INTERMEDIATE, 2))  # every even neuron: half of them
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.intermediate.dense.weight[dead] = 0
            layer.intermediate.dense.bias[dead] = 0
    batch = _bert_inputs()
    before = _logits(model, batch)
    importance = _importance(model, tiny.bert_tokenizer(), heads=False)
    assert all(float(s[dead].max()) == 0.0 and float(s.max()) > 0 for s in importance.ffn)
    kept = prune_ffn(model, 0.5, importance)
    alive = [i for i in range(tiny.INTERMEDIATE) if i not in dead]
    assert kept == [alive] * tiny.LAYERS
    torch.testing.assert_close(_logits(model, batch), before, atol=1e-5, rtol=1e-5)


def test_weak_neurons_rank_low_llama(tiny_causal_lm: Path) -> None:
    """Scaled-down gate rows give proportionally smaller activations: those neurons go first."""
    tok = tiny.lm_tokenizer()
    model = _llama(tiny_causal_lm)
    weak = [1, 5, 9, 40]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[weak] *= 1e-3
    importance = _importance(model, tok, heads=False)
    keep = (tiny.INTERMEDIATE - len(weak)) / tiny.INTERMEDIATE
    kept = prune_ffn(model, keep, importance)
    assert all(set(k) == set(range(tiny.INTERMEDIATE)) - set(weak) for k in kept)


def test_dead_kv_group_is_pruned(tiny_causal_lm_bpe: Path) -> None:
    """Zero values in key/value group 0: its two query heads output nothing, so the group goes, and the
    outputs do not change."""
    tok = tiny.lm_tokenizer_bpe()
    model = _llama(tiny_causal_lm_bpe)
    head_dim = model.config.hidden_size // 4
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight[:head_dim] = 0
    batch = _lm_inputs(tok)
    before = _logits(model, batch)
    importance = _importance(model, tok)
    assert all(s[:2].max() == 0 and s[2:].min() > 0 for s in importance.heads)
    kept = prune_heads(model, 0.5, importance)
    assert kept == [[2, 3]] * tiny.LAYERS
    torch.testing.assert_close(_logits(model, batch), before, atol=1e-5, rtol=1e-5)


def test_multi_head_attention_llama_prunes_single_heads(tiny_causal_lm: Path) -> None:
    tok = tiny.lm_tokenizer()
    model = _llama(tiny_causal_lm)  # 2 heads, 2 kv heads: groups of one
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight[tiny.HIDDEN // 2:] = 0  # head 1 silent
    kept = prune_heads(model, 0.5, _importance(model, tok))
    assert kept == [[0]] * tiny.LAYERS
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (1, 1)


def test_padding_does_not_count(tiny_classifier: Path) -> None:
    model = _classifier(tiny_classifier)
    tok = tiny.bert_tokenizer()
    together = measure_importance(model, calibration_batches(tok, TEXTS, batch_size=len(TEXTS)), heads=False)
    one_by_one = measure_importance(model, calibration_batches(tok, TEXTS, batch_size=1), heads=False)
    assert together.tokens == one_by_one.tokens == int(_bert_inputs()["attention_mask"].sum())
    for a, b in zip(together.ffn, one_by_one.ffn, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bert_heads_are_refused_with_the_reason(tiny_classifier: Path) -> None:
    model = _classifier(tiny_classifier)
    with pytest.raises(UsageError, match="--prune-heads works on Llama-like models; BertForSequenceClassification"):
        prune(model, tiny.bert_tokenizer(), TEXTS, heads_keep=0.75)
    assert model.config.intermediate_size == tiny.INTERMEDIATE  # refused before anything changed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "nothing to prune"),
    ({"ffn_keep": 0.0}, "--prune-ffn: the kept fraction must be in"),
    ({"ffn_keep": 1.5}, "--prune-ffn: the kept fraction must be in"),
])
def test_bad_fractions(tiny_classifier: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        prune(_classifier(tiny_classifier), tiny.bert_tokenizer(), TEXTS, **kwargs)


def test_no_calibration_text(tiny_classifier: Path) -> None:
    with pytest.raises(UsageError, match="calibration texts"):
        prune(_classifier(tiny_classifier), tiny.bert_tokenizer(), ["", "  "], ffn_keep=0.5)


def test_unknown_layout(tiny_seq2seq: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(str(tiny_seq2seq))
    with pytest.raises(UsageError, match="--prune-ffn: cannot find nn.Linear feed-forward blocks"):
        prune(model, tiny.lm_tokenizer(chat=False), TEXTS, ffn_keep=0.5)


def test_pruning_after_layer_dropping(tiny_classifier: Path) -> None:
    """--student-layers then --prune-ffn: the student is both shallower and narrower, and still runs."""
    from llmkit.student import drop_layers

    teacher = _classifier(tiny_classifier)
    student, _ = drop_layers(teacher, 1)
    prune(student, tiny.bert_tokenizer(), TEXTS, ffn_keep=0.5)
    assert student.config.num_hidden_layers == 1 and student.config.intermediate_size == tiny.INTERMEDIATE // 2
    assert teacher.config.intermediate_size == tiny.INTERMEDIATE  # the teacher stays whole
    assert _logits(student.eval(), _bert_inputs()).shape == (len(TEXTS), 2)
