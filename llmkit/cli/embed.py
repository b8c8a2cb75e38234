"""`llmkit embed`: options and the thin command over `llmkit.embed` (vectors) and `llmkit.search` (neighbours)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmkit import embed as _emb  # torch-free at import: defaults for --help
from llmkit import search as _search
from llmkit.cli.options import (
    ActorCpusOpt,
    ActorGpusOpt,
    ActorsOpt,
    AllowPickleOpt,
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    EncoderEngineOpt,
    ExecutorOpt,
    FormatOpt,
    InputFormatOpt,
    InputOpt,
    JsonOpt,
    ModelOpt,
    OutputDirOpt,
    RayAddressOpt,
    RevisionOpt,
    TextColumnOpt,
    TextsArg,
    TruncateOpt,
    TrustRemoteCodeOpt,
    command_app,
)

app = command_app()

# Record fields that describe the run, not the row: left out of search hits' fields.
_RUN_FIELDS = ("model", "pooling", "normalized", "dimension", "tokens", "engine", "engine_reason", "truncated", "error")


@app.command(
    "embed",
    epilog="Examples:\n\n"
    "  llmkit embed \"The cat sat on the mat.\"\n\n"
    "  llmkit embed -i docs.csv --text-column body -o vectors.npy  (vectors.ids.jsonl holds the other columns)\n\n"
    "  llmkit embed -i docs.jsonl -o vectors.parquet --resume  (after a kill: goes on where it stopped)\n\n"
    "  llmkit embed --query \"who won the match?\" --top-k 3 docs.csv\n\n"
    "  llmkit embed --query \"who won the match?\" --precision binary vectors.npy\n\n"
    "  llmkit embed -m ./my-encoder --pooling cls --no-normalize \"some text\"",
)
def embed(
    texts: TextsArg = None,
    model: ModelOpt = None,
    pooling: Annotated[
        str | None,
        typer.Option("--pooling", help="cls|mean|max|mean_sqrt_len|weightedmean|lasttoken (a+b concatenates) "
                     "[default: the model's 1_Pooling config; mean for a plain model]."),
    ] = None,
    normalize: Annotated[
        bool | None,
        typer.Option("--normalize/--no-normalize", help="L2-normalise the vectors [default: as the model says "
                     "(a Normalize module); no for a plain model]."),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Text put before every input this run embeds, e.g. \"query: \" "
                     "[default: the model's default prompt, if any]."),
    ] = None,
    query: Annotated[
        list[str] | None,
        typer.Option("--query", "-q", help="Search: the nearest rows of CORPUS (the one argument: a table or lines to "
                     "embed now, or a saved .npy/.jsonl/.parquet of embeddings; or --input, or stdin) to this text; "
                     "repeat for several queries."),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", help="Search: neighbours per query.", min=1)
    ] = _search.DEFAULT_TOP_K,
    precision: Annotated[
        str,
        typer.Option("--precision", help="Search: float32 (exact), int8 or binary (32x smaller vectors; the best "
                     f"{_search.RESCORE_MULTIPLIER}x top-k candidates are rescored with the float32 query)."),
    ] = _search.DEFAULT_PRECISION,
    text_column: TextColumnOpt = "text",
    id_column: Annotated[
        str,
        typer.Option("--id-column", help="With --resume: the field that names each row (rows are counted when the "
                     "input has no such field)."),
    ] = "id",
    output_file: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write .jsonl (records with an embedding field), .npy (float32 rows, with "
                     "NAME.ids.jsonl beside it for the other fields) or .parquet."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Keep the rows --output already holds (or a killed run left) and embed only "
                     "the inputs not in it."),
    ] = False,
    engine: EncoderEngineOpt = "auto",
    truncate: TruncateOpt = True,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    revision: RevisionOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    input_file: InputOpt = None,
    input_format: InputFormatOpt = "auto",
    json_out: JsonOpt = False,
    fmt: FormatOpt = "auto",
    executor: ExecutorOpt = "local",
    actors: ActorsOpt = None,
    actor_cpus: ActorCpusOpt = None,
    actor_gpus: ActorGpusOpt = None,
    ray_address: RayAddressOpt = None,
    output_dir: OutputDirOpt = None,
) -> None:
    """Embed texts as vectors (default: the bundled all-MiniLM-L6-v2), or search them with --query.

    Pooling, Dense layers and normalisation come from the model's sentence-transformers files (modules.json,
    1_Pooling/config.json); --pooling, --normalize and --prefix override them. Inputs are texts, stdin lines, or
    --input FILE (lines, .jsonl, .csv, .tsv, .parquet) with --text-column, every other field kept. Vectors go to
    stdout as JSON lines, or to --output FILE (.jsonl, .npy with an ids file, .parquet), written in bounded memory
    under a temporary name and renamed when complete; --resume skips the rows already there. Under torchrun or
    accelerate launch, each process embeds its share. With --query, prints the --top-k nearest rows of CORPUS.
    """
    from llmkit import executors, output, search
    from llmkit.errors import UsageError

    fmt = output.resolve_format(fmt, json_out)
    ray = executors.settings_for(executor, actors=actors, actor_cpus=actor_cpus, actor_gpus=actor_gpus,
                                 address=ray_address, output_dir=output_dir)
    if ray is not None and (query or resume):
        raise UsageError(f"{'--query' if query else '--resume'} runs with --executor local; drop --executor ray")
    if ray is not None and ray.output_dir is not None and output_file is not None:
        raise UsageError("give --output FILE (gathered here) or --output-dir DIR (parts written by Ray), not both")
    if precision not in search.PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; use one of {', '.join(search.PRECISIONS)}")
    if resume and output_file is None:
        raise UsageError("--resume needs --output FILE (the file to go on writing)")
    options = dict(model=model, pooling=pooling, normalize=normalize, prefix=prefix,
                   batch_size=batch_size or _emb.DEFAULT_BATCH_SIZE, truncate=truncate, engine=engine, device=device,
                   dtype=dtype, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if query:
        if output_file is not None:
            raise UsageError("--query prints neighbours; drop --output (embed the corpus to a file first, without "
                             "--query)")
        _run_search(query, texts, input_file, input_format, text_column, top_k, precision, options, fmt)
        return
    if precision != search.DEFAULT_PRECISION:
        raise UsageError("--precision applies to search; add --query TEXT")
    _run_embed(texts, input_file, input_format, text_column, id_column, output_file, resume, options, fmt, ray)


def _records(texts: list[str] | None, input_file: Path | None, input_format: str, text_column: str) -> Any:
    """(InputRecords, table columns) as classify reads them: tables keep their columns, lines are texts."""
    from llmkit.data import read_inputs, read_table, table_format
    from llmkit.errors import UsageError

    fmt_name = table_format(input_file, input_format if input_format != "text" else "auto") if input_file else None
    if input_file is not None and input_format != "text" and fmt_name is not None:
        table = read_table(input_file, text_column, table_format_name=fmt_name)
        return table.records
    if input_format == "parquet":
        raise UsageError("--input-format parquet needs --input FILE")
    return read_inputs(texts, input_file=input_file, input_format=input_format, text_field=text_column)


class _Skipped:
    """Counts inputs that were cut or empty, for the closing warnings (never a list of every result)."""

    def __init__(self) -> None:
        self.total = 0
        self.truncated = 0
        self.empty: list[int] = []

    def add(self, position: int, result: Any) -> None:
        self.total += 1
        self.truncated += bool(result.truncated)
        if result.error == _emb.EMPTY:
            self.empty.append(position + 1)

    def report(self) -> None:
        from llmkit.output import warn

        if self.truncated:
            warn(f"{self.truncated} of {self.total} inputs were longer than the model's maximum and were truncated "
                 "(--no-truncate to stop instead)")
        if self.empty:
            shown = ", ".join(str(i) for i in self.empty[:10]) + (" ..." if len(self.empty) > 10 else "")
            warn(f"{len(self.empty)} empty input(s) got no embedding (input {shown}); they are in the output with "
                 "an \"error\" field")


def _done_filter(source: Any, id_column: str) -> tuple[Any, str]:
    """A predicate `keep(record)` that drops the inputs `source` already holds, and a line saying what it holds."""
    from llmkit.errors import UsageError

    ids: set[str] | None = None
    count = 0
    for _, rows in source.chunks():
        if ids is None and count == 0:
            ids = set() if rows and id_column in rows[0] else None
        if ids is not None:
            ids.update(str(row.get(id_column)) for row in rows)
        count += len(rows)
    if ids is None:
        return (lambda record: record.index >= count), f"{count} rows (counted: the rows have no {id_column!r})"

    def keep(record: Any) -> bool:
        if id_column not in record.fields:
            raise UsageError(f"--resume: the output's rows have {id_column!r} ids and input {record.index + 1} has "
                             f"no {id_column!r} field; resume with the same input")
        return str(record.fields[id_column]) not in ids

    return keep, f"{count} rows ({len(ids)} {id_column!r} ids)"


def _run_embed(texts: list[str] | None, input_file: Path | None, input_format: str, text_column: str,
               id_column: str, output_file: Path | None, resume: bool, options: dict[str, Any], fmt: str,
               ray: Any = None) -> None:
    from dataclasses import fields

    import numpy as np

    from llmkit import output, vectors

    if output_file is not None:
        vectors.output_format(output_file)
    source = None
    if ray is not None:
        pairs = _ray_pairs(ray, texts, input_file, input_format, text_column, options)
        if pairs is None:
            return
    else:
        pairs, source = _local_pairs(texts, input_file, input_format, text_column, id_column, output_file, resume,
                                     options)
        if pairs is None:
            return
    skipped = _Skipped()
    if output_file is not None:
        writer = vectors.VectorWriter(output_file)
        with writer:
            if source is not None:
                for block, rows in source.chunks():
                    missing = np.isnan(block).any(axis=1)
                    for vector, row, gone in zip(block, rows, missing, strict=True):
                        writer.write(row, None if gone else vector, len(vector))
            kept = writer.count
            for record, result in pairs:
                skipped.add(record.index, result)
                row = dict(record.fields)
                row[text_column] = record.text
                # field by field: `to_record` would walk the vector's floats one by one only to drop them
                row.update((f.name, getattr(result, f.name)) for f in fields(result)
                           if f.name not in ("text", "embedding"))
                writer.write(row, result.embedding, result.dimension)
        if source is not None:
            vectors.remove_leftovers(output_file)
        output.info(f"Wrote {writer.count} embeddings to {output_file}"
                    + (f" ({kept} kept, {writer.count - kept} new)" if source is not None else "")
                    + (f" and their rows to {vectors.sidecar(output_file)}" if writer.fmt == "npy" else ""))
    else:
        emitter = output.Emitter(fmt, text=_text_line, rich=_rich_line)
        for record, result in pairs:
            skipped.add(record.index, result)
            if fmt == "json":  # the record as to_record makes it, the vector written as float32 (output.json_line)
                line = output.to_record({f.name: getattr(result, f.name) for f in fields(result)
                                         if f.name != "embedding"}, record.fields)
                line["embedding"] = None if result.embedding is None else np.asarray(result.embedding, np.float32)
                output.write_text(output.json_line(line))
            else:
                emitter.emit(result, record.fields)
    skipped.report()


def _local_pairs(texts: list[str] | None, input_file: Path | None, input_format: str, text_column: str,
                 id_column: str, output_file: Path | None, resume: bool, options: dict[str, Any]) -> tuple[Any, Any]:
    """(record, result) pairs of this process (or, under torchrun/accelerate, all processes' on the main one), and
    what --resume keeps of the output."""
    from llmkit import distributed, output, vectors
    from llmkit.data import InputRecord
    from llmkit.errors import UsageError

    records = _records(texts, input_file, input_format, text_column)
    peers = distributed.detect()
    distributed.check_shareable_input(peers, texts, input_file)
    source = vectors.resume_source(output_file) if resume and output_file is not None else None
    if source is not None:
        keep, held = _done_filter(source, id_column)
        if peers.is_main:
            output.info(f"--resume: {source.path} holds {held}; embedding the rest")
        records = (r for r in records if keep(r))
    embedder = _emb.Embedder(**options)
    if embedder.note and peers.is_main:
        output.warn(embedder.note)
    if source is not None and source.dimension not in (None, embedder.dimension):
        raise UsageError(f"--resume: {source.path} holds {source.dimension}-dimensional vectors and "
                         f"{embedder.spec} makes {embedder.dimension}-dimensional ones; resume with the model "
                         "that wrote it")

    def task(mine: Any) -> Any:
        return embedder.embed(record.text for record in mine)

    pairs = distributed.map_records(records, task, record_type=InputRecord, result_type=_emb.Embedding,
                                    peers=peers, output=output_file)
    return pairs, source


def _ray_pairs(ray: Any, texts: list[str] | None, input_file: Path | None, input_format: str, text_column: str,
               options: dict[str, Any]) -> Any:
    """(record, result) pairs computed on Ray: each actor loads one `Embedder` and embeds window after window."""
    from llmkit.executors import Work, ray_data

    def build(total: int) -> Work:
        return Work(
            load=lambda: _emb.Embedder(**options),
            run=lambda embedder, records: embedder.embed(r.text for r in records),
            window=options["batch_size"] * _emb.LENGTH_GROUP_WINDOW,
            result_type=_emb.Embedding,
        )

    return ray_data.command_pairs(ray, build, texts=texts, input_file=input_file, input_format=input_format,
                                  text_column=text_column)


def _text_line(result: Any) -> str:
    return "" if result.embedding is None else " ".join(f"{x:.6g}" for x in result.embedding)


def _rich_line(result: Any) -> Any:
    from rich.text import Text

    if result.error:
        return Text(f"{result.text!r}: {result.error}", style="yellow")
    line = Text()
    shown = ", ".join(f"{x:.4f}" for x in result.embedding[:4])
    line.append(f"[{shown}, ...]", style="bold")
    line.append(f"  {result.dimension} dims, {result.pooling}{', normalised' if result.normalized else ''}  ",
                style="dim")
    line.append(result.text if len(result.text) <= 60 else result.text[:57] + "...")
    return line


def _run_search(queries: list[str], texts: list[str] | None, input_file: Path | None, input_format: str,
                text_column: str, top_k: int, precision: str, options: dict[str, Any], fmt: str) -> None:
    import numpy as np

    from llmkit import output, search, vectors
    from llmkit.errors import NotFoundError, UsageError

    texts = list(texts or [])
    if len(texts) > 1 or (texts and input_file is not None):
        raise UsageError("with --query give one CORPUS: a file argument, --input FILE or stdin")
    corpus_path = input_file if input_file is not None else (Path(texts[0]) if texts and texts != ["-"] else None)
    if corpus_path is not None and not corpus_path.exists():
        raise NotFoundError(f"corpus file not found: {corpus_path}")
    saved = vectors.open_saved(corpus_path) if corpus_path is not None else None
    embedder = _emb.Embedder(**options)
    if embedder.note:
        output.warn(embedder.note)
    if saved is not None and saved.dimension is not None and saved.dimension != embedder.dimension:
        raise UsageError(f"{corpus_path} holds {saved.dimension}-dimensional vectors and {embedder.spec} makes "
                         f"{embedder.dimension}-dimensional ones; search with the model that embedded it (--model)")
    if any(not q.strip() for q in queries):
        raise UsageError("--query is empty; give the text to search for")
    query_vectors, _, _ = embedder.vectors(queries)
    if saved is not None:
        corpus = saved.chunks()
    else:
        records = _records(None if corpus_path is not None else texts, corpus_path, input_format, text_column)

        def pairs() -> Any:
            batch: list[Any] = []
            for record in records:
                batch.append(record)
                if len(batch) >= 1024:
                    yield from _embedded(batch)
                    batch = []
            if batch:
                yield from _embedded(batch)

        def _embedded(batch: list[Any]) -> Any:
            for record, result in zip(batch, embedder.embed(r.text for r in batch), strict=True):
                row = dict(record.fields)
                row[text_column] = record.text
                yield (None if result.embedding is None else np.asarray(result.embedding, np.float32)), row

        corpus = search.chunked(pairs(), embedder.dimension)
    results = search.search(query_vectors, corpus, query_texts=queries, top_k=top_k, precision=precision)
    run = {"model": embedder.spec, "precision": precision, "engine": embedder.choice.engine,
           "engine_reason": embedder.choice.reason}
    for hits in results:
        if fmt == "rich":
            output.stdout_console().print(_hits_table(hits, text_column, precision))
            continue
        for hit in hits:
            fields = {k: v for k, v in hit.fields.items() if k not in _RUN_FIELDS}
            if fmt == "text":
                output.write_text(f"{hit.rank}\t{hit.score:.4f}\t{fields.get(text_column, '')}")
            else:
                output.write_json({"query": hit.query, "rank": hit.rank, "score": hit.score, "index": hit.index,
                                   **fields, **run})


def _hits_table(hits: list[Any], text_column: str, precision: str) -> Any:
    from rich.table import Table

    title = hits[0].query if hits else ""
    table = Table(title=f"{title}  [dim]({precision})[/dim]", title_justify="left")
    for column in ("#", "score", "row", text_column):
        table.add_column(column, justify="right" if column in ("#", "score", "row") else "left")
    for hit in hits:
        text = str(hit.fields.get(text_column, ""))
        table.add_row(str(hit.rank), f"{hit.score:.4f}", str(hit.index + 1), text if len(text) <= 100 else text[:97] + "...")
    return table
