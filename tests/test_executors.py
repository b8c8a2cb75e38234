"""The executor flags, checked before anything heavy runs: --executor, the Ray-only flags, Ray hidden, URIs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmkit import executors
from llmkit.errors import UsageError
from tests.helpers import invoke

COMMANDS = [
    ["classify", "-m", "x", "some text"],
    ["fill-mask", "some [MASK]"],
    ["generate", "hello"],
    ["embed", "hello"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_unknown_executor_is_one_line_and_exit_2(command: list[str]) -> None:
    result = invoke([*command, "--executor", "spark"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: unknown --executor 'spark'; use one of local, ray"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_ray_flags_without_executor_ray_are_refused(command: list[str], tmp_path: Path) -> None:
    result = invoke([*command, "--actors", "3", "--actor-gpus", "1", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: --actors, --actor-gpus, --output-dir apply to --executor ray; add it, "
                                     "or drop them")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_executor_ray_without_ray_names_the_extra(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if `pip install 'llmkit[ray]'` had not run
    assert not executors.ray_installed()
    result = invoke([*command, "--executor", "ray"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: --executor ray needs Ray Data; install it with pip install 'llmkit[ray]'"


def test_settings_carry_every_flag_and_default_the_rest(tmp_path: Path) -> None:
    settings = executors.settings_for("ray", actors=3, actor_cpus=0.5, actor_gpus=0.25, address="10.0.0.1:6379",
                                      output_dir=tmp_path / "parts")
    assert settings == executors.RaySettings(actors=3, actor_cpus=0.5, actor_gpus=0.25, address="10.0.0.1:6379",
                                             output_dir=str(tmp_path / "parts"))
    assert settings.cpus_needed == 2
    assert executors.settings_for("ray", actors=None, actor_cpus=None, actor_gpus=None, address=None,
                                  output_dir=None) == executors.RaySettings(2, 1.0, 0.0, None, None)
    assert executors.settings_for("local", actors=None, actor_cpus=None, actor_gpus=None, address="x",
                                  output_dir=None) is None
    with pytest.raises(UsageError, match="--actor-cpus must be more than 0"):
        executors.settings_for("ray", actors=None, actor_cpus=0.0, actor_gpus=None, address=None, output_dir=None)


def test_uris_survive_the_path_option_and_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # typer hands `--input s3://bucket/key` over as a Path, which folds the double slash
    assert executors.location(Path("s3://bucket/data/part.parquet")) == "s3://bucket/data/part.parquet"
    assert executors.location(Path("gs://b/k.csv")) == "gs://b/k.csv"
    assert executors.location(Path("file:///data/x.csv")) == "file:///data/x.csv"
    monkeypatch.chdir(tmp_path)
    assert executors.location(Path("in.csv")) == str(tmp_path / "in.csv")
    assert executors.is_uri("s3://bucket/key") and not executors.is_uri(str(tmp_path / "in.csv"))
