"""`--executor ray` on real Ray clusters on this machine: the records equal `--executor local`'s, on a local cluster
started for the run and on two Ray nodes (`ray start --head` and `ray start --address`, one CPU each, token
authentication on), with an actor killed mid-run, with parts written by Ray, and with bad input.

Every cluster lives in a temporary HOME (its ~/.ray/auth_token) and a temporary --temp-dir, and is stopped after
by the process ids found under that folder (never `ray stop`, which stops every Ray on the machine). Ray names
127.0.0.1 as the host's own address for a cluster of several nodes (a single-node cluster stays on loopback):
the nodes still talk only inside this machine.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import invoke, json_lines

pytest.importorskip("ray.data", reason="--executor ray needs the ray extra: pip install -e '.[ray]'")

RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT = 180  # seconds for `ray start` on a loaded 2-core machine
RUN_TIMEOUT = 300  # seconds for one llmkit run on the cluster


# --- processes ------------------------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(name)] = (parent, command)
    return table


def _under(marker: str) -> set[int]:
    """The live processes whose command line names `marker` (a cluster's temp folder), and all their children."""
    table = _processes()
    found = {pid for pid, (_, command) in table.items() if marker in command and pid != os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _) in table.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _stop(marker: str) -> None:
    """Stop every process of one cluster (by id), waiting until none is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _under(marker):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 20
        while _under(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not _under(marker), "a Ray process of the test cluster outlived SIGKILL"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    temp: Path


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head node and a second node, one CPU each, token authentication on (a token in a temporary HOME)."""
    home = tmp_path_factory.mktemp("ray-home")
    temp = Path(f"/tmp/llmkit-ray-test-{os.getpid()}")  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, HOME=str(home), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    try:
        subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                       timeout=START_TIMEOUT)
        assert (home / ".ray" / "auth_token").is_file()
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        subprocess.run([str(RAY), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
                        "--include-dashboard=false", *common], env=env, check=True, capture_output=True,
                       timeout=START_TIMEOUT)
        subprocess.run([str(RAY), "start", f"--address=127.0.0.1:{port}", *common], env=env, check=True,
                       capture_output=True, timeout=START_TIMEOUT)
        yield Cluster(address=f"127.0.0.1:{port}", env=env, temp=temp)
    finally:
        _stop(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def _llmkit(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, **kwargs)


def _texts(n: int) -> list[str]:
    """Mixed-length sentences, so windows really get sorted by length."""
    words = "the film was a quiet and strange delight for everyone who saw it twice".split()
    return [" ".join(words[: 2 + (i * 7) % (len(words) - 1)]) + f" {i}" for i in range(n)]


def _csv(path: Path, n: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "note"])
        for i, text in enumerate(_texts(n)):
            writer.writerow([f"{i:03d}", text, "" if i % 3 else "x"])
    return path


# --- a local cluster for the run ------------------------------------------------------------------------------


def test_a_local_cluster_gives_the_local_records_and_leaves_nothing(tiny_classifier: Path, tmp_path: Path) -> None:
    source = _csv(tmp_path / "in.csv", 70)
    base = ["classify", "-m", str(tiny_classifier), "-i", str(source), "--batch-size", "2", "--all-scores", "--json"]
    local = invoke(base)
    assert local.exit_code == 0, local.stderr
    home = tmp_path / "home"
    home.mkdir()
    short = Path(tempfile.mkdtemp(prefix="lkr", dir="/tmp"))  # Ray's socket paths under it must fit 107 bytes
    env = dict(os.environ, HOME=str(home), TMPDIR=str(short))
    env.pop("RAY_ADDRESS", None)
    try:
        done = _llmkit([*base, "--executor", "ray", "--actors", "2"], env)
        assert done.returncode == 0, done.stderr
        assert json_lines(done.stdout) == json_lines(local.stdout)
        assert [r["id"] for r in json_lines(done.stdout)] == [f"{i:03d}" for i in range(70)]  # CSV cells: strings
        assert done.stderr.splitlines() == [
            "Ray: 70 inputs in 3 windows of 32 on 2 actors (1 CPU each), a local Ray cluster (2 CPUs)"]
        # the cluster's folder (sockets, logs) is gone, and every process that named it has ended; `.ses` is what
        # `import onnxruntime` writes into TMPDIR (a timestamp and an id), in any process, with or without Ray
        assert [p.name for p in short.iterdir() if p.name != ".ses"] == []
        deadline = time.monotonic() + 30
        while _under(str(short)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _under(str(short))
    finally:
        _stop(str(short))
        shutil.rmtree(short, ignore_errors=True)


# --- two nodes ------------------------------------------------------------------------------------------------


def test_two_nodes_classify_to_one_output_file(two_nodes: Cluster, tiny_classifier: Path, tmp_path: Path) -> None:
    source = _csv(tmp_path / "in.csv", 50)
    base = ["classify", "-m", str(tiny_classifier), "-i", str(source), "--batch-size", "1", "--all-scores"]
    local = invoke([*base, "-o", str(tmp_path / "local.csv")])
    assert local.exit_code == 0, local.stderr
    # two actors of one CPU each: the run cannot finish unless the second node holds one of them
    done = _llmkit([*base, "-o", str(tmp_path / "ray.csv"), "--executor", "ray", "--ray-address", two_nodes.address,
                    "--actors", "2", "--actor-cpus", "1"], two_nodes.env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()
    assert f"windows of 16 on 2 actors (1 CPU each), the Ray cluster at {two_nodes.address} (2 CPUs)" in done.stderr


def test_fill_mask_joins_the_cluster_named_by_ray_address(two_nodes: Cluster, tiny_mlm: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("".join(f"the [MASK] sat on mat {i} .\n" for i in range(40)))
    base = ["fill-mask", "-m", str(tiny_mlm), "-i", str(source), "--batch-size", "2", "--json"]
    local = invoke(base)
    env = dict(two_nodes.env, RAY_ADDRESS=two_nodes.address)  # the environment variable, not the flag
    done = _llmkit([*base, "--executor", "ray", "--actors", "1"], env)
    assert (done.returncode, local.exit_code) == (0, 0), done.stderr + local.stderr
    assert json_lines(done.stdout) == json_lines(local.stdout)
    assert done.stderr.splitlines() == [
        f"Ray: 40 inputs in 2 windows of 32 on 1 actor (1 CPU each), the Ray cluster at {two_nodes.address} (2 CPUs)"]
    # an error inside an actor comes back as the local run's one line and exit code, the input counted from the
    # start of the whole input (the task itself counts from the start of its window)
    with open(source, "a") as handle:
        handle.write("no mask here ?\n")
    local = invoke(base)
    done = _llmkit([*base, "--executor", "ray", "--actors", "1"], env)
    assert local.exit_code == done.returncode == 2
    assert local.stderr.strip() == "Error: input 41 has no mask: mark the blank with [MASK], e.g. 'Paris is the [MASK] of France.'"
    assert done.stderr.splitlines()[-1] == local.stderr.strip()


def test_generate_on_two_nodes_keeps_every_field(two_nodes: Cluster, tiny_causal_lm: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": text, "n": i, "tags": ["a", str(i)]}) + "\n"
                              for i, text in enumerate(_texts(40))))
    base = ["generate", "-m", str(tiny_causal_lm), "-i", str(source), "--text-column", "prompt", "-n", "3", "--json"]
    local = invoke(base)
    done = _llmkit([*base, "--executor", "ray", "--ray-address", two_nodes.address], two_nodes.env)
    assert (done.returncode, local.exit_code) == (0, 0), done.stderr + local.stderr
    ours, theirs = json_lines(done.stdout), json_lines(local.stdout)
    for record in ours + theirs:  # wall-clock fields differ between any two runs
        record.pop("seconds"), record.pop("tokens_per_second")
    assert ours == theirs
    assert [r["tags"] for r in ours] == [["a", str(i)] for i in range(40)]


# the JSONL writer is the same path as Parquet's but for the format; 35-63 s each at load average 10-12: slow
@pytest.mark.parametrize("suffix", ["parquet", pytest.param("jsonl", marks=pytest.mark.slow)])
def test_output_dir_parts_hold_the_local_records(two_nodes: Cluster, tiny_encoder: Path, tmp_path: Path,
                                                 suffix: str) -> None:
    import pyarrow.dataset as pads

    source = _csv(tmp_path / "in.csv", 45)
    base = ["embed", "-m", str(tiny_encoder), "-i", str(source), "--batch-size", "2", "--json"]
    local = invoke(base)
    target = tmp_path / f"vectors.{suffix}"
    done = _llmkit([*base, "--executor", "ray", "--ray-address", two_nodes.address, "--output-dir", str(target)],
                   two_nodes.env)
    assert (done.returncode, local.exit_code) == (0, 0), done.stderr + local.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == f"Wrote 45 records to {target}"
    rows = pads.dataset(str(target), format="json" if suffix == "jsonl" else "parquet").to_table().to_pylist()
    rows.sort(key=lambda row: row["index"])
    assert [row.pop("index") for row in rows] == list(range(45))
    expected = json_lines(local.stdout)
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    for row, record in zip(rows, expected, strict=True):
        assert row["embedding"] == pytest.approx(record["embedding"], rel=1e-6)  # Parquet keeps float64 exactly
        assert {k: v for k, v in row.items() if k != "embedding"} == {
            k: v for k, v in record.items() if k != "embedding"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}.")]  # the temporary is gone
    again = _llmkit([*base, "--executor", "ray", "--output-dir", str(target)], two_nodes.env)
    assert again.returncode == 2  # never written over, refused before any cluster starts
    assert again.stderr.strip() == f"Error: --output-dir {target} exists and is not empty; remove it or name another folder"


# --- faults ---------------------------------------------------------------------------------------------------


def _actors(cluster: Cluster) -> list[int]:
    """The pids of llmkit's Ray actors on `cluster` (processes titled after the actor class, under its raylets)."""
    members = _under(str(cluster.temp))
    table = _processes()
    return [pid for pid in members if "LlmkitWorker" in table.get(pid, (0, ""))[1]]


@pytest.mark.slow  # 55-68 s at load average 10-12 (120 prompts, so that the kill lands mid-run): make test-slow
def test_a_killed_actor_is_restarted_and_the_output_is_complete(two_nodes: Cluster, tiny_causal_lm: Path,
                                                                 tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(_texts(120)) + "\n")
    base = ["generate", "-m", str(tiny_causal_lm), "-i", str(source), "-n", "6", "--batch-size", "1", "--json"]
    local = invoke(base)
    assert local.exit_code == 0, local.stderr
    errors = open(tmp_path / "stderr.txt", "w+")  # a file: only the reader thread reads the stdout pipe
    run = subprocess.Popen([sys.executable, "-m", "llmkit", *base, "--executor", "ray", "--ray-address",
                            two_nodes.address, "--actors", "2"], env=two_nodes.env, stdout=subprocess.PIPE,
                           stderr=errors, text=True)
    killed: list[tuple[int, int]] = []  # (pid, records out when it was killed)
    lines: list[str] = []

    def read() -> None:
        assert run.stdout is not None
        for line in run.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not killed and run.poll() is None and time.monotonic() < deadline:
            actors = _actors(two_nodes)
            if len(actors) == 2 and lines:  # both loaded, and the first window is back: mid-run
                os.kill(actors[0], signal.SIGKILL)
                killed.append((actors[0], len(lines)))
            time.sleep(0.05)
        run.wait(timeout=RUN_TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
        reader.join(timeout=10)
        errors.seek(0)
        stderr = errors.read()
        errors.close()
    assert killed, "no actor was seen alive mid-run"
    assert 0 < killed[0][1] < 120  # killed after the first records, before the last
    assert run.returncode == 0, stderr
    ours, theirs = json_lines("".join(lines)), json_lines(local.stdout)
    for record in ours + theirs:
        record.pop("seconds"), record.pop("tokens_per_second")
    assert ours == theirs  # none missing, none doubled, in order


def test_an_unparsable_row_is_one_line(two_nodes: Cluster, tiny_classifier: Path, tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("text,label\nfine,1\n\"a, b\",2,3,4\n")
    done = _llmkit(["classify", "-m", str(tiny_classifier), "-i", str(source), "--executor", "ray", "--ray-address",
                    two_nodes.address], two_nodes.env)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: the input cannot be read: CSV parse error: Expected 2 columns, got 4")


# --- bad input, refused before a cluster starts ---------------------------------------------------------------


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any Ray cluster is started or joined (the checks must come first)."""
    from llmkit.executors import ray_data

    def refuse(settings: Any) -> Any:
        raise AssertionError("a Ray cluster was started before the input was checked")

    monkeypatch.setattr(ray_data, "cluster", refuse)


def test_a_missing_column_is_one_line_and_exit_3(tiny_classifier: Path, tmp_path: Path, no_cluster: None) -> None:
    source = _csv(tmp_path / "in.csv", 3)
    base = ["classify", "-m", str(tiny_classifier), "-i", str(source), "--text-column", "body"]
    local = invoke(base)
    result = invoke([*base, "--executor", "ray"])
    assert result.exit_code == local.exit_code == 3
    assert result.stderr.strip() == local.stderr.strip() == (
        f"Error: no column 'body' in {source} (columns: id, text, note); pick the right one with "
        "--text-column/--label-column")


def test_an_unknown_engine_is_refused_before_a_cluster_starts(tiny_classifier: Path, tmp_path: Path,
                                                              no_cluster: None) -> None:
    source = _csv(tmp_path / "in.csv", 3)
    for command in (["classify", "-m", str(tiny_classifier)], ["fill-mask"]):
        result = invoke([*command, "-i", str(source), "--engine", "spark", "--executor", "ray"])
        assert result.exit_code == 2
        assert result.stderr.strip() == "Error: unknown --engine 'spark'; use one of auto, onnx, transformers"


def test_a_missing_or_unreadable_file_is_one_line(tiny_classifier: Path, tmp_path: Path, no_cluster: None) -> None:
    missing = invoke(["classify", "-m", str(tiny_classifier), "-i", str(tmp_path / "nope.csv"), "--executor", "ray"])
    assert missing.exit_code == 3
    assert missing.stderr.strip() == f"Error: --input not found: {tmp_path / 'nope.csv'}"
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    unreadable = invoke(["classify", "-m", str(tiny_classifier), "-i", str(broken), "--executor", "ray"])
    assert unreadable.exit_code == 2
    assert unreadable.stderr.strip().startswith(f"Error: --input {broken}: not a readable parquet file: ")
    assert len(unreadable.stderr.strip().splitlines()) == 1
