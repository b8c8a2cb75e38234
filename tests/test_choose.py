"""engines/choose.py: each generate auto rule, on tiny models built in fixtures (no engine is run here).

The CLI-level behaviour of the same rules (records, stderr) is tested in test_llama_cpp.py and test_llama_loop.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.engines import choose, llama_cpp
from llmkit.errors import UsageError
from llmkit.sampling import GenerationSettings, build_settings

GREEDY = build_settings()


class Counter:
    """`available` for the chooser over a planted number of prompts, remembering what it was asked."""

    def __init__(self, prompts: int) -> None:
        self.prompts = prompts
        self.asked: list[int] = []

    def __call__(self, n: int) -> int:
        self.asked.append(n)
        return min(n, self.prompts)


def test_dtype_by_batch_float32_only_where_batches_hold_several_prompts_on_the_cpu(tiny_causal_lm: Path) -> None:
    model = str(tiny_causal_lm)
    several = choose.choose_generate(model, GREEDY, requested="transformers", device="cpu", available=Counter(5))
    assert (several.engine, several.dtype, several.batch_size) == ("llama-loop", "float32", 8)
    one_prompt = choose.choose_generate(model, GREEDY, requested="transformers", device="cpu", available=Counter(1))
    assert (one_prompt.engine, one_prompt.dtype) == ("transformers", "auto")  # bfloat16 at batch 1: no loop
    batch_one = choose.choose_generate(model, GREEDY, requested="transformers", device="cpu", batch_size=1,
                                       available=Counter(5))
    assert (batch_one.engine, batch_one.dtype) == ("transformers", "auto")
    explicit = choose.choose_generate(model, GREEDY, requested="transformers", device="cpu", dtype="bfloat16",
                                      available=Counter(5))
    assert (explicit.engine, explicit.dtype) == ("transformers", "bfloat16")
    assert several.reason == one_prompt.reason == "asked for with --engine transformers"


@pytest.mark.parametrize(
    ("knobs", "loop"),
    [({}, True), ({"do_sample": True, "seed": 1}, True), ({"num_beams": 2}, False),
     ({"repetition_penalty": 1.2}, False), ({"do_sample": True, "num_return_sequences": 2}, False)],
)
def test_the_loop_takes_greedy_and_per_input_sampling_only(tiny_causal_lm: Path, knobs: dict, loop: bool) -> None:
    choice = choose.choose_generate(str(tiny_causal_lm), build_settings(**knobs), requested="transformers",
                                    device="cpu", dtype="float32")
    assert choice.engine == ("llama-loop" if loop else "transformers")


def test_the_loop_is_left_for_models_it_does_not_run(tiny_causal_lm: Path, tiny_seq2seq: Path, tmp_path: Path,
                                                     monkeypatch) -> None:
    def engine(model: Path | str, **options) -> str:
        options = {"requested": "transformers", "device": "cpu", "dtype": "float32", **options}
        return choose.choose_generate(str(model), GREEDY, **options).engine

    assert engine(tiny_causal_lm) == "llama-loop"
    assert engine(tiny_seq2seq) == "transformers"  # not a Llama
    assert engine(tiny_causal_lm, device="cuda") == "transformers"
    assert engine(tiny_causal_lm, adapter=str(tmp_path)) == "transformers"
    biased = tmp_path / "biased"
    biased.mkdir()
    for item in tiny_causal_lm.iterdir():
        (biased / item.name).write_bytes(item.read_bytes())
    config = json.loads((biased / "config.json").read_text())
    (biased / "config.json").write_text(json.dumps(dict(config, attention_bias=True)))
    assert engine(biased) == "transformers"
    (biased / "config.json").write_text(json.dumps(dict(config, rope_parameters={"rope_type": "yarn", "factor": 2.0})))
    assert engine(biased) == "transformers"
    (biased / "config.json").write_text(json.dumps(config))
    assert engine(biased) == "llama-loop"
    monkeypatch.setenv("LLMKIT_NATIVE", "0")
    assert engine(tiny_causal_lm) == "transformers"


def test_a_loaded_model_is_checked_itself(tiny_causal_lm: Path) -> None:
    import torch

    from llmkit import loading

    lm = loading.load(str(tiny_causal_lm), "text-generation", device="cpu", dtype="float32")
    choice = choose.choose_generate("ignored", GREEDY, loaded=lm, available=Counter(1))
    assert (choice.engine, choice.reason) == ("llama-loop", "an already loaded transformers model was passed")
    assert choice.dtype == "auto"  # a loaded model keeps its own dtype
    lm.model.to(torch.bfloat16)
    assert choose.choose_generate("ignored", GREEDY, loaded=lm).engine == "transformers"


@pytest.mark.skipif(not llama_cpp.bindings_installed(), reason="llmkit[llama] not installed")
def test_the_file_rule_counts_prompts_only_when_it_could_apply(tiny_gguf: Path) -> None:
    model = str(tiny_gguf)
    file = Counter(choose.FILE_PROMPTS)
    moved = choose.choose_generate(model, GREEDY, device="cpu", available=file)
    assert (moved.engine, moved.batch_size, moved.dtype, moved.reason) == (
        "llama-loop", choose.FILE_BATCH_SIZE, "float32", choose.FILE_RULE_REASON)
    assert file.asked == [choose.FILE_PROMPTS]
    few = choose.choose_generate(model, GREEDY, device="cpu", available=Counter(choose.FILE_PROMPTS - 1))
    assert (few.engine, few.batch_size) == ("llama-cpp", choose.DEFAULT_BATCH_SIZE)
    for options in ({"lookup": 4}, {"streaming": True}, {"requested": "llama-cpp"}):
        counter = Counter(100)
        choice = choose.choose_generate(model, GREEDY, device="cpu", available=counter, **options)
        # the file rule does not apply: stdin is read no further than the batch size needs
        assert (choice.engine, counter.asked) == ("llama-cpp", [choose.DEFAULT_BATCH_SIZE]), options
    untouched = Counter(100)
    assert choose.choose_generate(model, GREEDY, device="cpu", batch_size=8, available=untouched).engine == "llama-cpp"
    assert untouched.asked == []  # --batch-size given: nothing is counted


@pytest.mark.skipif(not llama_cpp.bindings_installed(), reason="llmkit[llama] not installed")
def test_serve_puts_a_gguf_model_on_the_loop_from_its_concurrency_rule(tiny_gguf: Path,
                                                                         tiny_causal_lm: Path) -> None:
    model, most = str(tiny_gguf), choose.SERVE_LOOP_MIN_CONCURRENCY
    served = choose.choose_served(model, device="cpu", concurrency=most)
    assert (served.engine, served.batch_size, served.dtype, served.reason) == (
        "llama-loop", most, "float32", choose.SERVE_RULE_REASON)
    below = choose.choose_served(model, device="cpu", concurrency=most - 1)
    assert (below.engine, below.batch_size) == ("llama-cpp", 1)
    # --engine llama-cpp keeps llama.cpp; a --dtype other than float32 leaves generate's choice (transformers)
    for options, engine in (({"requested": "llama-cpp"}, "llama-cpp"), ({"dtype": "bfloat16"}, "transformers")):
        assert choose.choose_served(model, device="cpu", concurrency=most, **options).engine == engine, options
    # not a GGUF model: what generate picks for one streamed prompt (transformers, bfloat16: no loop)
    other = choose.choose_served(str(tiny_causal_lm), device="cpu", concurrency=most)
    assert (other.engine, other.dtype) == ("transformers", "auto")


@pytest.mark.skipif(not llama_cpp.bindings_installed(), reason="llmkit[llama] not installed")
@pytest.mark.parametrize(("prompts", "batch"), [(0, 1), (1, 1), (3, 3), (8, 8), (20, 8)])
def test_llama_cpp_runs_no_more_parallel_sequences_than_prompts(tiny_gguf: Path, prompts: int, batch: int) -> None:
    choice = choose.choose_generate(str(tiny_gguf), GREEDY, device="cpu", available=Counter(prompts))
    assert (choice.engine, choice.batch_size) == ("llama-cpp", batch)
    given = choose.choose_generate(str(tiny_gguf), GREEDY, device="cpu", batch_size=4, available=Counter(prompts))
    assert given.batch_size == 4  # --batch-size is the user's


def test_adapter_and_lookup_rules(tiny_causal_lm: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--adapter runs on the transformers engine"):
        choose.choose_generate(str(tiny_causal_lm), GREEDY, requested="llama-cpp", adapter=str(tmp_path))
    adapter = choose.choose_generate(str(tiny_causal_lm), GREEDY, adapter=str(tmp_path))
    assert (adapter.engine, adapter.reason) == ("transformers", "a peft adapter runs on the transformers engine")
    with pytest.raises(UsageError, match=r"--lookup runs on the llama.cpp engine, and .* runs on transformers here"):
        choose.choose_generate(str(tiny_causal_lm), GREEDY, lookup=4)
    with pytest.raises(UsageError, match="unknown --engine 'vllm'"):
        choose.choose_generate(str(tiny_causal_lm), GREEDY, requested="vllm")


def test_a_llama_cpp_load_failure_falls_back_with_one_warning(tiny_causal_lm: Path) -> None:
    choice = choose.choose_generate(str(tiny_causal_lm), GenerationSettings(), llama_cpp_failed="unknown pre-tokenizer")
    assert choice.engine == "transformers"
    assert choice.reason == "auto: llama.cpp could not load the file (unknown pre-tokenizer); transformers ran"
    assert choice.fallback == "unknown pre-tokenizer; running it with transformers instead (--engine auto)"
