"""Executors: where a command's inference runs. `local` is this process (today's path, and torchrun/accelerate
launch through llmkit/distributed.py); `ray` is a Ray cluster through Ray Data (llmkit/executors/ray_data.py).

What every executor runs is a `Work`: `load()` once per worker process (the model, through the task module's
own `loaded=`/handle mechanism), then `run(handle, records)` on any number of batches of `InputRecord`s, one
result dataclass per record, in order. A command builds its `Work` from the number of inputs (`build(total)`),
because some auto rules count the inputs (generate's engine choice, classify's calibration), and the Ray
executor hands each actor batches of exactly `Work.window` consecutive records starting at a multiple of it: the
same windows the task function reads and sorts by length when it runs in one process, so every batch is padded
alike and the records come out identical to `--executor local`.

This module is torch-free and ray-free: the CLI imports it to check flags before anything heavy loads.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError

EXECUTORS = ("local", "ray")
DEFAULT_ACTORS = 2  # model copies on the cluster; one per core of the 2-core machine the goals were measured on
DEFAULT_ACTOR_CPUS = 1.0  # logical CPUs each actor reserves (Ray also sets its thread count from this)
DEFAULT_ACTOR_GPUS = 0.0
# Batches per window for a task that runs its batches in input order without reading ahead (fill-mask): any
# multiple of its batch size reproduces the one-process batches; this many keep the per-window overhead small.
BATCHES_PER_WINDOW = 16
RAY_EXTRA_HINT = "pip install 'llmkit[ray]'"
# `scheme://...` (s3, gs, abfs, hdfs, file, ...): read and written through pyarrow's file systems.
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):/(?P<slashes>/*)(?P<rest>.*)$")


@dataclass(frozen=True)
class Work:
    """One command's inference, split so that a worker loads its model once and runs many batches.

    Attributes:
        load: builds the handle (a loaded model, an `Embedder`, ...); called once per worker process.
        run: `run(handle, records)` yields one result dataclass per `InputRecord`, in order.
        window: records per batch that reproduce the one-process run exactly (the task's length-sorting window,
            or a multiple of its batch size); batches start at multiples of it.
        result_type: the result dataclass, to rebuild results that travelled as JSON.
    """

    load: Callable[[], Any]
    run: Callable[[Any, list[Any]], Iterable[Any]]
    window: int
    result_type: type


@dataclass(frozen=True)
class RaySettings:
    """`--executor ray` and its flags, as given.

    Attributes:
        actors: actors in the pool, each holding one copy of the model.
        actor_cpus / actor_gpus: what each actor reserves on the cluster.
        address: the cluster to join (`--ray-address` / RAY_ADDRESS); None starts a local cluster for the run.
        output_dir: write the records as a folder of part files there (a path or URI), instead of gathering them.
    """

    actors: int = DEFAULT_ACTORS
    actor_cpus: float = DEFAULT_ACTOR_CPUS
    actor_gpus: float = DEFAULT_ACTOR_GPUS
    address: str | None = None
    output_dir: str | None = None

    @property
    def cpus_needed(self) -> int:
        return math.ceil(self.actors * self.actor_cpus)


def ray_installed() -> bool:
    """Whether Ray Data can be imported (the `ray` extra); checked without importing it."""
    try:
        spec = importlib.util.find_spec("ray")  # find_spec("ray.data") would import ray itself (seconds)
    except (ImportError, ValueError):  # a `ray` that cannot be imported (blocked, or a broken install)
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(folder) / "data" / "__init__.py").is_file() for folder in spec.submodule_search_locations)


def settings_for(
    executor: str,
    *,
    actors: int | None,
    actor_cpus: float | None,
    actor_gpus: float | None,
    address: str | None,
    output_dir: Path | None,
) -> RaySettings | None:
    """Check the executor flags of a command; the Ray settings, or None for the local executor.

    Raises:
        UsageError: an unknown executor, Ray-only flags without `--executor ray`, or `--executor ray` without
            Ray installed (the message names the extra; exit 2).
    """
    if executor not in EXECUTORS:
        raise UsageError(f"unknown --executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    given = [flag for flag, value in (("--actors", actors), ("--actor-cpus", actor_cpus),
                                      ("--actor-gpus", actor_gpus), ("--output-dir", output_dir)) if value is not None]
    if executor == "local":
        if given:
            raise UsageError(f"{', '.join(given)} apply to --executor ray; add it, or drop them")
        return None
    if not ray_installed():
        raise UsageError(f"--executor ray needs Ray Data; install it with {RAY_EXTRA_HINT}")
    if actor_cpus is not None and actor_cpus <= 0:
        raise UsageError("--actor-cpus must be more than 0 (each actor runs a model on at least part of a core)")
    return RaySettings(
        actors=DEFAULT_ACTORS if actors is None else actors,
        actor_cpus=DEFAULT_ACTOR_CPUS if actor_cpus is None else actor_cpus,
        actor_gpus=DEFAULT_ACTOR_GPUS if actor_gpus is None else actor_gpus,
        address=address or None,
        output_dir=None if output_dir is None else location(output_dir),
    )


def location(path: Path | str) -> str:
    """A path or URI as given on the command line, for pyarrow and Ray Data (a path made absolute).

    Typer hands `--input s3://bucket/key` over as a `Path`, which folds the `//` into one slash (`s3:/bucket/key`);
    this puts the URI back together (`file:` URIs keep their empty host: `file:///data/x.csv`).
    """
    text = str(path)
    match = _URI.match(text)
    if match is None or len(match.group("scheme")) == 1:  # `C:/...` is a Windows drive, not a scheme
        # absolute: Ray's readers and writers run in worker processes with working folders of their own
        return str(Path(text).absolute())
    scheme, rest = match.group("scheme"), match.group("rest")
    if scheme.lower() == "file":
        return f"file:///{rest.lstrip('/')}"
    return f"{scheme}://{rest}"


def is_uri(text: str) -> bool:
    """Whether `text` names a location on a file system other than the local one's plain paths."""
    match = _URI.match(text)
    return match is not None and len(match.group("scheme")) > 1 and bool(match.group("slashes"))
