"""Zero/few-shot classification with a causal LM: the label as the answer, calibration, examples, prompts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llmkit import classify as cl
from llmkit import zeroshot as zs
from llmkit.errors import DataError, UsageError

TEXTS = [f"review number {i}: the food was {'good' if i % 2 else 'bad'} and the staff {i}" for i in range(20)]


# --- calibration on hand-made log-probabilities -----------------------------------------------------------------


def test_inputs_prior_is_each_labels_mean_and_calibration_subtracts_it() -> None:
    logps = [[-0.1, -2.5], [-0.3, -1.5], [-0.2, -2.0]]  # "positive" always looks likelier: a prior, not evidence
    prior = zs.inputs_prior(logps)
    assert prior == pytest.approx([-0.2, -2.0])
    # Uncalibrated, every input is "positive"; calibrated, the second input (least positive-leaning) flips.
    assert [max(range(2), key=lambda j: zs.calibrated_probs(r, None)[j]) for r in logps] == [0, 0, 0]
    probs = zs.calibrated_probs(logps[1], prior)
    want = [math.exp(-0.1) / (math.exp(-0.1) + math.exp(0.5)), math.exp(0.5) / (math.exp(-0.1) + math.exp(0.5))]
    assert probs == pytest.approx(want)
    assert probs[1] > probs[0]


def test_content_free_prior_is_the_log_of_the_mean_normalised_probability() -> None:
    cf = [[math.log(0.8), math.log(0.2)], [math.log(0.6), math.log(0.6)]]  # second row normalises to 0.5/0.5
    prior = zs.content_free_prior(cf)
    assert prior == pytest.approx([math.log(0.65), math.log(0.35)])
    probs = zs.calibrated_probs([math.log(0.65), math.log(0.35)], prior)
    assert probs == pytest.approx([0.5, 0.5])  # an input that looks like the content-free ones is a toss-up


def test_format_labels_and_prompt_checks() -> None:
    assert zs.format_labels(["a"]) == "a"
    assert zs.format_labels(["a", "b"]) == "a or b"
    assert zs.format_labels(["a", "b", "c"]) == "a, b or c"
    zs.check_prompt("Is it {labels}? {text}")
    for bad, why in [("Is it {labels}?", "no {text}"), ("{text} {label}", "unknown field(s) {label}"),
                     ("{text} {", "not a valid template")]:
        with pytest.raises(UsageError, match=r".*" + why.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(").replace(")", r"\)")):
            zs.check_prompt(bad)


# --- the KV-cache scorer against plain full-sequence scoring ----------------------------------------------------


def test_answer_logprobs_match_scoring_each_prompt_and_answer_in_full(tiny_causal_lm: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.scoring import continuation_logprobs

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32).eval()
    common = tok("the shared start of every prompt", add_special_tokens=False)["input_ids"]
    prompts = [common + tok(t, add_special_tokens=False)["input_ids"] for t in ("a", "good food here", "bad staff")]
    answers = [tok("good", add_special_tokens=False)["input_ids"], tok("bad food staff", add_special_tokens=False)["input_ids"],
               tok("here a", add_special_tokens=False)["input_ids"]]
    assert len(answers[1]) > 1 and len(answers[2]) > 1  # the cache-continuation path runs, for two answers
    assert zs.shared_prefix(prompts) == len(common)
    got = zs.answer_logprobs(model, prompts, answers, pad_id=0, device="cpu", batch_size=2)
    want = continuation_logprobs(model, [(p, a) for p in prompts for a in answers], pad_id=0, device="cpu")
    assert [v for row in got for v in row] == pytest.approx(want, abs=1e-4)


# --- through classify() on the tiny model -----------------------------------------------------------------------


def _run(model: Path, texts: list[str], **kw: object) -> list[cl.Classification]:
    return list(cl.classify(texts, model=str(model), labels=["good", "bad"], device="cpu", dtype="float32",
                            all_scores=True, **kw))  # type: ignore[arg-type]


def test_records_say_which_calibration_auto_picked(tiny_causal_lm: Path) -> None:
    many = _run(tiny_causal_lm, TEXTS)  # 20 inputs, all in one window: calibrated over the inputs
    few = _run(tiny_causal_lm, TEXTS[:3])  # too few to estimate a prior from
    assert {r.calibration for r in many} == {"inputs"} and {r.method for r in many} == {"causal-lm"}
    assert {r.calibration for r in few} == {"content-free"}
    # More inputs than one window: the first window cannot see them all, so auto uses the content-free prior.
    windowed = _run(tiny_causal_lm, TEXTS, batch_size=1)  # window = 1 x LENGTH_GROUP_WINDOW = 16 < 20
    assert {r.calibration for r in windowed} == {"content-free"}


def test_calibration_changes_scores_as_defined(tiny_causal_lm: Path) -> None:
    from llmkit import loading

    lm = loading.load(str(tiny_causal_lm), "causal-lm", device="cpu", dtype="float32")
    builder = zs.PromptBuilder(lm.tokenizer, ["good", "bad"], zs.DEFAULT_ZERO_SHOT_PROMPT, 512)
    raw, _ = zs.score(lm, builder, list(enumerate(TEXTS)), batch_size=8)
    cf, _ = zs.score(lm, builder, [(-1 - k, t) for k, t in enumerate(zs.CONTENT_FREE_INPUTS)], batch_size=8)
    modes = {mode: _run(tiny_causal_lm, TEXTS, loaded=lm, calibrate=mode) for mode in ("none", "inputs", "content-free")}
    priors = {"none": None, "inputs": zs.inputs_prior(raw), "content-free": zs.content_free_prior(cf)}
    for mode, records in modes.items():
        assert {r.calibration for r in records} == {mode}
        for record, row in zip(records, raw, strict=True):
            got = {s.label: s.score for s in record.scores}
            want = zs.calibrated_probs(row, priors[mode])
            assert [got["good"], got["bad"]] == pytest.approx(want, abs=1e-5)
    assert modes["none"][0].scores != modes["inputs"][0].scores


def test_label_spellings_sum_the_capitalised_form() -> None:
    import tiny

    tok = tiny.lm_tokenizer(chat=True)
    builder = zs.PromptBuilder(tok, ["good", "bad"], zs.DEFAULT_ZERO_SHOT_PROMPT, 512, spellings=True)
    assert builder.owner == [0, 0, 1, 1] and len(builder.spelled) == 4
    assert builder.combine([math.log(0.2), math.log(0.1), math.log(0.3), math.log(0.3)]) == pytest.approx(
        [math.log(0.3), math.log(0.6)])
    plain = zs.PromptBuilder(tok, ["good", "bad"], zs.DEFAULT_ZERO_SHOT_PROMPT, 512, spellings=False)
    assert plain.owner == [0, 1] and plain.combine([-1.0, -2.0]) == [-1.0, -2.0]


def test_zero_shot_prompt_is_used(tiny_causal_lm: Path) -> None:
    default = _run(tiny_causal_lm, TEXTS[:2], calibrate="none")
    custom = _run(tiny_causal_lm, TEXTS[:2], calibrate="none", zero_shot_prompt="Say {labels} for: {text}")
    assert [r.scores for r in default] != [r.scores for r in custom]
    with pytest.raises(UsageError, match="no {text}"):
        _run(tiny_causal_lm, TEXTS[:2], zero_shot_prompt="Which is it: {labels}?")


def test_examples_put_k_per_label_into_the_prompt(tiny_causal_lm: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    rows = [(f"good example {i}", "good") for i in range(6)] + [(f"bad example {i}", "bad") for i in range(6)]
    picker = zs.ExamplePicker(rows, ["good", "bad"], 2, selection="random", seed=1)
    chosen = picker.pick("x", 0)
    assert sorted(lbl for _, lbl in chosen) == ["bad", "bad", "good", "good"]
    assert picker.pick("x", 0) == chosen and picker.pick("x", 1) != chosen  # seeded, per input
    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    prompt = zs.PromptBuilder(tok, ["good", "bad"], zs.DEFAULT_ZERO_SHOT_PROMPT, 512).render("the query", chosen)
    assert sum(prompt.count(t) for t, _ in chosen) == 4 and prompt.count("Text: ") == 5
    fixed = zs.ExamplePicker(rows, ["good", "bad"], 2, selection="fixed", seed=1)
    assert fixed.pick("x", 0) == fixed.pick("y", 7) and len(fixed.pick("x", 0)) == 4  # one draw for every input
    similar = zs.ExamplePicker(rows, ["good", "bad"], 1, selection="similar").pick("bad example 3", 0)
    assert similar[-1] == ("bad example 3", "bad")  # the most similar example sits right before the input

    zero = _run(tiny_causal_lm, TEXTS[:2], calibrate="none")
    few = _run(tiny_causal_lm, TEXTS[:2], calibrate="none", examples=rows, shots=2)
    assert {r.shots for r in few} == {2} and {r.shots for r in zero} == {0}
    assert [r.scores for r in few] != [r.scores for r in zero]
    table = tmp_path / "ex.csv"
    table.write_text("text,label\n" + "".join(f"{t},{lbl}\n" for t, lbl in rows))
    assert zs.read_examples(table, ["good", "bad"]) == rows


def test_bad_examples_are_data_errors(tmp_path: Path) -> None:
    stray = tmp_path / "stray.csv"
    stray.write_text("text,label\nnice,good\nawful,terrible\n")
    with pytest.raises(DataError, match=r"stray.csv:3: example label 'terrible' is not one of --labels"):
        zs.read_examples(stray, ["good", "bad"])
    missing = tmp_path / "missing.csv"
    missing.write_text("text,label\nnice,good\n")
    with pytest.raises(DataError, match="no example for label\\(s\\) bad"):
        zs.read_examples(missing, ["good", "bad"])
    with pytest.raises(DataError, match="no example for label"):
        cl.classify(["x"], model="unused", labels=["good", "bad"], examples=[("nice", "good")]).__next__()


def test_channel_method_stays_behind_its_option(tiny_causal_lm: Path) -> None:
    records = _run(tiny_causal_lm, TEXTS[:2], zero_shot_method="channel")
    assert {r.method for r in records} == {"causal-lm-channel"} and {r.calibration for r in records} == {None}


def test_windows_know_whether_they_hold_every_input() -> None:
    assert [(len(w), last) for w, last in cl._windows(["a"] * 5, 2)] == [(2, False), (2, False), (1, True)]
    assert [(len(w), last) for w, last in cl._windows(["a"] * 4, 2)] == [(2, False), (2, True)]
    assert list(cl._windows([], 2)) == []


# --- the command line -------------------------------------------------------------------------------------------


def _cli(args: list[str]) -> tuple[int, list[dict], str]:
    from helpers import invoke, json_lines

    result = invoke(["classify", "--json", *args])
    return result.exit_code, json_lines(result.stdout) if result.exit_code == 0 else [], result.stderr


def test_cli_calibration_prompt_and_method_options(tiny_causal_lm: Path, tmp_path: Path) -> None:
    m = ["-m", str(tiny_causal_lm), "--labels", "good,bad", "--all-scores"]
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(TEXTS) + "\n")
    code, records, err = _cli([*m, "-i", str(inputs)])
    assert code == 0, err
    assert {r["calibration"] for r in records} == {"inputs"} and len(records) == 20
    code, few, _ = _cli([*m, *TEXTS[:2]])
    assert {r["calibration"] for r in few} == {"content-free"}
    code, none, _ = _cli([*m, "--calibrate", "none", *TEXTS[:2]])
    assert {r["calibration"] for r in none} == {"none"} and none[0]["scores"] != few[0]["scores"]
    code, custom, _ = _cli([*m, "--calibrate", "none", "--zero-shot-prompt", "Say {labels}: {text}", *TEXTS[:2]])
    assert code == 0 and custom[0]["scores"] != none[0]["scores"]
    code, channel, _ = _cli([*m, "--zero-shot-method", "channel", TEXTS[0]])
    assert code == 0 and channel[0]["method"] == "causal-lm-channel"


def test_cli_examples_and_shots(tiny_causal_lm: Path, tmp_path: Path) -> None:
    m = ["-m", str(tiny_causal_lm), "--labels", "good,bad", "--all-scores", "--calibrate", "none"]
    table = tmp_path / "ex.jsonl"
    table.write_text("".join(f'{{"text": "example {i}", "label": "{"good" if i % 2 else "bad"}"}}\n' for i in range(8)))
    code, zero, _ = _cli([*m, TEXTS[0]])
    code, two, err = _cli([*m, "--examples", str(table), "--shots", "2", "--seed", "3", TEXTS[0]])
    assert code == 0, err
    assert two[0]["shots"] == 2 and zero[0]["shots"] == 0 and two[0]["scores"] != zero[0]["scores"]
    code, other_seed, _ = _cli([*m, "--examples", str(table), "--shots", "2", "--seed", "4", TEXTS[0]])
    assert other_seed[0]["scores"] != two[0]["scores"]  # another seed, other examples


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--zero-shot-prompt", "Which: {labels}?"], "--zero-shot-prompt has no {text}"),
        (["--zero-shot-prompt", "{text} {lable}"], "--zero-shot-prompt has unknown field(s) {lable}"),
        (["--calibrate", "sometimes"], "unknown --calibrate 'sometimes'"),
        (["--zero-shot-method", "guess"], "unknown --zero-shot-method 'guess'"),
        (["--shots", "2"], "--shots needs --examples FILE"),
        (["--examples", "BAD"], "example label 'awful' is not one of --labels"),
        (["--examples", "MISSING"], "no example for label(s) bad"),
        (["--examples", "NOFILE"], "not found"),
    ],
)
def test_cli_bad_zero_shot_settings_exit_2_with_one_line(tiny_causal_lm: Path, tmp_path: Path, extra: list[str],
                                                          message: str) -> None:
    from helpers import invoke

    (tmp_path / "bad.csv").write_text("text,label\nnice,good\nmeh,awful\n")
    (tmp_path / "missing.csv").write_text("text,label\nnice,good\n")
    paths = {"BAD": tmp_path / "bad.csv", "MISSING": tmp_path / "missing.csv", "NOFILE": tmp_path / "none.csv"}
    extra = [str(paths.get(x, x)) for x in extra]
    result = invoke(["classify", "-m", str(tiny_causal_lm), "--labels", "good,bad", *extra, "x"])
    assert result.exit_code == (3 if message == "not found" else 2), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_answer_prefix_starts_the_assistant_turn_and_the_label_follows_it(tiny_causal_lm: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit import loading

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    plain = zs.PromptBuilder(tok, ["good", "bad"], zs.DEFAULT_ZERO_SHOT_PROMPT, 512, answer_prefix="")
    builder = zs.PromptBuilder(tok, ["good", "bad"], zs.DEFAULT_ZERO_SHOT_PROMPT, 512, answer_prefix="it is")
    assert builder.render("the food") == plain.render("the food") + "it is"
    assert builder.answers == [tok(" good", add_special_tokens=False)["input_ids"],
                               tok(" bad", add_special_tokens=False)["input_ids"]]
    # few-shot answers are written the way the model is asked to answer
    assert "it is bad" in builder.render("the food", [("awful", "bad")])

    # the scores are log P(" good" | prompt ending in "it is"), as the model gives it over the whole sequence
    lm = loading.load(str(tiny_causal_lm), "causal-lm", device="cpu", dtype="float32")
    (row,), _ = zs.score(lm, builder, [(0, "the food")], batch_size=1)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32).eval()
    prompt, _ = builder.prompt_ids("the food")
    want = []
    for answer in builder.answers:
        ids = torch.tensor([prompt + answer])
        with torch.inference_mode():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        want.append(float(sum(logp[len(prompt) + k - 1, t] for k, t in enumerate(answer))))
    assert row == pytest.approx(want, abs=1e-4)
    (plain_row,), _ = zs.score(lm, plain, [(0, "the food")], batch_size=1)
    assert plain_row != pytest.approx(row, abs=1e-3)


def test_answer_prefix_is_left_out_without_a_chat_template(tiny_causal_lm_nochat: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm_nochat))
    builder = zs.PromptBuilder(tok, ["good", "bad"], zs.DEFAULT_ZERO_SHOT_PROMPT, 512, answer_prefix="it is")
    assert builder.render("the food").endswith("\nAnswer:")  # "Answer:" already starts the answer here


def test_classify_scores_the_label_after_the_default_answer_prefix(tiny_causal_lm: Path) -> None:
    from llmkit import loading

    assert zs.DEFAULT_ANSWER_PREFIX == "Answer:"
    lm = loading.load(str(tiny_causal_lm), "causal-lm", device="cpu", dtype="float32")
    records = _run(tiny_causal_lm, TEXTS[:2], loaded=lm, calibrate="none")
    for prefix, same in (("Answer:", True), ("", False)):
        builder = zs.PromptBuilder(lm.tokenizer, ["good", "bad"], zs.DEFAULT_ZERO_SHOT_PROMPT, 512,
                                   answer_prefix=prefix)
        rows, _ = zs.score(lm, builder, list(enumerate(TEXTS[:2])), batch_size=2)
        for record, row in zip(records, rows, strict=True):
            got = {s.label: s.score for s in record.scores}
            assert ([got["good"], got["bad"]] == pytest.approx(zs.calibrated_probs(row, None), abs=1e-5)) is same


def test_cli_default_zero_shot_scores_each_label_after_answer_colon(tiny_causal_lm: Path) -> None:
    """`classify --labels` with no prompt options: the assistant turn starts with "Answer:" and each label follows
    it after a space. Reference: the chat template applied by hand and the whole sequence scored by transformers,
    so a change of the default prefix, of the prompt or of where the label goes makes the scores differ."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "the food was good and the staff kind"
    code, records, err = _cli(["-m", str(tiny_causal_lm), "--labels", "good,bad", "--all-scores",
                               "--calibrate", "none", text])
    assert code == 0, err
    got = {s["label"]: s["score"] for s in records[0]["scores"]}

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_lm), dtype=torch.float32).eval()
    question = f"Classify the text as good or bad.\n\nText: {text}\n\nAnswer with the label only."
    start = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                    tokenize=False)

    def logp(prompt: str, answer: str) -> float:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        tail = tok(answer, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids + tail])).logits[0].log_softmax(-1)
        return float(sum(out[len(ids) + k - 1, t] for k, t in enumerate(tail)))

    def probs(prompt: str, space: str) -> list[float]:
        return zs.calibrated_probs([logp(prompt, space + label) for label in ("good", "bad")], None)

    assert [got["good"], got["bad"]] == pytest.approx(probs(start + "Answer:", " "), abs=1e-4)
    # and not what the label right after the assistant header (no prefix) would score
    assert [got["good"], got["bad"]] != pytest.approx(probs(start, ""), abs=1e-3)
