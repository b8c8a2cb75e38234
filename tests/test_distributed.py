"""llmkit.distributed: peers from the environment, the split, shard files, the merge, and failures.

The protocol tests run the ranks as threads of this process (the protocol is files only); the tests marked
as such start 2 real processes with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set, on the tiny classifier.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmkit import distributed as dist
from llmkit.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("distributed_worker.py")

# --- who the peers are -----------------------------------------------------------------------------------------


def test_detect_without_a_launcher_is_one_process() -> None:
    peers = dist.detect({})
    assert (peers.rank, peers.world_size, peers.is_main, peers.distributed) == (0, 1, True, False)


def test_detect_reads_torchrun_variables() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert dist.detect(env) == dist.Peers(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert not dist.detect(env).is_main and dist.detect(env).distributed


def test_detect_reads_mpi_variables_as_accelerate_does() -> None:
    peers = dist.detect({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"})
    assert (peers.rank, peers.world_size, peers.local_rank) == (1, 2, 1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is outside 0..1"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
        ({"WORLD_SIZE": "0"}, "at least one process"),
    ],
)
def test_detect_rejects_impossible_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        dist.detect(env)


# --- the split ------------------------------------------------------------------------------------------------


def _accelerate_split(total: int, rank: int, world: int) -> range:
    """accelerate's `split_between_processes` index arithmetic (accelerate/state.py), written out."""
    per, extras = divmod(total, world)
    start = rank * per + min(rank, extras)
    return range(start, start + per + (1 if rank < extras else 0))


@pytest.mark.parametrize(("total", "world"), [(10, 3), (2, 4), (0, 2), (7, 7), (100, 8)])
def test_contiguous_range_is_accelerates_split(total: int, world: int) -> None:
    ranges = [dist.contiguous_range(total, r, world) for r in range(world)]
    assert ranges == [_accelerate_split(total, r, world) for r in range(world)]
    assert [i for r in ranges for i in r] == list(range(total))  # each index once, in order


def test_contiguous_range_sizes_for_ten_over_three() -> None:
    assert [len(dist.contiguous_range(10, r, 3)) for r in range(3)] == [4, 3, 3]


def test_stream_shards_deal_blocks_round_robin_and_count_everything() -> None:
    items = [f"x{i}" for i in range(11)]
    got = []
    for rank in range(3):
        shard = dist.shard(iter(items), dist.Peers(rank=rank, world_size=3), block_size=2)
        pairs = list(shard)
        assert shard.seen == 11 and shard.finished  # every rank read the whole stream
        got.append([i for i, _ in pairs])
        assert all(items[i] == item for i, item in pairs)
    assert got == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10]]


def test_shard_with_total_is_contiguous_and_still_counts() -> None:
    shard = dist.shard(range(10), dist.Peers(rank=1, world_size=3), total=10)
    assert [i for i, _ in shard] == [4, 5, 6]
    assert shard.seen == 10


def test_one_process_gets_everything() -> None:
    assert [i for i, _ in dist.shard("abc", dist.Peers())] == [0, 1, 2]


# --- shard files and the merge (ranks as threads) --------------------------------------------------------------


def _rank_thread(run: dist.ShardedRun, items: list[str], *, block: int = 2, fail_at: int | None = None) -> threading.Thread:
    def work() -> None:
        try:
            with run:
                for n, (index, item) in enumerate(run.shard(items, block_size=block)):
                    if fail_at is not None and n == fail_at:
                        raise ValueError("bad row on purpose")
                    run.write(index, {"text": item, "rank": run.rank})
        except ValueError:
            pass

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _runs(tmp_path: Path, world: int = 2, timeout: float = 10) -> list[dist.ShardedRun]:
    out = tmp_path / "out.jsonl"
    return [dist.ShardedRun(dist.Peers(rank=r, world_size=world), output=out, timeout=timeout, key="t1")
            for r in range(world)]


def test_merge_gives_every_record_once_in_input_order(tmp_path: Path) -> None:
    items = [f"row {i}" for i in range(9)]
    main, *peers = _runs(tmp_path, world=3)
    threads = [_rank_thread(run, items) for run in peers]
    with main:
        for index, item in main.shard(items, block_size=2):
            main.write(index, {"text": item, "rank": 0})
    merged = list(main.merged())
    for thread in threads:
        thread.join()
    assert [r["text"] for r in merged] == items
    assert [r["rank"] for r in merged] == [0, 0, 1, 1, 2, 2, 0, 0, 1]
    assert not main.folder.exists()  # the shard folder is gone after the merge
    assert main.folder.parent == tmp_path and main.folder.name.startswith(".out.jsonl.llmkit-shards-")


def test_a_failed_peer_is_a_clear_error_on_the_main_rank(tmp_path: Path) -> None:
    items = [f"row {i}" for i in range(8)]
    main, peer = _runs(tmp_path)
    thread = _rank_thread(peer, items, fail_at=1)
    with main:
        for index, item in main.shard(items, block_size=2):
            main.write(index, item)
    with pytest.raises(dist.PeerError, match=r"process 1 of 2 failed: ValueError: bad row on purpose"):
        list(main.merged())
    thread.join()
    assert not main.folder.exists()
    assert not (tmp_path / "out.jsonl").exists()


def test_a_peer_stopped_by_a_signal_is_named_with_it_on_the_main_rank(tmp_path: Path) -> None:
    from llmkit import signals

    main, peer = _runs(tmp_path)
    with main:
        main.write(0, "a")

    def stopped_peer() -> None:
        try:
            with peer:
                raise signals.Interrupted(signal.SIGTERM)  # what SIGTERM does to it under `signals.handled()`
        except signals.Interrupted:
            pass

    thread = threading.Thread(target=stopped_peer)
    thread.start()
    thread.join()
    with pytest.raises(dist.PeerError, match=r"^process 1 of 2 failed: interrupted \(SIGTERM\)$"):
        list(main.merged())
    assert not main.folder.exists()


def test_a_peer_that_fails_before_the_main_rank_starts_is_still_named(tmp_path: Path) -> None:
    # The peer fails while the main rank is still loading (no launch name yet): its failure must reach the main
    # rank as that error, not as a peer that "stopped responding" once the timeout runs out.
    items = [f"row {i}" for i in range(8)]
    main, peer = _runs(tmp_path, timeout=120)  # a timeout this run never reaches unless the failure is lost
    waiting = threading.Event()
    peer_nonce = peer._peer_nonce

    def failed_and_waiting() -> str:
        waiting.set()  # called only by a rank that failed before the main rank named the launch
        return peer_nonce()

    peer._peer_nonce = failed_and_waiting  # type: ignore[method-assign]
    thread = _rank_thread(peer, items, fail_at=0)
    assert waiting.wait(120)  # the peer has failed; the main rank has not entered yet
    assert not main.folder.joinpath("begin.json").exists()
    with main:
        for index, item in main.shard(items, block_size=2):
            main.write(index, item)
    with pytest.raises(dist.PeerError, match=r"process 1 of 2 failed: ValueError: bad row on purpose"):
        list(main.merged())
    thread.join()
    assert not (tmp_path / "out.jsonl").exists()


class _Clock:
    """A stand-in for distributed.py's `time`: `sleep` advances `monotonic` without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.time = time.time

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_silent_peer_times_out_instead_of_hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main, peer = _runs(tmp_path, timeout=1.5)
    peer.__enter__()
    assert peer._heartbeat is not None
    peer._heartbeat.stopped.set()  # as if the process had been killed: no marker, no more heartbeats
    peer._heartbeat.join()
    with main:
        main.write(0, "a")
    clock = _Clock()
    monkeypatch.setattr(dist, "time", clock)  # the main rank's polls, on a clock that only its sleeps move
    with pytest.raises(dist.PeerError, match=r"process 1 of 2 stopped responding \(no heartbeat for 1.5 s"):
        list(main.merged())
    # it gave up on the first poll past the timeout: 1.5 s of 0.1 s polls, neither earlier nor later
    assert 1.5 < clock.now - 1000.0 <= 1.5 + 2 * dist.POLL_SECONDS
    assert not main.folder.exists()


def test_a_peer_that_never_starts_times_out(tmp_path: Path) -> None:
    main, _ = _runs(tmp_path, timeout=1.0)
    with main:
        main.write(0, "a")
    with pytest.raises(dist.PeerError, match="process 1 of 2 never started"):
        list(main.merged())


def test_ranks_that_read_different_inputs_are_refused(tmp_path: Path) -> None:
    main, peer = _runs(tmp_path)
    thread = _rank_thread(peer, ["a", "b", "c", "d", "e", "f"])
    with main:
        for index, item in main.shard(["a", "b", "c", "d"], block_size=2):
            main.write(index, item)
    with pytest.raises(dist.PeerError, match="read different inputs"):
        list(main.merged())
    thread.join()


def test_a_marker_from_an_earlier_launch_is_not_merged(tmp_path: Path) -> None:
    main, peer = _runs(tmp_path, timeout=1.0)
    main.folder.mkdir(parents=True)
    # What a killed earlier launch with the same key could leave: rank 1's shard and done marker.
    (main.folder / "rank-00001.jsonl").write_text(json.dumps({"i": 1, "r": "stale"}) + "\n")
    (main.folder / "rank-00001.done").write_text(json.dumps({"nonce": "old", "rank": 1, "records": 1, "seen": 2}))
    with main:
        main.write(0, "fresh")
    with pytest.raises(dist.PeerError, match="finished another launch"):
        list(main.merged())


def _old_shard_folder(parent: Path, name: str, age: float) -> Path:
    """A shard folder as a launch leaves it, with every file (and the folder) last touched `age` s ago."""
    folder = parent / name
    folder.mkdir()
    for file in ("begin.json", "rank-00000.part", "rank-00000.alive", "rank-00001.alive"):
        (folder / file).write_text("1")
    stamp = time.time() - age
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (stamp, stamp))
    return folder


def test_the_next_launch_removes_dead_launches_shard_folders_for_its_output(tmp_path: Path) -> None:
    dead = _old_shard_folder(tmp_path, ".out.jsonl.llmkit-shards-dead", age=60)
    running = _old_shard_folder(tmp_path, ".out.jsonl.llmkit-shards-live", age=60)
    (running / "rank-00001.alive").write_text("2")  # one of its ranks beat just now: that launch is running
    other = _old_shard_folder(tmp_path, ".other.jsonl.llmkit-shards-dead", age=60)  # another output's
    main, peer = _runs(tmp_path, timeout=30)
    thread = _rank_thread(peer, ["a", "b"], block=1)
    with main:
        assert not dead.exists()  # gone before this launch's own folder was made
        assert running.exists() and other.exists()
        for index, item in main.shard(["a", "b"], block_size=1):
            main.write(index, {"text": item, "rank": 0})
    assert [r["text"] for r in main.merged()] == ["a", "b"]
    thread.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.jsonl.llmkit-shards-dead",
                                                          ".out.jsonl.llmkit-shards-live"]


def test_a_single_process_run_removes_them_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMKIT_PEER_TIMEOUT", "30")
    dead = _old_shard_folder(tmp_path, ".out.jsonl.llmkit-shards-dead", age=60)
    young = _old_shard_folder(tmp_path, ".out.jsonl.llmkit-shards-young", age=5)  # may still be beating
    assert list(dist.run_sharded(["a"], lambda mine: mine, peers=dist.Peers(), output=tmp_path / "out.jsonl")) == ["a"]
    assert not dead.exists() and young.exists()


def test_models_clean_removes_a_journalled_dead_launchs_shard_folder(tmp_path: Path, monkeypatch) -> None:
    from llmkit import caches, tempnames

    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMKIT_PEER_TIMEOUT", "30")
    dead = _old_shard_folder(tmp_path, ".a.jsonl.llmkit-shards-k1", age=60)
    running = _old_shard_folder(tmp_path, ".b.jsonl.llmkit-shards-k2", age=0)
    for folder in (dead, running):
        tempnames.record(folder, tempnames.journal_dir())  # as each rank of a launch does
    freed = caches.clean()
    assert [(f.kind, f.path, f.size_bytes) for f in freed] == [("stale-temporary", str(dead), 4)]
    assert not dead.exists() and running.exists()
    assert len(list(tempnames.journal_dir().iterdir())) == 1  # the running launch's entry stays


def test_the_main_rank_stopped_by_sigterm_while_waiting_removes_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmkit import signals

    main, peer = _runs(tmp_path, timeout=120)
    peer.__enter__()  # a peer still working: the main rank waits for it
    assert peer._heartbeat is not None

    class Terminated(_Clock):
        def sleep(self, seconds: float) -> None:  # the main rank's first poll: what a launcher does to it then
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

    try:
        with signals.handled():
            with main:
                main.write(0, "a")
            assert main.folder.exists()
            monkeypatch.setattr(dist, "time", Terminated())
            with pytest.raises(signals.Interrupted):
                list(main.merged())
    finally:
        peer._heartbeat.stopped.set()
    assert not main.folder.exists() and main.closed


def test_records_must_come_in_input_order(tmp_path: Path) -> None:
    (run,) = _runs(tmp_path, world=1)
    with pytest.raises(RuntimeError, match="input order"), run:
        run.write(3, "a")
        run.write(2, "b")


def test_run_sharded_with_one_process_is_just_the_work() -> None:
    result = dist.run_sharded(["a", "b"], lambda items: (x.upper() for x in items), peers=dist.Peers())
    assert result is not None and list(result) == ["A", "B"]


def test_run_sharded_merges_what_each_rank_worked_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMKIT_RUN_ID", "rs")
    items = [f"item {i}" for i in range(7)]
    work_seen: dict[int, list[str]] = {}

    def worker(rank: int):
        def work(mine):
            seen = work_seen.setdefault(rank, [])
            for item in mine:
                seen.append(item)
                yield {"upper": item.upper()}
        return work

    peer_result: list[object] = []
    thread = threading.Thread(target=lambda: peer_result.append(dist.run_sharded(
        items, worker(1), peers=dist.Peers(rank=1, world_size=2), output=tmp_path / "o.csv", block_size=3)))
    thread.start()
    merged = dist.run_sharded(items, worker(0), peers=dist.Peers(rank=0, world_size=2), output=tmp_path / "o.csv",
                              block_size=3)
    assert merged is not None
    assert [r["upper"] for r in merged] == [i.upper() for i in items]
    thread.join()
    assert peer_result == [None]  # peers get nothing back: the main rank alone writes
    assert work_seen == {0: items[0:3] + items[6:7], 1: items[3:6]}


def test_run_sharded_refuses_work_that_drops_items(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMKIT_RUN_ID", "drop")
    with pytest.raises(RuntimeError, match="no result for 1 of its items"):
        dist.run_sharded(["a", "b", "c"], lambda items: [next(iter(items))], peers=dist.Peers(rank=0, world_size=2),
                         output=tmp_path / "o.csv", block_size=1)  # rank 0 gets a and c, the work answers one
    assert list(tmp_path.iterdir()) == []  # the main rank cleaned up its shard folder


def test_results_rebuild_from_their_json_exactly() -> None:
    from dataclasses import asdict

    from llmkit.classify import Classification, LabelScore
    from llmkit.fill_mask import Fill, JointFill, MaskPrediction
    from llmkit.generate import Candidate, Generation

    examples = [
        Classification(text="t", label="pos", score=0.75, scores=[LabelScore("pos", 0.75), LabelScore("neg", 0.25)],
                       method="classifier", model="m", active=["pos"]),
        Classification(text="", label=None, score=None, scores=[], method="nli", model="m", error="empty input"),
        MaskPrediction(text="a [MASK]", method="masked-lm", model="m",
                       masks=[[Fill("b", 0.5, "a b", 7), Fill("c", float("nan"), "a c")]],
                       joint=[JointFill(["b"], 0.5, "a b")]),
        Generation(prompt="p", text="x", finish_reason="eos", prompt_tokens=1, completion_tokens=1, seconds=0.5,
                   tokens_per_second=2.0, model="m", candidates=[Candidate("x", -0.1, 1, "eos")],
                   settings={"stop": ["."]}),
    ]
    for result in examples:
        back = dist.rebuild(type(result), json.loads(json.dumps(asdict(result))))
        assert type(back) is type(result)
        assert json.dumps(asdict(back)) == json.dumps(asdict(result))  # NaN survives too
    assert isinstance(dist.rebuild(Classification, json.loads(json.dumps(asdict(examples[0])))).scores[0], LabelScore)


@dataclass(frozen=True)
class _Rec:
    text: str
    index: int
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Res:
    upper: str
    parts: list[str]


def _task(records):
    batch = list(records)  # reads everything first, as a batching task may
    for record in batch:
        yield _Res(record.text.upper(), record.text.split())


def test_map_records_with_one_process_pairs_records_and_results() -> None:
    records = [_Rec("a b", 0, {"id": 1}), _Rec("c", 1, {"id": 2})]
    pairs = dist.map_records(records, _task, record_type=_Rec, result_type=_Res, peers=dist.Peers())
    assert pairs is not None and list(pairs) == [(records[0], _Res("A B", ["a", "b"])), (records[1], _Res("C", ["c"]))]


def test_map_records_over_two_ranks_rebuilds_everyones_pairs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMKIT_RUN_ID", "mr")
    records = [_Rec(f"w{i} x", i, {"id": i}) for i in range(130)]  # three blocks of 64: rank 0, 1, 0
    peer: list[object] = []
    thread = threading.Thread(target=lambda: peer.append(dist.map_records(
        records, _task, record_type=_Rec, result_type=_Res, peers=dist.Peers(rank=1, world_size=2),
        output=tmp_path / "o.jsonl")))
    thread.start()
    pairs = dist.map_records(records, _task, record_type=_Rec, result_type=_Res,
                             peers=dist.Peers(rank=0, world_size=2), output=tmp_path / "o.jsonl")
    assert pairs is not None
    got = list(pairs)
    thread.join()
    assert peer == [None]
    assert got == [(r, _Res(r.text.upper(), r.text.split())) for r in records]


def test_run_key_is_shared_by_a_launch_and_changes_with_it() -> None:
    peers = dist.Peers(rank=0, world_size=2, local_world_size=2)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"}
    other_rank = dist.Peers(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert dist.run_key(peers, env) == dist.run_key(other_rank, env)
    assert dist.run_key(peers, env) != dist.run_key(peers, {**env, "MASTER_PORT": "29501"})
    assert dist.run_key(peers, {**env, "LLMKIT_RUN_ID": "job/7"}) == "job_7"


def test_stdout_shards_go_to_the_temp_folder_or_llmkit_shard_dir(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    monkeypatch.delenv("LLMKIT_SHARD_DIR", raising=False)
    assert dist.shard_dir(None, "k").parent == Path(tempfile.gettempdir())
    monkeypatch.setenv("LLMKIT_SHARD_DIR", str(tmp_path))
    assert dist.shard_dir(None, "k") == tmp_path / "llmkit-shards-k"


def test_barrier_without_a_process_group_says_so() -> None:
    assert dist.barrier(dist.Peers(rank=0, world_size=2), "x") is False
    assert dist.barrier(dist.Peers(), "x") is False


def test_importing_distributed_does_not_import_torch() -> None:
    code = "import sys, llmkit.distributed; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env({}), check=True)
    assert out.stdout.strip() == "False"


# --- two real processes on the tiny classifier -----------------------------------------------------------------

TEXTS = ["i loved it", "terrible movie , awful plot", "ok", "the food was good", "bad", "great fun",
         "not for me", "would watch again", "boring"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LLMKIT_RUN_ID")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def _launch(mode: str, model: Path, inputs: Path, out: Path, *, timeout_s: str = "60") -> list[subprocess.CompletedProcess]:
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = _env({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "LLMKIT_RUN_ID": f"test-{mode}-{port}",
                    "LLMKIT_PEER_TIMEOUT": timeout_s, "LLMKIT_SHARD_DIR": str(out.parent / "shards")})
        procs.append(subprocess.Popen([sys.executable, str(WORKER), mode, str(model), str(inputs), str(out)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def _one_process(model: Path) -> list[dict]:
    from llmkit import output
    from llmkit.classify import classify

    return [json.loads(json.dumps(output.to_record(r))) for r in classify(TEXTS, model=str(model), all_scores=True)]


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


@pytest.mark.slow  # the protocol is covered by the thread tests; the launchers by the tests below
def test_two_processes_over_gloo_write_one_file_equal_to_one_process(
    tiny_classifier: Path, inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    rank0, rank1 = _launch("gloo", tiny_classifier, inputs, out)
    assert rank0.returncode == 0 and rank1.returncode == 0, rank0.stderr[-2000:] + rank1.stderr[-2000:]
    assert "wrote 9" in rank0.stderr and "wrote" not in rank1.stderr  # the main process alone writes
    assert rank0.stdout == rank1.stdout == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = _one_process(tiny_classifier)
    assert [r["text"] for r in rows] == TEXTS  # each record once, in input order
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    assert [r["score"] for r in rows] == pytest.approx([e["score"] for e in expected], abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.jsonl", "shards"]
    assert list((tmp_path / "shards").iterdir()) == []  # shard folder removed


@pytest.mark.slow  # the protocol is covered by the thread tests; the launchers by the tests below
def test_a_crashing_rank_leaves_no_output_and_a_clear_error(tiny_classifier: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    rank0, rank1 = _launch("fail", tiny_classifier, inputs, out)
    assert rank1.returncode == 1 and "boom on purpose" in rank1.stderr
    assert rank0.returncode == 1
    assert "Error: process 1 of 2 failed: RuntimeError: boom on purpose" in rank0.stderr
    assert not out.exists()
    assert list((tmp_path / "shards").iterdir()) == []


# --- the commands under the real launchers ----------------------------------------------------------------------

BIN = Path(sys.executable).parent


def _launcher_env() -> dict[str, str]:
    return _env({"LLMKIT_PEER_TIMEOUT": "120"})


def test_classify_under_accelerate_launch_writes_one_table_equal_to_one_process(
    tiny_classifier: Path, tmp_path: Path
) -> None:
    import csv

    from helpers import invoke

    table = tmp_path / "in.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "review"], *[[i, t] for i, t in enumerate(TEXTS)]])
    one = invoke(["classify", "-m", str(tiny_classifier), "-i", str(table), "--text-column", "review",
                  "--all-scores", "-o", str(tmp_path / "one.csv")])
    assert one.exit_code == 0, one.stderr
    proc = subprocess.run(
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         "-m", "llmkit", "classify", "-m", str(tiny_classifier), "-i", str(table), "--text-column", "review",
         "--all-scores", "-o", str(tmp_path / "two.csv")],
        capture_output=True, text=True, env=_launcher_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Wrote 9 rows") == 1  # the main process alone writes
    one_rows = list(csv.reader(open(tmp_path / "one.csv", newline="")))
    two_rows = list(csv.reader(open(tmp_path / "two.csv", newline="")))
    assert len(two_rows) == len(TEXTS) + 1
    assert [r[1] for r in two_rows[1:]] == TEXTS  # each row once, in input order
    for a, b in zip(one_rows, two_rows, strict=True):
        assert a[:3] == b[:3]  # id, review, prediction: row for row
        if a[0] != "id":
            assert [float(x) for x in a[3:] if x] == pytest.approx([float(x) for x in b[3:] if x], abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "one.csv", "two.csv"]  # no shard leftovers


def _rank_pid(journal: Path, rank: int) -> int | None:
    """The pid of `rank` among the processes that recorded a shard folder in `journal` (from their environment)."""
    for entry in journal.glob("*.*") if journal.is_dir() else []:
        pid = entry.name.split(".")[0]
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds rank 1 through /proc")
def test_a_rank_killed_under_accelerate_launch_leaves_no_output_and_no_shard_folder(
    tiny_classifier: Path, tmp_path: Path
) -> None:
    # Rank 1 is killed (kill -9) while it writes its shard; the launcher then SIGTERMs rank 0, which must remove
    # the launch's shard folder on the way out: nothing is left beside the output but the input.
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    words = "good bad movie plot fun boring great awful ok food".split()
    (work / "in.txt").write_text("\n".join(f"{words[i % 10]} {words[(i * 7) % 10]} {i}" for i in range(30_000)) + "\n")
    env = _env({"LLMKIT_PEER_TIMEOUT": "600", "LLMKIT_HOME": str(home)})  # rank 0 would wait 10 min on its own
    launcher = subprocess.Popen(
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         "-m", "llmkit", "classify", "-m", str(tiny_classifier), "-i", "in.txt", "-o", "pred.jsonl"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # a bound for start-up on a loaded machine, not a timing check
        victim = None
        while victim is None:
            parts = list(work.glob(".pred.jsonl.llmkit-shards-*/rank-00001.part"))
            if parts and parts[0].stat().st_size > 0:  # rank 1 is writing its share
                victim = _rank_pid(home / "temporaries", 1)
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "rank 1 never started writing"
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode != 0
    assert "exitcode  : -9" in stderr and "exitcode  : 143" in stderr  # rank 1 killed; rank 0 stopped by SIGTERM
    assert "Error: interrupted (SIGTERM)" in stderr  # rank 0's one line
    assert sorted(p.name for p in work.iterdir()) == ["in.txt"]  # no pred.jsonl, no shard folder


def test_generate_under_torchrun_prints_each_record_once_in_order(tiny_causal_lm: Path, tmp_path: Path) -> None:
    from helpers import invoke, json_lines

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TEXTS) + "\n")
    args = ["generate", "-m", str(tiny_causal_lm), "-i", str(prompts), "-n", "4", "--json"]
    one = invoke(args)
    assert one.exit_code == 0, one.stderr
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone", "-m", "llmkit", *args],
        capture_output=True, text=True, env=_launcher_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json_lines(proc.stdout)
    assert [r["prompt"] for r in two] == TEXTS  # each record once, in input order
    assert [r["text"] for r in two] == [r["text"] for r in json_lines(one.stdout)]


def test_several_processes_refuse_stdin(tiny_classifier: Path, monkeypatch) -> None:
    from helpers import invoke

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke(["classify", "-m", str(tiny_classifier), "-"], input="i loved it\n")
    assert result.exit_code == 2
    assert "2 processes cannot share stdin; give the input as --input FILE" in result.stderr
