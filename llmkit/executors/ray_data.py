"""`--executor ray`: a command's inference on a Ray cluster through Ray Data.

The flow of one run:

1. `cluster()` joins the cluster at `--ray-address` / RAY_ADDRESS, or starts a local one for the run's lifetime
   (127.0.0.1, a temporary folder of its own, shut down and removed at the end whatever happened).
2. `read()` reads `--input` with Ray Data's readers (CSV/TSV as strings, JSONL, Parquet, text lines; a local path
   or any URI pyarrow knows, e.g. s3://bucket/key), or takes records this process read (text arguments, stdin).
3. `windows()` numbers the rows in input order and cuts them into blocks of exactly `Work.window` rows, each
   starting at a multiple of it: the windows the task function itself reads and sorts by length, so every
   batch is padded as in one process and the records are identical to `--executor local`.
4. `map_batches` runs the blocks on an actor pool (`--actors`, `--actor-cpus`, `--actor-gpus`); each actor loads
   its model once (`Work.load`) and runs block after block (`Work.run`). An actor that dies (killed, out of
   memory) is restarted by Ray and the blocks it held are run again (`max_restarts=-1`, `max_task_retries=-1`:
   Ray's own retries, nothing of llmkit's); a block's output counts once, when its task succeeds.
5. The records come back to this process in input order (for stdout or one output file), each index checked
   (none missing, none doubled); or Ray Data's writers write them as a folder of Parquet/JSONL parts
   (`--output-dir`), under a temporary name renamed into place once every index was read back from it.

Ray is imported inside functions: `llmkit --help` and the local executor never load it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmkit.data import InputRecord
from llmkit.errors import EXIT_FAILURE, DataError, LlmkitError, NotFoundError, UsageError
from llmkit.executors import RaySettings, Work, is_uri

# Internal column names: unlikely to meet a user's column.
INDEX = "__llmkit_index"
TEXT = "__llmkit_text"
FIELDS = "__llmkit_fields"
RESULT = "__llmkit_result"
OUTPUT_INDEX = "index"  # the input position of each record in `--output-dir` parts
SUCCESS = "_SUCCESS"  # written last into a URI output folder (it cannot be renamed into place)
LOCAL_HOST = "127.0.0.1"  # a local cluster listens here only
READ_FORMATS = ("text", "csv", "tsv", "jsonl", "parquet")
_SUFFIXES = {".txt": "text", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".parquet": "parquet", ".pq": "parquet"}


class RayRunError(LlmkitError):
    """The cluster could not run the work (exit 1): unreachable, too small, or a record went missing."""

    exit_code = EXIT_FAILURE


# --- the cluster ----------------------------------------------------------------------------------------------


def _quiet() -> None:
    """Ray's and Ray Data's INFO/WARNING lines off stderr (llmkit says what matters itself)."""
    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def cluster(settings: RaySettings) -> Iterator[dict[str, float]]:
    """Join the cluster at `settings.address` (or RAY_ADDRESS), or start a local one; always leave it after.

    A local cluster listens on 127.0.0.1 only, keeps its sockets and logs in a temporary folder that is removed
    afterwards, and has at least as many logical CPUs as the actors reserve.

    Yields:
        The cluster's resources (`ray.cluster_resources()`).

    Raises:
        RayRunError: the cluster cannot be reached, or has fewer CPUs/GPUs than the actors reserve.
    """
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    with _loopback(address is None):
        import ray
        from ray.data import DataContext

        _quiet()
        context = DataContext.get_current()
        context.execution_options.preserve_order = True  # blocks come back in input order
        context.enable_progress_bars = False  # stderr is llmkit's; stdout is data
        context.print_on_execution_start = False
        with _session(ray, settings, address) as resources:
            yield resources


@contextmanager
def _loopback(local: bool) -> Iterator[None]:
    """A local cluster on 127.0.0.1 only. Ray on Linux replaces 127.0.0.1 by the host's outward address (for
    clusters of several machines) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is 0, its switch for one-machine
    clusters; it is read when ray is imported (and by the cluster's processes, which inherit it)."""
    if not local or "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in os.environ:
        yield
        return
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")  # ray imported already (a notebook, tests)
    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = True if before is None else before  # type: ignore[attr-defined]


@contextmanager
def _session(ray: Any, settings: RaySettings, address: str | None) -> Iterator[dict[str, float]]:
    """ray.init ... ray.shutdown, with the driver's own C++ log kept off stderr."""
    _quiet()
    options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                   configure_logging=True)
    temp = tempfile.mkdtemp(prefix="llmkit-ray-")  # the local cluster's sockets and logs; the driver's own log
    try:
        with _backend_log(Path(temp) / "driver.log"), _stdout_for_data():
            try:
                if address is None:
                    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, settings.cpus_needed),
                             _node_ip_address=LOCAL_HOST, _temp_dir=temp, **options)
                else:
                    ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                hint = ("; check the address (ray start --head prints it) and, with token authentication, "
                        "RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
                        ) if address else ""
                raise RayRunError(f"could not start or join {where}: {_first_line(exc)}{hint}") from None
            _quiet()
            try:
                resources = ray.cluster_resources()
                _check_room(settings, resources, local=address is None)
                yield resources
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


class _MainThreadStdout:
    """stdout for the main thread only: what another thread prints goes to stderr.

    Ray's driver prints the cluster's warnings (raylet messages such as "8 PYTHON worker processes have been
    started", out-of-memory kills) from a background thread onto `sys.stdout`, where llmkit's records go.
    """

    def __init__(self, data: Any) -> None:
        self._data = data

    def write(self, text: str) -> int:
        import sys
        import threading

        if threading.current_thread() is threading.main_thread():
            return int(self._data.write(text))
        return int(sys.stderr.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)


@contextmanager
def _stdout_for_data() -> Iterator[None]:
    import sys

    original = sys.stdout
    sys.stdout = _MainThreadStdout(original)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = original


@contextmanager
def _backend_log(path: Path) -> Iterator[None]:
    """Send what Ray's C++ core writes to this process's stderr (file descriptor 2) to `path` instead.

    The driver's core worker logs there directly, e.g. an ERROR-level note on every restartable actor pool whose
    constructor arguments sit in the object store (Ray Data's do). llmkit's own lines keep going to the real
    stderr: `sys.stderr` is pointed at a copy of it. Under LLMKIT_DEBUG=1 nothing is redirected.
    """
    import sys

    try:
        real = not _debugging() and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests): Ray's fd 2 is not llmkit's stream
        real = False
    if not _debugging() and not real:
        saved = os.dup(2)
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 2)
        os.close(log)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        return
    if not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 2)
    os.close(log)
    original = sys.stderr
    # left open afterwards: Ray's logging handlers may hold it until the process ends
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=original.encoding, errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = original
        os.dup2(saved, 2)
        os.close(saved)


def _debugging() -> bool:
    return os.environ.get("LLMKIT_DEBUG", "") not in ("", "0")


def _check_room(settings: RaySettings, resources: dict[str, float], *, local: bool) -> None:
    """Refuse a pool the cluster can never place (Ray would wait for it forever); a remote cluster may grow."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    short = []
    if settings.actors * settings.actor_cpus > cpus + 1e-9:
        short.append(f"{settings.actors} x {settings.actor_cpus:g} CPUs but it has {cpus:g}")
    if settings.actors * settings.actor_gpus > gpus + 1e-9:
        short.append(f"{settings.actors} x {settings.actor_gpus:g} GPUs but it has {gpus:g}")
    if not short:
        return
    message = f"the actors reserve {' and '.join(short)}; use fewer --actors or smaller --actor-cpus/--actor-gpus"
    if local or not settings.address:
        raise RayRunError(f"the local Ray cluster is too small: {message}")
    from llmkit.console import warn

    warn(f"the Ray cluster has no room yet ({message}); waiting for it to grow")


# --- reading --------------------------------------------------------------------------------------------------


def read_format(location: str, requested: str = "auto") -> str:
    """The format Ray Data reads `location` as: `requested` unless auto, else by suffix, else text lines."""
    if requested not in ("auto", *READ_FORMATS):
        raise UsageError(f"--executor ray reads {', '.join(READ_FORMATS)} (got --input-format {requested})")
    if requested != "auto":
        return requested
    name = location.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith(".json"):
        raise UsageError("--executor ray reads JSON lines (.jsonl), not a whole-file JSON document; convert it, "
                         "or run with --executor local")
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return "text"


def _filesystem(location: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{location}: {_first_line(exc)}") from None
    return pafs.LocalFileSystem(), str(Path(location).absolute())


def _first_file(location: str) -> tuple[Any, str]:
    """The file system and the first file of `location` (a file, or a folder of files in name order)."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(location)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise NotFoundError(f"--input {location}: {_first_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise NotFoundError(f"--input not found: {location}")
    if info.type == pafs.FileType.Directory:
        files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                       if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_")))
        if not files:
            raise NotFoundError(f"--input {location} is a folder with no files in it")
        return fs, files[0]
    return fs, path


def _header(location: str, fmt: str) -> list[str]:
    """The column names of a table (CSV/TSV header, Parquet schema, the first JSON line), read from its first file."""
    fs, path = _first_file(location)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path, filesystem=fs).names)
        with fs.open_input_stream(path) as raw:
            head = raw.read(1 << 20).decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise DataError(f"--input {location}: cannot read it: {_first_line(exc)}") from None
    except Exception as exc:  # pyarrow's own errors (ArrowInvalid: not a Parquet file, ...)
        raise DataError(f"--input {location}: not a readable {fmt} file: {_first_line(exc)}") from None
    if fmt == "jsonl":
        first = next((line for line in head.splitlines() if line.strip()), "")
        try:
            row = json.loads(first) if first else {}
        except ValueError:
            raise DataError(f"--input {location}: line 1 is not a JSON object") from None
        return list(row) if isinstance(row, dict) else []
    lines = head.splitlines()
    return next(csv.reader(lines[:1], delimiter="," if fmt == "csv" else "\t"), [])


def check_input(location: str, fmt: str, *, text_column: str, required: tuple[str, ...] = ()) -> list[str]:
    """Check `--input` before any cluster starts: it exists, its first file opens as `fmt`, the columns are there.

    Returns:
        Its columns (text files: the text column).

    Raises:
        NotFoundError: no such file or column. DataError: a first file that cannot be read as `fmt`.
    """
    from llmkit.data import require_columns

    if fmt == "text":
        _first_file(location)
        return [text_column]
    columns = _header(location, fmt)
    require_columns(columns, [text_column, *required], location)
    return columns


def read(location: str, fmt: str, columns: list[str]) -> Any:
    """A Ray Dataset of `location` read by Ray Data's readers (see `check_input` for `columns`).

    CSV/TSV cells are read as strings (as llmkit's own reader does: "007" stays "007"), text files as one row per
    line (blank lines kept: they are inputs), JSONL and Parquet with their own types.

    Args:
        location: a local path or a URI (s3://, gs://, file://, ...); a folder reads every file in it.
        fmt: one of READ_FORMATS (see `read_format`).
        columns: the table's columns.
    """
    import ray.data

    if fmt == "text":
        return ray.data.read_text(location, drop_empty_lines=False, file_extensions=None)
    if fmt in ("csv", "tsv"):
        return ray.data.read_csv(location, **_csv_options(fmt, columns), file_extensions=None)
    if fmt == "jsonl":
        return ray.data.read_json(location, lines=True, file_extensions=None)
    return ray.data.read_parquet(location, file_extensions=None)


def _csv_options(fmt: str, columns: list[str]) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return dict(parse_options=pacsv.ParseOptions(delimiter="," if fmt == "csv" else "\t"),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                     strings_can_be_null=False, quoted_strings_can_be_null=False))


def local_read_problem(location: str, fmt: str, columns: list[str]) -> DataError | None:
    """After Ray failed to read a local `--input` without naming why (Ray 2.60 can report a failed read task
    only as ObjectRefStreamEndOfStreamError): its files read here with the same pyarrow options, to name what is
    wrong in the input. Runs only after such a failure, never on the way to a run.

    Returns:
        The input's error (exit 2), or None when every file reads here (the failure was the cluster's).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    path = Path(location)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        try:
            if fmt in ("csv", "tsv"):
                pacsv.read_csv(file, **_csv_options(fmt, columns))
            elif fmt == "jsonl":
                pajson.read_json(file)
            elif fmt == "parquet":
                pq.read_table(file)
            else:
                file.read_bytes().decode("utf-8")
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
            return DataError(f"the input cannot be read: {_first_line(exc)}")
        except OSError:
            return None
    return None


def check_encoder_engine(spec: str, head: str, engine: str, load_options: dict[str, Any]) -> None:
    """`--engine` on an encoder task (classify, fill-mask), checked here before any cluster starts, by the rules
    that each actor then applies to load its model (`choose.choose_encoder`): an unknown engine or one that cannot
    run the model is the local run's one line and exit code, and auto's fallback that is known before loading (a
    remote-code model, an export that failed before) is said once here, as locally (the actors say nothing)."""
    from llmkit.engines import choose

    choice = choose.choose_encoder(spec, head, device=load_options["device"], dtype=load_options["dtype"],
                                   requested=engine, adapter=load_options["adapter"],
                                   revision=load_options["revision"],
                                   trust_remote_code=load_options["trust_remote_code"])
    if choice.fallback is not None:
        from llmkit.console import warn

        warn(choice.fallback)


def input_columns(input_file: Path, input_format: str, text_column: str) -> list[str]:
    """The columns `--input` has, as Ray Data will read it (text lines: just the text column)."""
    from llmkit.executors import location

    source = location(input_file)
    fmt = read_format(source, input_format)
    return [text_column] if fmt == "text" else _header(source, fmt)


def from_records(records: list[InputRecord]) -> Any:
    """A Ray Dataset of records this process read (text arguments, stdin), already numbered."""
    import ray.data

    return ray.data.from_items([{INDEX: r.index, TEXT: r.text, FIELDS: json.dumps(r.fields, default=str)}
                                for r in records])


# --- numbering and windows ------------------------------------------------------------------------------------


def _count_rows(table: Any) -> int:
    return int(table.num_rows)


def _numbered(text_column: str, offset: int, bounds: list[tuple[int, int]], *tables: Any) -> Any:
    """One window: rows `bounds[i]` (start, length) of `tables[i]`, in order, as (index, text, other fields as
    JSON), the first numbered `offset`."""
    import pyarrow as pa

    pieces = [table.slice(start, length) for table, (start, length) in zip(tables, bounds, strict=True)]
    if pieces and INDEX in pieces[0].column_names:  # records this process numbered (text arguments, stdin)
        return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
    rows = [row for piece in pieces for row in piece.to_pylist()]
    texts, fields = [], []
    for row in rows:
        value = row.pop(text_column, None)
        texts.append("" if value is None else str(value))
        fields.append(json.dumps(row, ensure_ascii=False, default=str))
    return pa.table({INDEX: pa.array(range(offset, offset + len(rows)), pa.int64()),
                     TEXT: pa.array(texts, pa.string()), FIELDS: pa.array(fields, pa.string())})


def windows(ds: Any, *, text_column: str, build: Callable[[int], Work]) -> tuple[Any, int, Work]:
    """Number `ds`'s rows in input order and cut them into blocks of exactly `Work.window` rows.

    The blocks Ray read come back in order (`preserve_order`); one small task per window takes its rows out of
    them (a window can span read blocks), so window w holds the rows [w x window, (w + 1) x window). These tasks
    reserve a CPU each (so Ray runs no more of them at once than it has CPUs, reusing its worker processes) and
    all finish before the actors start, which then hold the CPUs.

    Returns:
        (the windowed dataset, the number of records, the `Work` built for that number).

    Raises:
        DataError: a file Ray's reader could not parse.
    """
    import ray
    import ray.data

    try:
        refs = ds.to_arrow_refs()
        count = ray.remote(num_cpus=1)(_count_rows)
        counts = ray.get([count.remote(ref) for ref in refs])
    except Exception as exc:
        raise _user_error(exc, "reading the input") from None
    total = int(sum(counts))
    work = build(total)
    size = max(1, work.window)
    numbered = ray.remote(num_cpus=1)(_numbered)
    starts = [0]
    for n in counts:
        starts.append(starts[-1] + n)
    pieces = []
    block = 0
    for start in range(0, total, size):
        stop = min(total, start + size)
        sources, bounds = [], []
        while block < len(refs) and starts[block] < stop:
            lo, hi = max(start, starts[block]), min(stop, starts[block + 1])
            if hi > lo:
                sources.append(refs[block])
                bounds.append((lo - starts[block], hi - lo))
            if starts[block + 1] <= stop:
                block += 1
            else:
                break
        pieces.append(numbered.remote(text_column, start, bounds, *sources))
    if pieces:  # the windows exist before any actor takes a CPU (their errors surface when they are read)
        ray.wait(pieces, num_returns=len(pieces), fetch_local=False)
    return ray.data.from_arrow_refs(pieces) if pieces else ray.data.from_items([]), total, work


# --- the actors -----------------------------------------------------------------------------------------------


def _worker_class(work: Work, parts: bool) -> type:
    """The actor class: loads the model once, then turns each window into results (a closure over `work`, so the
    work travels with the class rather than as constructor arguments in the object store)."""

    class LlmkitWorker:
        def __init__(self) -> None:
            # A load that fails for the user's reasons (a model without the head the task needs) is kept and
            # raised by the first window instead: an error in an actor's constructor reaches the driver only as
            # text, one raised by a task as the exception itself (a one-line message and its exit code).
            self.failed: LlmkitError | None = None
            try:
                self.handle = work.load()
            except LlmkitError as exc:
                self.failed = exc

        def __call__(self, table: Any) -> Any:
            import pyarrow as pa

            records = [InputRecord(text=t, index=i, fields=json.loads(f), line=i + 1)
                       for i, t, f in zip(table[INDEX].to_pylist(), table[TEXT].to_pylist(),
                                          table[FIELDS].to_pylist(), strict=True)]
            try:
                if self.failed is not None:
                    raise self.failed
                results = list(work.run(self.handle, records))
            except LlmkitError as exc:
                raise RuntimeError(carry_error(exc, records[0].index if records else 0, len(records))) from None
            if len(results) != len(records):
                raise RuntimeError(f"the task gave {len(results)} results for {len(records)} records")
            if parts:
                from llmkit.output import to_record

                rows = [{OUTPUT_INDEX: r.index, **to_record(result, r.fields)}
                        for r, result in zip(records, results, strict=True)]
                return pa.Table.from_pylist(rows)
            payload = [json.dumps(dataclasses.asdict(result), ensure_ascii=False) for result in results]
            return table.append_column(RESULT, pa.array(payload, pa.string()))

    return LlmkitWorker


def run(ds: Any, work: Work, settings: RaySettings, *, windows: int, parts: bool = False) -> Any:
    """`ds` (from `windows`) mapped by an actor pool; each block is one window, run as one batch.

    The pool has `settings.actors` actors, or one per window when there are fewer (an actor with nothing to do
    would still load a model).
    """
    from ray.data import ActorPoolStrategy

    with warnings.catch_warnings():
        # Ray 2.60 (pinned) takes the restart settings only as `ray_remote_args`, and says they will move.
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(
            _worker_class(work, parts),
            batch_size=None,  # a whole block (one window) per call
            batch_format="pyarrow",
            # one window at a time per actor: a killed actor takes only the window it was running with it
            compute=ActorPoolStrategy(size=max(1, min(settings.actors, windows)), max_tasks_in_flight_per_actor=1),
            num_cpus=settings.actor_cpus,
            num_gpus=settings.actor_gpus or None,
            # A dead actor is restarted (forever) and the blocks it held are run again on the pool (forever): Ray
            # Data's defaults for actor pools too, stated here because the output's completeness rests on them.
            max_restarts=-1,
            max_task_retries=-1,
        )


# --- results --------------------------------------------------------------------------------------------------


def gather(out: Any, total: int, result_type: type) -> Iterator[tuple[InputRecord, Any]]:
    """Every (record, result) in input order; each index must come exactly once.

    Raises:
        RayRunError: an index missing or doubled (which Ray's retries must never cause).
    """
    from llmkit.distributed import rebuild

    expected = 0
    try:
        for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            for index, text, fields, payload in zip(batch[INDEX].to_pylist(), batch[TEXT].to_pylist(),
                                                    batch[FIELDS].to_pylist(), batch[RESULT].to_pylist(), strict=True):
                if index != expected:
                    what = "missing" if index > expected else "doubled"
                    raise RayRunError(f"input {expected + 1} came back {what} from the Ray cluster; no output kept")
                expected += 1
                record = InputRecord(text=text, index=index, fields=json.loads(fields), line=index + 1)
                yield record, rebuild(result_type, json.loads(payload))
    except LlmkitError:
        raise
    except Exception as exc:
        raise _user_error(exc, "the run") from None
    if expected != total:
        raise RayRunError(f"the Ray cluster returned {expected} of {total} records; no output kept")


def write_parts(out: Any, target: str, total: int) -> int:
    """Write the records as a folder of part files under a temporary name, check every index is there once, then
    rename it into place (a URI folder, which cannot be renamed, gets a `_SUCCESS` file last instead).

    The format is JSONL when `target`'s name ends in .jsonl, else Parquet.

    Returns:
        The number of records written.
    """
    from llmkit import tempnames

    jsonl = target.rstrip("/").lower().endswith(".jsonl")
    fs, path = check_output_dir(target)
    if is_uri(target):
        scratch, scratch_path = target, path
    else:
        final = Path(path)
        scratch_dir = tempnames.temp_dir(final)
        scratch, scratch_path = str(scratch_dir), str(scratch_dir)
    try:
        try:
            (out.write_json if jsonl else out.write_parquet)(scratch)
        except Exception as exc:
            raise _user_error(exc, "writing the output") from None
        written = _check_parts(fs, scratch_path, total, "json" if jsonl else "parquet")
        if is_uri(target):
            with fs.open_output_stream(f"{path.rstrip('/')}/{SUCCESS}") as marker:
                marker.write(f"{written} records\n".encode())
        else:
            os.replace(scratch, path)
        return written
    finally:
        if not is_uri(target) and os.path.exists(scratch):
            shutil.rmtree(scratch, ignore_errors=True)


def check_output_dir(target: str) -> tuple[Any, str]:
    """Refuse an `--output-dir` that is a file or a folder with something in it (nothing of the user's is
    overwritten); an empty local folder is removed, so that the finished one can take its name.

    Returns:
        The file system and the path in it.
    """
    import pyarrow.fs as pafs

    fs, path = _filesystem(target)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise UsageError(f"--output-dir {target} is a file; name a folder")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path)):
        raise UsageError(f"--output-dir {target} exists and is not empty; remove it or name another folder")
    if info.type == pafs.FileType.Directory and not is_uri(target):
        os.rmdir(path)  # an empty folder: the finished one is renamed onto its name
    return fs, path


def _check_parts(fs: Any, path: str, total: int, fmt: str) -> int:
    """Read the index column back from the parts: every input exactly once."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    try:
        table = pads.dataset(path, format=fmt, filesystem=fs).to_table(columns=[OUTPUT_INDEX])
    except Exception as exc:
        if total == 0:
            return 0
        raise RayRunError(f"the parts written to {path} cannot be read back: {_first_line(exc)}") from None
    indices = table.column(OUTPUT_INDEX)
    distinct = len(pc.unique(indices)) if len(indices) else 0
    if len(indices) != total or distinct != total:
        raise RayRunError(f"the parts hold {len(indices)} records ({distinct} distinct) of {total}; no output kept")
    return len(indices)


# --- errors ---------------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend([getattr(item, "cause", None), item.__cause__, item.__context__])


_CARRIED = re.compile(r"llmkit-error (\{.*?\})\s*$", re.MULTILINE)
_INPUT_NUMBER = re.compile(r"\binput (\d+)\b")


def carry_error(exc: LlmkitError, start: int, count: int) -> str:
    """An llmkit error raised in an actor, as text that survives Ray's wrapping (Ray Data keeps a failed window's
    traceback text, not the exception object): its class, exit code and message, on one line.

    The task numbered the window's inputs from 1; a number up to `count` is made the input's number in the whole
    input (a window after the first starts past `count`, so a number that is already global is never shifted).
    """
    message = exc.message
    if start:
        message = _INPUT_NUMBER.sub(
            lambda m: f"input {int(m.group(1)) + start}" if int(m.group(1)) <= count else m.group(0), message)
    return "llmkit-error " + json.dumps({"type": type(exc).__name__, "exit_code": exc.exit_code, "message": message})


def _carried(exc: BaseException) -> LlmkitError | None:
    """The llmkit error `carry_error` put into a Ray error's text, rebuilt (its class where llmkit.errors has it)."""
    from llmkit import errors

    for cause in _causes(exc):
        match = _CARRIED.search(str(cause))
        if match is None:
            continue
        try:
            value = json.loads(match.group(1))
        except ValueError:
            continue
        kind = getattr(errors, str(value.get("type")), None)
        kind = kind if isinstance(kind, type) and issubclass(kind, LlmkitError) else LlmkitError
        return kind(str(value.get("message", "")), exit_code=int(value.get("exit_code", EXIT_FAILURE)))
    return None


def _user_error(exc: BaseException, during: str) -> LlmkitError:
    """The error a user can act on inside what Ray raised: an llmkit error from an actor as it was, a file that
    cannot be parsed as a DataError, anything else as one line. Ray wraps a task's exception in a RayTaskError
    that also subclasses it, with the task's traceback in its text; the innermost one carries the plain message."""
    carried = _carried(exc)
    if carried is not None:
        return carried
    chain = [c for c in _causes(exc) if not type(c).__name__.startswith(("Ray", "UserCode"))] or [exc]
    for cause in chain:
        if isinstance(cause, LlmkitError):
            return cause
    for cause in reversed(chain):
        name = type(cause).__name__
        if name in ("ArrowInvalid", "ArrowTypeError", "JSONDecodeError", "UnicodeDecodeError", "ParserError"):
            return DataError(f"the input cannot be read: {_first_line(cause)}")
        if isinstance(cause, (FileNotFoundError, PermissionError)):
            return NotFoundError(f"the input cannot be read: {_first_line(cause)}")
    inner = chain[-1]
    return RayRunError(f"Ray failed during {during}: {type(inner).__name__}: {_first_line(inner)}")


# --- one run ---------------------------------------------------------------------------------------------------


def map_records(
    source: str | list[InputRecord],
    build: Callable[[int], Work],
    settings: RaySettings,
    *,
    input_format: str = "auto",
    text_column: str = "text",
    required: tuple[str, ...] = (),
) -> Iterator[tuple[InputRecord, Any]]:
    """A command's (record, result) pairs in input order, computed on a Ray cluster.

    The cluster lives as long as this generator: iterate it to the end (or close it) and Ray is left. With
    `settings.output_dir` the records go to that folder instead and nothing is yielded.

    Args:
        source: `--input` (a path or URI, read by Ray Data), or records this process read (text arguments, stdin).
        build: the command's `Work` for a number of inputs.
        settings: the Ray flags.
        input_format: `--input-format` (auto: by suffix).
        text_column: the column with the text.
        required: other columns the command needs.
    """
    from llmkit.console import info

    if isinstance(source, str):
        fmt = read_format(source, input_format)
        columns = check_input(source, fmt, text_column=text_column, required=required)
    if settings.output_dir is not None:
        check_output_dir(settings.output_dir)
    with warnings.catch_warnings(), cluster(settings) as resources:
        # Ray Data's advice on tuning (UserWarning) is not the user's business here; llmkit's stderr line says
        # what runs where.
        warnings.simplefilter("ignore", UserWarning)
        ds = read(source, fmt, columns) if isinstance(source, str) else from_records(source)
        try:
            ds, total, work = windows(ds, text_column=text_column, build=build)
        except RayRunError:
            problem = None if not isinstance(source, str) or is_uri(source) else local_read_problem(
                source, fmt, columns)
            if problem is not None:
                raise problem from None
            raise
        info(describe(total, work, settings, resources))
        out = run(ds, work, settings, windows=windows_count(total, work.window), parts=settings.output_dir is not None)
        if settings.output_dir is not None:
            written = write_parts(out, settings.output_dir, total)
            info(f"Wrote {written} records to {settings.output_dir}")
            return
        yield from gather(out, total, work.result_type)


def command_pairs(
    settings: RaySettings,
    build: Callable[[int], Work],
    *,
    texts: list[str] | None,
    input_file: Path | None,
    input_format: str = "auto",
    text_column: str = "text",
    required: tuple[str, ...] = (),
) -> Iterator[tuple[InputRecord, Any]] | None:
    """A command's inputs run on Ray: `--input` read by Ray Data, text arguments or stdin read here.

    Returns:
        The (record, result) pairs in input order, or None when `--output-dir` took them (already written).
    """
    from llmkit import distributed
    from llmkit.data import read_inputs
    from llmkit.executors import location

    if distributed.detect().distributed:
        raise UsageError("--executor ray runs from one process: start llmkit once, not under torchrun or "
                         "accelerate launch (Ray places the actors)")
    source: str | list[InputRecord]
    if input_file is not None:
        source = location(input_file)
    else:
        source = list(read_inputs(texts, input_format=input_format, text_field=text_column))
    pairs = map_records(source, build, settings, input_format=input_format, text_column=text_column,
                        required=required)
    if settings.output_dir is None:
        return pairs
    for _ in pairs:  # runs the work; the parts are written inside
        pass
    return None


def windows_count(total: int, window: int) -> int:
    return math.ceil(total / max(1, window)) if total else 0


def describe(total: int, work: Work, settings: RaySettings, resources: dict[str, float]) -> str:
    """One stderr line: what runs where."""
    where = f"the Ray cluster at {settings.address or os.environ.get('RAY_ADDRESS')}" if (
        settings.address or os.environ.get("RAY_ADDRESS")) else "a local Ray cluster"
    actors = max(1, min(settings.actors, windows_count(total, work.window)))
    return (f"Ray: {total} inputs in {windows_count(total, work.window)} windows of {work.window} on "
            f"{actors} actor{'s' if actors != 1 else ''} ({settings.actor_cpus:g} CPU{'s' if settings.actor_cpus != 1 else ''}"
            + (f", {settings.actor_gpus:g} GPU" if settings.actor_gpus else "")
            + f" each), {where} ({resources.get('CPU', 0):g} CPUs)")

