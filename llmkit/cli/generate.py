"""`llmkit generate`: options and the thin command over `llmkit.generate.generate()`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmkit import generate as _gen  # torch-free at import: defaults and presets for --help
from llmkit.cli.options import (
    ActorCpusOpt,
    ActorGpusOpt,
    ActorsOpt,
    AdapterOpt,
    AllowPickleOpt,
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    ExecutorOpt,
    FormatOpt,
    InputOpt,
    JsonOpt,
    ModelOpt,
    OutputDirOpt,
    RayAddressOpt,
    RevisionOpt,
    SeedOpt,
    TextColumnOpt,
    TextsArg,
    TrustRemoteCodeOpt,
    command_app,
)

app = command_app()


@app.command(
    "generate",
    epilog="Presets: " + _gen.describe_presets() + ".\n\n"
    "Examples:\n\n"
    "  llmkit generate \"What is the capital of France?\"\n\n"
    "  llmkit generate --top-p 0.9 --temperature 0.8 --seed 1 \"Write a haiku about rain.\"\n\n"
    "  llmkit generate --num-beams 4 --num-return-sequences 3 --raw \"The meaning of life is\"\n\n"
    "  cat prompts.txt | llmkit generate --max-new-tokens 64 | jq -r .text\n\n"
    "  llmkit generate --engine llama-cpp --seed 1 --temperature 0.7 \"Tell me a joke.\"",
)
def generate(
    texts: TextsArg = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", "-n", help=f"Most tokens per answer [default: {_gen.DEFAULT_MAX_NEW_TOKENS}]."),
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="greedy|beam|creative|precise (values below).")] = None,
    sample: Annotated[
        bool | None, typer.Option("--sample/--no-sample", help="Force sampling on/off (a sampling knob turns it on).")
    ] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", "-t", help="Sampling temperature (> 0).")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Sample from the k most likely tokens (0: off).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass, in (0, 1].")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p", help="Drop tokens below min-p x the top probability.")] = None,
    typical_p: Annotated[float | None, typer.Option("--typical-p", help="Locally typical sampling mass, in (0, 1].")] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option("--repetition-penalty", help="> 1 discourages repeats (1.0: off).")
    ] = None,
    num_beams: Annotated[int | None, typer.Option("--num-beams", help="Beam search width (1: no beam search).")] = None,
    num_return_sequences: Annotated[
        int | None, typer.Option("--num-return-sequences", help="Return the n best answers, with scores.")
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option("--length-penalty", help="Beam search: > 1 favours longer answers.")
    ] = None,
    no_repeat_ngram_size: Annotated[
        int | None, typer.Option("--no-repeat-ngram-size", help="Never repeat an n-gram of this size.")
    ] = None,
    early_stopping: Annotated[
        bool | None, typer.Option("--early-stopping/--no-early-stopping", help="Beam search: stop when n beams end.")
    ] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop at this string (repeatable).")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System message for chat models.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the bare prompt, without the chat template.")] = False,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="auto|transformers|llama-cpp (auto: llama.cpp for GGUF models when `llmkit[llama]` is installed "
            "and every setting is supported there, except 32+ prompts on a CPU without --batch-size: llmkit's "
            "float32 Llama loop at batch 64; the record's engine_reason says why).",
        ),
    ] = "auto",
    lookup: Annotated[
        int | None,
        typer.Option("--lookup", help="Prompt-lookup decoding (llama.cpp engine, experimental): draft up to N "
                     "tokens copied from the prompt and verify them in one batch. Measured 1.13-1.18x on extraction "
                     "prompts, slower on summaries; greedy answers can differ from the plain path (a batch's "
                     "arithmetic differs from one token's). Off by default."),
    ] = None,
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    input_file: InputOpt = None,
    input_format: Annotated[
        str,
        typer.Option("--input-format", help="auto|text|jsonl|csv|tsv|openai-batch (auto: a file by its suffix; "
                     "stdin by its first line: JSON lines holding the text column, a CSV/TSV header naming "
                     "--text-column, else one text per line; a .jsonl file whose first line has custom_id, method, url and body is an OpenAI batch "
                     "file: one batch output object per line, exit 6 if some lines failed)."),
    ] = "auto",
    text_column: TextColumnOpt = "text",
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
    executor: ExecutorOpt = "local",
    actors: ActorsOpt = None,
    actor_cpus: ActorCpusOpt = None,
    actor_gpus: ActorGpusOpt = None,
    ray_address: RayAddressOpt = None,
    output_dir: OutputDirOpt = None,
) -> None:
    """Generate text with a causal LM or an encoder-decoder model (default: the bundled SmolLM2 instruct model).

    Greedy by default; beam search with --num-beams; sampling with --temperature/--top-k/--top-p/--min-p/--typical-p.
    Chat models get their chat template (and --system) unless --raw. Many prompts (stdin lines) run in
    length-grouped batches and print in input order; each JSON record has the text, finish reason
    (eos|length|stop), token counts and tokens/s.
    """
    from llmkit import distributed, executors, output
    from llmkit.data import InputRecord, read_inputs
    from llmkit.errors import UsageError

    settings = _gen.build_settings(
        preset,
        sample,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        typical_p=typical_p,
        repetition_penalty=repetition_penalty,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        length_penalty=length_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        early_stopping=early_stopping,
        stop=tuple(stop) if stop else None,
        seed=seed,
    )
    fmt = output.resolve_format(fmt, json_out)
    ray = executors.settings_for(executor, actors=actors, actor_cpus=actor_cpus, actor_gpus=actor_gpus,
                                 address=ray_address, output_dir=output_dir)
    peers = distributed.detect()
    if ray is not None:
        if input_format == "openai-batch" or (input_format == "auto" and input_file is not None
                                              and _is_openai_batch(input_file)):
            raise UsageError("OpenAI batch files run with --executor local; drop --executor ray")
        pairs = _ray_pairs(ray, settings, texts=texts, input_file=input_file, input_format=input_format,
                           text_column=text_column, model=model or adapter or _gen.DEFAULT_MODEL,
                           adapter=adapter if model else None, system=system, raw=raw, batch_size=batch_size,
                           device=device, dtype=dtype, engine=engine, lookup=lookup or 0, revision=revision,
                           allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        if pairs is not None:
            emitter = output.Emitter(fmt, text=lambda g: g.text)
            for record, result in pairs:
                emitter.emit(result, record.fields)
        return
    if input_format == "openai-batch" or (
        input_format == "auto" and input_file is not None and _is_openai_batch(input_file)
    ):
        if input_file is None:
            raise UsageError("--input-format openai-batch needs --input FILE (a .jsonl batch file)")
        if lookup:
            raise UsageError("--lookup is not applied to OpenAI batch files; drop it, or give plain prompts")
        _generate_batch(
            input_file, settings, peers=peers, model=model or _gen.DEFAULT_MODEL, engine=engine, system=system,
            batch_size=batch_size or _gen.DEFAULT_BATCH_SIZE, device=device, dtype=dtype, revision=revision,
            allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        )
        return
    inputs = read_inputs(texts, input_file=input_file, input_format=input_format, text_field=text_column)
    distributed.check_shareable_input(peers, texts, input_file)
    # On a terminal, one prompt at a time so tokens can stream; in a pipe, batches.
    # None lets generate() choose (8; 64 on llmkit's Llama loop where --engine auto moves a file of prompts there).
    if batch_size is None and fmt == "rich" and not peers.distributed:
        batch_size = 1

    streamer = output.GenerationStream() if fmt == "rich" else None

    def task(mine: Any) -> Any:
        return _gen.generate(
            (record.text for record in mine),
            model=model or adapter or _gen.DEFAULT_MODEL,
            adapter=adapter if model else None,  # --adapter alone: the adapter names its base
            settings=settings,
            system=system,
            raw=raw,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            revision=revision,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            # Several processes: the main one prints merged results, so nothing streams token by token.
            on_text=streamer.delta if streamer and not peers.distributed else None,
            engine=engine,
            lookup=lookup or 0,
        )

    # With several processes (accelerate launch, torchrun) each runs its share; the main one prints all, in order.
    pairs = distributed.map_records(inputs, task, record_type=InputRecord, result_type=_gen.Generation, peers=peers)
    if pairs is None:
        return
    emitter = output.Emitter(fmt, text=lambda g: g.text, rich=streamer.finish if streamer else None)
    for record, result in pairs:
        emitter.emit(result, record.fields)


def _is_openai_batch(path: Path) -> bool:
    from llmkit import openai_batch  # only where a file is given: 10-25 ms of every other start-up

    return openai_batch.sniff(path)


def _generate_batch(
    input_file: Path, settings: Any, *, peers: Any, model: str, engine: str, system: str | None, batch_size: int,
    device: str, dtype: str, revision: str | None, allow_pickle: bool, trust_remote_code: bool,
) -> None:
    """`generate` on an OpenAI batch file: one output object per request line, in order, on stdout.

    The command's flags are each line's defaults; a line's own body settings win. Exit 6 when some lines
    carry an error (the output is complete either way).
    """
    from dataclasses import asdict

    from llmkit import distributed, openai_batch, output
    from llmkit.data import open_text

    runner = openai_batch.generate_runner(
        model=model, engine=engine, system=system, batch_size=batch_size, device=device, dtype=dtype,
        revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
    )
    flags = asdict(settings)

    def work(mine: Any) -> Any:
        return openai_batch.answer_batch(mine, runner, flags=flags, check=openai_batch.check_settings, model=model)

    failed: list[int] = []
    total = 0
    with open_text(input_file) as stream:
        merged = distributed.run_sharded(openai_batch.read_batch(stream), work, peers=peers)
        if merged is None:
            return
        for index, line in enumerate(merged):
            output.write_json(line)
            total += 1
            if line.get("error") is not None:
                failed.append(index)
    openai_batch.raise_if_failed(failed, total)


def _ray_pairs(ray: Any, settings: Any, *, texts: list[str] | None, input_file: Path | None, input_format: str,
               text_column: str, model: str, adapter: str | None, system: str | None, raw: bool,
               batch_size: int | None, device: str, dtype: str, engine: str, lookup: int, revision: str | None,
               allow_pickle: bool, trust_remote_code: bool) -> Any:
    """(record, result) pairs computed on Ray: the engine is chosen here for the whole input, each actor loads it
    once (`generate.Generator`) and answers window after window."""
    from llmkit.errors import UsageError
    from llmkit.executors import Work, ray_data

    if settings.do_sample and settings.seed is not None:
        raise UsageError("--seed gives each prompt the random stream of its position in one process's run; with "
                         "--executor ray sample without --seed, or run with --executor local")
    load: dict[str, Any] = dict(device=device, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                adapter=adapter)

    def build(total: int) -> Work:
        choice = _gen.choice_for_count(model, total, settings=settings, batch_size=batch_size, device=device,
                                       dtype=dtype, revision=revision, engine=engine, adapter=adapter, lookup=lookup)
        if choice.fallback:
            from llmkit.console import warn

            warn(choice.fallback)
        return Work(
            load=lambda: _gen.Generator(model, choice, **load),
            run=lambda generator, records: generator.run((r.text for r in records), settings=settings,
                                                         system=system, raw=raw, lookup=lookup),
            window=_gen.window_of(choice),
            result_type=_gen.Generation,
        )

    return ray_data.command_pairs(ray, build, texts=texts, input_file=input_file,
                                  input_format="auto" if input_format == "openai-batch" else input_format,
                                  text_column=text_column)
