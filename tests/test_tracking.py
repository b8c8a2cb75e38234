"""`--report-to`: tiny runs whose tracker files are read back with each tracker's own reader, the log folder's
place in the atomic output, and the one-line errors for unknown or missing trackers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmkit import tracking, training
from llmkit.cli import app
from llmkit.errors import EXIT_MISSING_DEPENDENCY, EXIT_USAGE, MissingDependencyError, UsageError

ROOT = Path(__file__).resolve().parent.parent
SENTIMENT = Path(__file__).parent / "data" / "sentiment.csv"
# 16 rows, validation 0.25: 12 training rows in 3 batches of 4 -> 6 steps, a loss logged at each, evaluations at 3, 6
RUN = ["--validation-split", "0.25", "--batch-size", "4", "--max-steps", "6", "--eval-steps", "3", "--lr", "0.01",
       "--seed", "1", "--json"]  # fmt: skip
TRACKER_VARIABLES = ("TENSORBOARD_LOGGING_DIR", "TRACKIO_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE",
                     "WANDB_DIR", "WANDB_MODE", "WANDB_API_KEY")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_tracker_settings(monkeypatch: pytest.MonkeyPatch):
    for name in TRACKER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = SENTIMENT.read_text().splitlines()
    pos = [r for r in rows[1:] if r.endswith(",positive")][:8]
    neg = [r for r in rows[1:] if r.endswith(",negative")][:8]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    path.write_text("\n".join([rows[0]] + [x for pair in zip(pos, neg, strict=True) for x in pair]) + "\n")
    return path


def finetune(args: list[str]) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(app, ["finetune", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, records, result.stderr


def logged(records: list[dict], key: str = "loss", event: str = "log") -> dict[int, float]:
    return {r["step"]: r[key] for r in records if r.get("event") == event and key in r}


def tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


# --- one run per local tracker, read back with the tracker's own reader --------------------------------------


def test_tensorboard_and_mlflow_hold_the_loss_and_evaluations_at_their_steps(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sentiment"
    code, records, stderr = finetune([str(small_csv), "-m", str(tiny_encoder), "-o", str(out), *RUN,
                                      "--report-to", "tensorboard,mlflow", "--run-name", "exp-1"])
    assert code == 0, stderr
    losses, eval_losses = logged(records), logged(records, "eval_loss", "eval")
    accuracies = logged(records, "eval_accuracy", "eval")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and sorted(eval_losses) == [3, 6]

    # TensorBoard: OUTPUT/runs/<run name>, read by TensorBoard's own event reader
    board = tensorboard_scalars(out / "runs" / "exp-1", "train/loss")
    assert board.keys() == losses.keys()
    assert all(board[s] == pytest.approx(losses[s], abs=1e-5) for s in losses)
    assert tensorboard_scalars(out / "runs" / "exp-1", "eval/loss") == pytest.approx(eval_losses, abs=1e-5)
    assert tensorboard_scalars(out / "runs" / "exp-1", "eval/accuracy") == pytest.approx(accuracies, abs=1e-5)
    assert not any(name in os.environ for name in TRACKER_VARIABLES)  # the environment is as it was

    # MLflow: a file store in OUTPUT/runs/mlruns, read by its client; its artifact paths point at the final folder
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = (out / "runs" / "mlruns").absolute().as_uri()
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs(experiment_ids=["0"])
    assert run.info.run_name == "exp-1"
    assert run.info.artifact_uri.startswith(store)
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(losses, abs=1e-5)
    evals = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_loss")}
    assert evals == pytest.approx(eval_losses, abs=1e-5)

    # the logs moved into the output; nothing else is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentiment"]
    assert "Log for tensorboard: tensorboard --logdir" in stderr and str(out / "runs") in stderr


def test_trackio_writes_its_local_store_into_the_output_and_keeps_stdout_json(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path
) -> None:
    # trackio reads TRACKIO_DIR once, at import: a fresh process, as the command runs
    out = tmp_path / "sentiment"
    env = {k: v for k, v in os.environ.items() if k not in TRACKER_VARIABLES}
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "llmkit", "finetune", str(small_csv), "-m", str(tiny_encoder), "-o", str(out), *RUN,
         "--report-to", "trackio"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # trackio's banner went to stderr
    assert "Trackio" in proc.stderr
    losses, eval_losses = logged(records), logged(records, "eval_loss", "eval")

    # trackio's own local store reader, pointed at OUTPUT/runs/trackio
    reader = (
        "import json; from trackio.sqlite_storage import SQLiteStorage as S; "
        "print(json.dumps({'projects': S.get_projects(), 'runs': S.get_runs('llmkit'), "
        "'logs': S.get_logs('llmkit', 'sentiment')}))"
    )
    read = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=120,
                          env={**env, "TRACKIO_DIR": str(out / "runs" / "trackio")})
    assert read.returncode == 0, read.stderr
    store = json.loads(read.stdout)
    assert store["projects"] == ["llmkit"] and store["runs"] == ["sentiment"]
    # The Trainer's integration logs the Trainer's step as train/global_step beside each value.
    train = {r["train/global_step"]: r["train/loss"] for r in store["logs"] if "train/loss" in r}
    evals = {r["train/global_step"]: r["eval/loss"] for r in store["logs"] if "eval/loss" in r}
    assert train == pytest.approx(losses, abs=1e-5)
    assert evals == pytest.approx(eval_losses, abs=1e-5)
    assert not (tmp_path / "hf" / "trackio").exists()  # nothing went to trackio's default store
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf") == ["sentiment"]


# --- the log folder and the atomic output ----------------------------------------------------------------------


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    def interrupt(self, args, state, control, **kwargs):
        if state.global_step == step:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of training

    monkeypatch.setattr(training._ProgressMixin, "on_step_end", interrupt)


def test_a_failed_run_with_nothing_to_resume_leaves_no_logs(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sentiment"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        code, _, stderr = finetune([str(small_csv), "-m", str(tiny_encoder), "-o", str(out), *RUN,
                                    "--report-to", "tensorboard"])
    assert code == 130, stderr
    assert list(tmp_path.iterdir()) == []  # no output, no checkpoint folder, no stray tracker logs
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ


def test_resume_continues_the_logs_of_the_interrupted_run(
    tiny_encoder: Path, small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sentiment"
    args = [str(small_csv), "-m", str(tiny_encoder), "-o", str(out), *RUN, "--save-steps", "2",
            "--report-to", "tensorboard"]  # fmt: skip
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)  # after the checkpoint of step 2
        code, first, _ = finetune(args)
    assert code == 130
    assert (training.checkpoint_dir(out) / "runs" / "sentiment").is_dir()  # kept with the checkpoint
    code, second, stderr = finetune([*args, "--resume"])
    assert code == 0, stderr
    losses = {**logged(first), **logged(second)}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    board = out / "runs" / "sentiment"
    assert len(list(board.glob("events.out.tfevents.*"))) == 2  # one file per attempt, one run
    assert tensorboard_scalars(board, "train/loss") == pytest.approx(losses, abs=1e-5)
    assert not training.checkpoint_dir(out).exists()


def test_a_fresh_run_drops_the_logs_a_killed_run_left(tmp_path: Path) -> None:
    out = tmp_path / "model"
    stale = training.checkpoint_dir(out) / "runs" / "model"
    stale.mkdir(parents=True)
    (stale / "events.out.tfevents.1.old").write_bytes(b"x")
    training.check_output(out)  # what a run without --resume does first
    assert list(tmp_path.iterdir()) == []


def test_resume_keeps_the_logs_beside_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "model"
    checkpoint = training.checkpoint_dir(out) / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    logs = training.checkpoint_dir(out) / "runs" / "model"
    logs.mkdir(parents=True)
    training.check_output(out, resume=True)
    assert logs.is_dir()


# --- errors before any model loads ---------------------------------------------------------------------------


def test_a_missing_tracker_is_one_line_naming_the_extra_and_writes_nothing(
    small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: importing it fails
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    out = tmp_path / "sentiment"
    # a model that does not exist: the tracker is checked before any model is looked for
    code, records, stderr = finetune([str(small_csv), "-m", str(tmp_path / "no-model"), "-o", str(out),
                                      "--report-to", "mlflow,tensorboard"])
    assert code == EXIT_MISSING_DEPENDENCY
    assert records == []
    assert stderr == "Error: --report-to tensorboard needs tensorboard: pip install 'llmkit[tensorboard]'\n"
    assert list(tmp_path.iterdir()) == []


def test_a_missing_tracker_stops_distill_before_the_teacher_loads(
    small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "trackio", None)
    result = CliRunner().invoke(app, ["distill", str(small_csv), "--teacher", str(tmp_path / "no-teacher"),
                                      "-o", str(tmp_path / "s"), "--report-to", "trackio"])
    assert result.exit_code == EXIT_MISSING_DEPENDENCY
    assert result.stderr == "Error: --report-to trackio needs trackio: pip install 'llmkit[trackio]'\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tensorbord", "--report-to 'tensorbord' is not a tracker; use none, tensorboard, trackio, mlflow, wandb"),
        ("none,mlflow", "--report-to none cannot be combined with a tracker"),
    ],
)
def test_an_unknown_tracker_is_a_usage_error(small_csv: Path, tmp_path: Path, value: str, message: str) -> None:
    code, _, stderr = finetune([str(small_csv), "-o", str(tmp_path / "x"), "--report-to", value])
    assert code == EXIT_USAGE
    assert stderr.startswith(f"Error: {message}") and stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# --- the pieces --------------------------------------------------------------------------------------------------


def test_parse_report_to_normalises_names() -> None:
    assert tracking.parse_report_to(None) == ()
    assert tracking.parse_report_to("none") == ()
    assert tracking.parse_report_to("") == ()
    assert tracking.parse_report_to(" TensorBoard, trackio,tensorboard ") == ("tensorboard", "trackio")
    assert tracking.parse_report_to(["mlflow", "comet-ml"]) == ("mlflow", "comet_ml")
    with pytest.raises(UsageError):
        tracking.parse_report_to("tensorflow")


def test_settings_take_report_to_from_a_string_or_a_toml_list(tmp_path: Path) -> None:
    from llmkit.config import load_config, settings_from

    config = tmp_path / "run.toml"
    config.write_text('report-to = ["tensorboard", "mlflow"]\nrun-name = "from-file"\n')
    settings = settings_from(training.TrainSettings, load_config(config), {})
    assert settings.report_to == ("tensorboard", "mlflow") and settings.run_name == "from-file"
    flags = settings_from(training.TrainSettings, load_config(config), {"report_to": "trackio"})
    assert flags.report_to == ("trackio",)  # the flag wins over the file
    assert training.TrainSettings().report_to == ()


def test_check_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'llmkit\[wandb\]'"):
        tracking.check_installed(["wandb"])
    monkeypatch.setitem(sys.modules, "clearml", None)
    with pytest.raises(MissingDependencyError, match="needs clearml: pip install clearml$"):
        tracking.check_installed(["clearml"])  # no extra of llmkit's for the others: their own package


def test_environment_points_each_local_tracker_into_the_log_folder(tmp_path: Path) -> None:
    env = tracking.environment(["tensorboard", "trackio", "mlflow", "wandb"], tmp_path / "runs", "exp")
    assert env == {
        "TENSORBOARD_LOGGING_DIR": str(tmp_path / "runs" / "exp"),
        "TRACKIO_DIR": str(tmp_path / "runs" / "trackio"),
        "MLFLOW_TRACKING_URI": (tmp_path / "runs" / "mlruns").as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "WANDB_DIR": str(tmp_path / "runs"),
        "WANDB_MODE": "offline",
    }
    assert tracking.environment(["comet_ml"], tmp_path, "exp") == {}


def test_the_users_own_tracker_settings_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKIO_DIR", "/shared/trackio")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("WANDB_API_KEY", "key")
    env = tracking.environment(["trackio", "mlflow", "wandb"], tmp_path, "exp")
    assert "MLFLOW_TRACKING_URI" not in env and "WANDB_MODE" not in env
    applied = tracking.apply_environment(env)
    assert os.environ["TRACKIO_DIR"] == "/shared/trackio" and os.environ["WANDB_DIR"] == str(tmp_path.absolute())
    tracking.restore_environment(applied)
    assert "WANDB_DIR" not in os.environ and os.environ["TRACKIO_DIR"] == "/shared/trackio"
    hints = tracking.viewing_hints(["trackio", "mlflow"], tmp_path / "out")
    assert hints == ["trackio: trackio show --project llmkit"]  # mlflow's logs are on the user's server


def test_relocate_rewrites_mlflows_absolute_paths(tmp_path: Path) -> None:
    source, staging, final = tmp_path / "a.checkpoints" / "runs", tmp_path / "staging" / "runs", tmp_path / "a" / "runs"
    meta = source / "mlruns" / "0" / "meta.yaml"
    meta.parent.mkdir(parents=True)
    meta.write_text(f"artifact_location: {(source / 'mlruns' / '0').as_uri()}\nname: Default\n")
    staging.parent.mkdir()
    tracking.relocate(source, staging, final)
    assert not source.exists()
    assert (staging / "mlruns" / "0" / "meta.yaml").read_text() == (
        f"artifact_location: {(final / 'mlruns' / '0').as_uri()}\nname: Default\n"
    )


def test_build_training_args_passes_the_trackers_and_the_run_name(tmp_path: Path) -> None:
    args = training.build_training_args(
        training.TrainSettings(report_to="tensorboard"), training.checkpoint_dir(tmp_path / "my-model"), has_eval=False
    )
    assert args.report_to == ["tensorboard"] and args.run_name == "my-model"
    named = training.build_training_args(
        training.TrainSettings(run_name="exp"), training.checkpoint_dir(tmp_path / "m"), has_eval=False
    )
    assert named.report_to == [] and named.run_name == "exp"


def test_a_trackio_imported_earlier_with_another_store_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    env = tracking.environment(["trackio"], tmp_path / "runs", "exp")
    monkeypatch.delitem(sys.modules, "trackio.utils", raising=False)
    assert tracking.trackio_store_note(env) is None  # not imported yet: it will read TRACKIO_DIR
    monkeypatch.setitem(sys.modules, "trackio.utils", SimpleNamespace(TRACKIO_DIR=tmp_path / "runs" / "trackio"))
    assert tracking.trackio_store_note(env) is None  # imported for this very folder
    monkeypatch.setitem(sys.modules, "trackio.utils", SimpleNamespace(TRACKIO_DIR=Path("/elsewhere/trackio")))
    assert tracking.trackio_store_note(env) == (
        "trackio was imported earlier in this process and keeps writing to /elsewhere/trackio; "
        "run each training in its own process to get OUTPUT/runs/trackio"
    )
