"""`--report-to`: a training run reported to experiment trackers through the Trainer's own integrations.

llmkit adds no logger of its own: the names go to `TrainingArguments.report_to`, and transformers' callbacks
(TensorBoardCallback, TrackioCallback, MLflowCallback, WandbCallback, ...) report from the main process of a
run. What llmkit adds is where the local-first ones write, through the environment variables those callbacks
read, each only when the user has not set it:

- while training, the run's log folder is `OUTPUT.checkpoints/runs/` (beside the checkpoints, so `--resume`
  continues the same logs); when the output is complete it moves into `OUTPUT/runs/`, and a run that fails
  with nothing to resume leaves no log folder behind (training.py does both);
- tensorboard: `runs/<run name>/` (TENSORBOARD_LOGGING_DIR), so `tensorboard --logdir OUTPUT/runs` shows it;
- trackio: `runs/trackio/` (TRACKIO_DIR), project `llmkit`, so `TRACKIO_DIR=OUTPUT/runs/trackio trackio show`;
- mlflow: a file store `runs/mlruns/` (MLFLOW_TRACKING_URI, with MLFLOW_ALLOW_FILE_STORE);
- wandb: `runs/wandb/`, offline unless WANDB_MODE or WANDB_API_KEY says otherwise (`wandb sync` uploads it).

Torch-free: importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import MissingDependencyError, UsageError

LOG_FOLDER = "runs"  # OUTPUT/runs: where TensorBoard, trackio, mlflow and wandb write
PROJECT = "llmkit"  # trackio's project name (TrainingArguments.project)
NONE = "none"


@dataclass(frozen=True)
class Tracker:
    """One `--report-to` name: the modules that make it available and how to install it."""

    name: str
    modules: tuple[str, ...]  # any one importable = installed (as transformers' is_*_available checks)
    install: str
    local: bool = False  # writes into OUTPUT/runs without any account or network


def _extra(name: str) -> str:
    return f"pip install 'llmkit[{name}]'"


# The integrations of transformers 5 (`integrations.INTEGRATION_TO_CALLBACK`); the local-first four have extras.
TRACKERS: dict[str, Tracker] = {
    t.name: t
    for t in (
        Tracker("tensorboard", ("tensorboard", "tensorboardX"), _extra("tensorboard"), local=True),
        Tracker("trackio", ("trackio",), _extra("trackio"), local=True),
        Tracker("mlflow", ("mlflow",), _extra("mlflow"), local=True),
        Tracker("wandb", ("wandb",), _extra("wandb"), local=True),
        Tracker("comet_ml", ("comet_ml",), "pip install comet-ml"),
        Tracker("clearml", ("clearml",), "pip install clearml"),
        Tracker("swanlab", ("swanlab",), "pip install swanlab"),
        Tracker("dvclive", ("dvclive",), "pip install dvclive"),
        Tracker("neptune", ("neptune",), "pip install neptune"),
        Tracker("codecarbon", ("codecarbon",), "pip install codecarbon"),
        Tracker("azure_ml", ("azureml.core",), "pip install azureml-core"),
        Tracker("dagshub", ("dagshub",), "pip install dagshub mlflow"),
        Tracker("flyte", ("flytekit",), "pip install flytekit flytekitplugins-deck-standard"),
    )
}


def parse_report_to(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`--report-to` (a comma-separated string, or a list from a TOML file) as a tuple of tracker names.

    "none", "" and None mean no tracker. Names are lower-cased and kept once, in the order given.

    Raises:
        UsageError: an unknown name, or "none" together with a tracker.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names: list[str] = []
    for item in items:
        name = item.strip().lower().replace("-", "_")
        if name and name not in names:
            names.append(name)
    if NONE in names:
        if len(names) > 1:
            raise UsageError("--report-to none cannot be combined with a tracker; give the trackers alone")
        return ()
    for name in names:
        if name not in TRACKERS:
            local = ", ".join(t.name for t in TRACKERS.values() if t.local)
            others = ", ".join(t.name for t in TRACKERS.values() if not t.local)
            raise UsageError(f"--report-to {name!r} is not a tracker; use none, {local} (local) or {others}")
    return tuple(names)


def is_installed(name: str) -> bool:
    """Whether the tracker `name` can be imported (without importing it)."""
    for module in TRACKERS[name].modules:
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):  # a parent package missing (azureml.core), or a broken install
            continue
    return False


def check_installed(names: Iterable[str]) -> None:
    """Raise MissingDependencyError (one line, the install command) for the first tracker not installed."""
    for name in names:
        if not is_installed(name):
            raise MissingDependencyError(
                f"--report-to {name} needs {TRACKERS[name].modules[0]}: {TRACKERS[name].install}"
            )


def log_folder(checkpoints: Path | str) -> Path:
    """The log folder of a run whose checkpoints go to `checkpoints` (the Trainer's output_dir)."""
    return Path(checkpoints) / LOG_FOLDER


def environment(names: Iterable[str], folder: Path | str, run_name: str) -> dict[str, str]:
    """The environment variables that point the local trackers among `names` at `folder`.

    Args:
        names: tracker names (`parse_report_to`).
        folder: the run's log folder (`log_folder`).
        run_name: the run's name (TensorBoard's subfolder).

    Returns:
        Variable -> value; `apply_environment` sets those the user has not set.
    """
    names = set(names)
    folder = Path(folder).absolute()
    env: dict[str, str] = {}
    if "tensorboard" in names:
        env["TENSORBOARD_LOGGING_DIR"] = str(folder / run_name)
    if "trackio" in names:
        env["TRACKIO_DIR"] = str(folder / "trackio")
    if "mlflow" in names and not os.environ.get("MLFLOW_TRACKING_URI"):
        # A file store: no server, and no database to create (MLflow 3's sqlite default runs ~50 schema
        # migrations first). MLflow keeps it in maintenance mode and refuses it unless allowed.
        env["MLFLOW_TRACKING_URI"] = (folder / "mlruns").as_uri()
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if "wandb" in names:
        env["WANDB_DIR"] = str(folder)
        if not os.environ.get("WANDB_API_KEY"):
            env["WANDB_MODE"] = "offline"  # nothing leaves the machine unless the user configured an account
    return env


def apply_environment(env: dict[str, str]) -> dict[str, str | None]:
    """Set each variable of `env` that is not set yet; return what to give `restore_environment`."""
    applied: dict[str, str | None] = {}
    for key, value in env.items():
        if os.environ.get(key):
            continue  # the user's choice (a shared store, an online account) wins
        applied[key] = os.environ.get(key)
        os.environ[key] = value
    return applied


def restore_environment(applied: dict[str, str | None]) -> None:
    """Undo `apply_environment`."""
    for key, old in applied.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def trackio_store_note(env: dict[str, str]) -> str | None:
    """A warning when trackio was imported earlier in this process with another store folder.

    trackio reads TRACKIO_DIR once, when it is first imported; a second run in the same process (a notebook)
    keeps writing where the first one did.
    """
    module = sys.modules.get("trackio.utils")
    wanted = env.get("TRACKIO_DIR") or os.environ.get("TRACKIO_DIR")
    current = getattr(module, "TRACKIO_DIR", None) if module is not None else None
    if current is None or wanted is None or Path(current) == Path(wanted):
        return None
    return (
        f"trackio was imported earlier in this process and keeps writing to {current}; "
        "run each training in its own process to get OUTPUT/runs/trackio"
    )


def _integration_kinds() -> tuple[type, ...]:
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    return tuple(INTEGRATION_TO_CALLBACK.values())


class StdoutToStderr:
    """A Trainer callback whose events run with stdout sent to stderr.

    Trackers print banners (trackio: "* Trackio project initialized ..."), but llmkit's stdout is data (JSON
    lines): the Trainer calls this wrapper, which calls the tracker's callback with `print` going to stderr.
    """

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.callback, name)
        if not name.startswith("on_") or not callable(value):
            return value

        def event(*args: Any, **kwargs: Any) -> Any:
            with contextlib.redirect_stdout(sys.stderr):
                return value(*args, **kwargs)

        return event


def quiet_stdout(trainer: Any) -> None:
    """Wrap the Trainer's reporting callbacks in `StdoutToStderr`."""
    callbacks = trainer.callback_handler.callbacks
    kinds = _integration_kinds()
    for i, callback in enumerate(callbacks):
        if isinstance(callback, kinds):
            callbacks[i] = StdoutToStderr(callback)


def detach(trainer: Any) -> None:
    """Remove the Trainer's reporting callbacks once training is over (and close the wandb run).

    A later `evaluate()`/`predict()` (the final validation report) would otherwise reopen a closed TensorBoard
    writer in a new file, start a second trackio run, or an MLflow run of its own.
    """
    kinds = _integration_kinds()
    for callback in list(trainer.callback_handler.callbacks):
        if isinstance(getattr(callback, "callback", callback), kinds):
            trainer.callback_handler.callbacks.remove(callback)
    wandb = sys.modules.get("wandb")
    if "wandb" in (trainer.args.report_to or []) and wandb is not None and getattr(wandb, "run", None) is not None:
        # The Trainer leaves the wandb run open until the process exits (its banner then lands on stdout), and a
        # second training in the process (distill's --baseline) would log into it: close it with this training.
        with contextlib.redirect_stdout(sys.stderr):
            wandb.finish()


def relocate(source: Path, target: Path, final: Path) -> None:
    """Move a log folder from `source` to `target` (the staging folder's runs/, renamed to `final` next).

    MLflow's file store records absolute artifact paths in its meta.yaml files: they are rewritten to `final`,
    where the folder will be, so `mlflow ui --backend-store-uri OUTPUT/runs/mlruns` finds the artifacts.
    """
    if target.exists():
        shutil.rmtree(target)
    old_uri, new_uri = source.absolute().as_uri(), final.absolute().as_uri()
    old_path, new_path = str(source.absolute()), str(final.absolute())
    for meta in source.glob("mlruns/**/meta.yaml"):
        text = meta.read_text(encoding="utf-8")
        fixed = text.replace(old_uri, new_uri).replace(old_path, new_path)
        if fixed != text:
            meta.write_text(fixed, encoding="utf-8")
    os.replace(source, target)


def viewing_hints(names: Iterable[str], output: Path | str) -> list[str]:
    """One line per local tracker of a finished run: where its log is and the command that shows it.

    Trackers whose store the user chose (TRACKIO_DIR, MLFLOW_TRACKING_URI, WANDB_DIR set) are named without a
    folder: their logs are where the user sent them.
    """
    runs = Path(output) / LOG_FOLDER
    lines = []
    for name in names:
        if name == "tensorboard" and not os.environ.get("TENSORBOARD_LOGGING_DIR"):
            lines.append(f"tensorboard: tensorboard --logdir {runs}")
        elif name == "trackio":
            where = "" if os.environ.get("TRACKIO_DIR") else f"TRACKIO_DIR={runs / 'trackio'} "
            lines.append(f"trackio: {where}trackio show --project {PROJECT}")
        elif name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
            lines.append(f"mlflow: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {runs / 'mlruns'}")
        elif name == "wandb" and not os.environ.get("WANDB_DIR"):
            lines.append(f"wandb: {runs / 'wandb'} (offline runs upload with `wandb sync`)")
    return lines
