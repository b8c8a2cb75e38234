"""Results to stdout, talk to stderr.

stdout is data: one JSON object per result (JSON lines) when it is not a terminal or with `--json`, bare text with
`--format text`, and rich tables/panels only on a terminal. Every record is flushed as soon as it is written so
that `llmkit ... | head -1` sees the first result at once. Progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich loads only when a terminal or --format rich asks for it (about 35 ms of start-up)
    from rich.console import Console

from llmkit.console import info, stderr_console, warn  # noqa: F401  (re-exported: commands talk through output)

FORMATS = ("auto", "json", "text", "rich")

_stdout: Console | None = None


def stdout_console() -> Console:
    """The console for rich results (only used when stdout is a terminal or `--format rich`)."""
    global _stdout
    if _stdout is None:
        from rich.console import Console

        _stdout = Console(highlight=False, soft_wrap=True)
    return _stdout


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_format(fmt: str | None, json_flag: bool = False) -> str:
    """Pick the output format: `--json` wins, then `--format`, then terminal -> rich, pipe -> json."""
    if json_flag:
        return "json"
    if fmt and fmt != "auto":
        return fmt
    return "rich" if stdout_is_terminal() else "json"



def _plain(value: Any) -> Any:
    """Dataclasses, tuples and non-finite floats -> JSON-safe plain values."""
    if is_dataclass(value) and not isinstance(value, type):
        # field by field, not `asdict`: that deep-copies every value first (0.2 ms a result, 1,000 results a
        # second in a classify run), and the recursion below builds new containers anyway
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_record(result: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A result dataclass (or dict) as a JSON record, after the input record's passthrough fields."""
    record: dict[str, Any] = dict(extra or {})
    plain = _plain(result)
    if isinstance(plain, dict):
        record.update(plain)
    else:
        record["result"] = plain
    return record


def write_json(record: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed."""
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def json_line(record: dict[str, Any]) -> str:
    """A plain record (see `to_record`) as one JSON line without its newline, by orjson: a numpy float32 array is
    written as a list of its values' shortest float32 text (0.012573021, which reads back as the same float32;
    json.dumps of the same values as Python floats writes 17 digits). 3,000 x 384 floats: 0.04 s against 0.65 s.
    Falls back to json.dumps for what orjson refuses (an integer beyond 64 bits)."""
    import orjson

    try:
        return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):
        plain = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in record.items()}
        return json.dumps(_plain(plain), ensure_ascii=False)


def write_text(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


class Emitter:
    """Writes each result the moment it exists, in the chosen format.

    Args:
        fmt: "json", "text" or "rich" (see `resolve_format`).
        text: result -> bare text, for `--format text`.
        rich: result -> a rich renderable, for the terminal.
    """

    def __init__(
        self,
        fmt: str,
        *,
        text: Callable[[Any], str],
        rich: Callable[[Any], Any] | None = None,
    ) -> None:
        self.fmt = fmt
        self._text = text
        self._rich = rich
        self.count = 0

    def emit(self, result: Any, extra: dict[str, Any] | None = None) -> None:
        self.count += 1
        if self.fmt == "json":
            write_json(to_record(result, extra))
        elif self.fmt == "text":
            write_text(self._text(result))
        else:
            renderable = self._rich(result) if self._rich else self._text(result)
            stdout_console().print(renderable)


def silence_stdout_after_broken_pipe() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def models_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Models", title_justify="left")
    for column in ("name", "kind", "installed", "size", "where / how to install"):
        table.add_column(column)
    for row in rows:
        installed = "[green]yes[/green]" if row.get("installed") else "[red]no[/red]"
        table.add_row(row["name"], row["kind"], installed, human_size(row.get("size_bytes")), str(row["path"]))
    return table


class GenerationStream:
    """Terminal view of `generate`: text appears as tokens arrive, then a dim footer with the numbers."""

    def __init__(self) -> None:
        self.started: set[int] = set()

    def delta(self, index: int, text: str) -> None:
        if index not in self.started:
            self.started.add(index)
        sys.stdout.write(text)
        sys.stdout.flush()

    def finish(self, result: Any) -> Any:
        from rich.text import Text

        lines = Text()
        if not getattr(result, "candidates", None):
            if not self.started:  # nothing streamed (batched run): show the text now
                lines.append(result.text)
            self.started.clear()
            sys.stdout.write("\n")
        else:
            self.started.clear()
            for rank, cand in enumerate(result.candidates, start=1):
                score = "" if cand.score is None else f"  (score {cand.score:.3f})"
                lines.append(f"{rank}. {cand.text}{score}\n")
        footer = (
            f"[{result.finish_reason} · {result.prompt_tokens}+{result.completion_tokens} tokens · "
            f"{result.tokens_per_second:.1f} tok/s · {result.engine}]"
        )
        lines.append(footer, style="dim")
        return lines


# --- fill-mask and classify views ------------------------------------------------------------------------------


def mask_view(result: Any) -> Any:
    """Terminal view of one `MaskPrediction`: a table per mask (and the joint fillings), with the method."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if result.error:
        return Text(f"{result.text!r}: {result.error}", style="yellow")
    parts: list[Any] = []
    for number, fills in enumerate(result.masks, start=1):
        title = f"mask {number}" if len(result.masks) > 1 else "answers"
        table = Table(title=f"{result.text}  [dim]({title}, {result.method})[/dim]", title_justify="left")
        for column in ("#", "token", "score", "sequence"):
            table.add_column(column, justify="right" if column in ("#", "score") else "left")
        for rank, fill in enumerate(fills, start=1):
            table.add_row(str(rank), fill.token, f"{fill.score:.4f}", fill.sequence)
        parts.append(table)
    if result.joint:
        table = Table(title="joint fillings", title_justify="left")
        for column in ("#", "tokens", "score", "sequence"):
            table.add_column(column, justify="right" if column in ("#", "score") else "left")
        for rank, item in enumerate(result.joint, start=1):
            table.add_row(str(rank), " | ".join(item.tokens), f"{item.score:.3g}", item.sequence)
        parts.append(table)
    return Group(*parts)


def classification_view(result: Any) -> Any:
    """Terminal view of one `Classification`: the label, its score and the other scores asked for."""
    from rich.text import Text

    if result.error:
        return Text(f"{result.text!r}: {result.error}", style="yellow")
    line = Text()
    line.append(f"{result.label}", style="bold")
    line.append(f"  {result.score:.4f}  ")
    others = [f"{s.label} {s.score:.3f}" for s in result.scores[1:]]
    if others:
        line.append("(" + ", ".join(others) + ")  ", style="dim")
    line.append(result.text if len(result.text) <= 80 else result.text[:77] + "...")
    return line


def emit_report(report: Any, fmt: str) -> None:
    """An `Evaluation` (classify --evaluate) on stdout: the metrics view on a terminal, two lines as text, else JSON."""
    if fmt == "rich":
        from llmkit.metrics import report_renderable

        stdout_console().print(report_renderable(report, title="per class"))
    elif fmt == "text":
        write_text(f"accuracy\t{report.accuracy:.4f}\nmacro_f1\t{report.macro_f1:.4f}")
    else:
        write_json(to_record(report))


def report_skipped(results: list[Any], what: str) -> None:
    """One warning each for inputs that were cut or had nothing to process (never dropped silently)."""
    cut = sum(1 for r in results if r.truncated)
    if cut:
        warn(f"{cut} of {len(results)} inputs were longer than the model's maximum and were truncated "
             f"(--no-truncate to stop instead)")
    empty = [str(i + 1) for i, r in enumerate(results) if r.error == "empty input"]
    if empty:
        shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
        warn(f"{len(empty)} empty input(s) got no {what} (input {shown}); they are in the output with "
             "an \"error\" field")


from llmkit.data import TABLE_SUFFIXES, WRITE_FORMATS  # noqa: E402,F401  (the one suffix map)


def write_table(path: Any, columns: list[str], rows: Any) -> int:
    """Write rows (dicts) as CSV/TSV/JSONL/Parquet (by suffix) under a temporary name, then rename into place.

    The temporary follows tempnames.py's rule: first the stale temporaries of a killed earlier run for the same
    output are removed (a live run's stay), then this run's own carries its process id and is journalled, so a
    `kill -9` leaves nothing the next run or `llmkit models --clean` cannot remove; any other stop removes it.

    Args:
        path: the output file; its suffix picks the format.
        columns: column order (CSV/TSV/Parquet); keys missing from a row are left empty.
        rows: an iterable of dicts, consumed as it is written (Parquet collects them first).

    Returns:
        The number of rows written.
    """
    import csv
    from pathlib import Path

    from llmkit import tempnames
    from llmkit.errors import UsageError

    path = Path(path)
    fmt = TABLE_SUFFIXES.get(path.suffix.lower())
    if fmt not in WRITE_FORMATS:
        raise UsageError(f"--output {path}: use a .csv, .tsv, .jsonl or .parquet file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    journal = tempnames.journal_dir()
    for removed in tempnames.sweep(path, journal=journal):
        info(tempnames.describe(removed))
    count = 0
    with tempnames.replacing(path, journal=journal) as tmp:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            collected = [_ordered(r, columns) for r in rows]
            count = len(collected)
            pq.write_table(pa.Table.from_pylist(collected), str(tmp))
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                if fmt == "jsonl":
                    for row in rows:
                        handle.write(json.dumps(_plain(_ordered(row, columns)), ensure_ascii=False) + "\n")
                        count += 1
                else:
                    writer = csv.DictWriter(handle, fieldnames=columns, delimiter="," if fmt == "csv" else "\t",
                                            extrasaction="ignore")
                    writer.writeheader()
                    for row in rows:
                        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
                        count += 1
    return count


def _ordered(row: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """A row with `columns` first, in that order, then any other keys."""
    ordered = {c: row.get(c) for c in columns}
    ordered.update((k, v) for k, v in row.items() if k not in ordered)
    return ordered

def quantize_table(report: Any) -> Any:
    """Terminal view of `quantize`: original vs quantized, with the change, then agreement and the gate."""
    from rich.table import Table

    before, after = report.original, report.quantized
    lower_better = before.quality_metric.endswith("perplexity")
    table = Table(title=f"quantize {report.method} · {report.model}", title_justify="left")
    source = getattr(report, "original_gguf", None)
    for column in ("", "original", "quantized", "change", *(["original .gguf"] if source else [])):
        table.add_column(column, justify="left" if not column else "right")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{b / a:.2f}x" if a and b is not None else "-"

    def extra(value: str) -> list[str]:
        return [value] if source else []

    table.add_row("measured by", before.engine, after.engine, "", *extra(source.engine if source else ""))
    table.add_row("size on disk", human_size(before.size_bytes), human_size(after.size_bytes),
                  ratio(before.size_bytes, after.size_bytes), *extra(human_size(source.size_bytes) if source else ""))
    table.add_row("load time", f"{before.load_seconds:.2f} s", f"{after.load_seconds:.2f} s",
                  ratio(before.load_seconds, after.load_seconds), *extra(f"{source.load_seconds:.2f} s" if source else ""))
    table.add_row(f"speed ({before.speed_unit})", f"{before.speed:.1f}", f"{after.speed:.1f}",
                  ratio(before.speed, after.speed), *extra(f"{source.speed:.1f}" if source else ""))
    worse = report.quality_drop_percent > 0
    change = f"{'+' if lower_better == worse else '-'}{abs(report.quality_drop_percent):.2f}%"
    style = "red" if worse else "green"
    table.add_row(
        before.quality_metric, f"{before.quality:.4g}", f"{after.quality:.4g}", f"[{style}]{change}[/{style}]",
        *extra(f"{source.quality:.4g}" if source else ""),
    )  # fmt: skip
    table.add_row("top-1 agreement", "", f"{report.top1_agreement:.1%}", "", *extra(""))
    kl = "-" if report.kl_divergence is None else f"{report.kl_divergence:.4f}"
    table.add_row("KL divergence", "", kl, "", *extra(""))
    gate = "" if report.max_drop is None else f" · gate --max-drop {report.max_drop:g}%: passed"
    table.caption = f"written to {report.output}{gate}"
    return table
