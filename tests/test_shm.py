"""The shared-memory data plane: boards never give a torn copy, slots carry results, files go
away, the transport choice falls back or refuses as asked, and on the session's Ray the shm and
Ray transports train bit for bit alike (and as torch.optim does) at tau = 0."""

import multiprocessing
import os

import numpy as np
import pytest
import torch

from ps.common import shm
from ps.common.config import TrainConfig, replica_settings
from ps.common.errors import UserError
from ps.driver import transport
from ps.server.optimizers import parse_optimizer
from ps.server.shard import ParameterShard
from ps.server.shm_shard import SharedMemoryShard
from replicas.data import synthetic
from replicas.models import build_model, named_shapes
from replicas.replica import ModelReplica
from replicas.shm_client import ShmShardClient
from sharding import make_plan

SEED = 3


@pytest.fixture
def names(tmp_path_factory):
    """A run's names in /dev/shm (short paths, as sockets need); every file removed after."""
    names = shm.ShmNames.new()
    yield names
    names.remove()


# ---- the board ------------------------------------------------------------------------------

def _hammer(path: str, size: int, publishes: int) -> None:
    """In another process: publish values that all equal their version, as fast as it can."""
    board = shm.ValueBoard.attach(path)
    values = np.empty(size, np.float32)
    for version in range(1, publishes + 1):
        values.fill(version)
        board.publish(values, version)


def test_a_reader_never_keeps_a_torn_copy_while_a_writer_hammers_the_board(names):
    size = 1 << 18  # 1 MiB: a copy takes long enough for the writer to come round during it
    board = shm.ValueBoard.create(names.board(0, 0), size)
    board.publish(np.zeros(size, np.float32), 0)
    writer = multiprocessing.get_context("fork").Process(
        target=_hammer, args=(board.segment.path, size, 20_000))
    writer.start()
    out, seen, torn = np.empty(size, np.float32), [], 0
    try:
        while writer.is_alive() or not seen:
            version = board.read_into(out, timeout_s=30)
            torn += int(out.min() != version or out.max() != version)
            seen.append(version)
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert torn == 0
    assert seen == sorted(seen) and len(set(seen)) > 100  # it did read while the writer wrote
    assert board.read_into(out) == 20_000 and (out == 20_000).all()


def test_a_board_being_written_is_not_read(names):
    board = shm.ValueBoard.create(names.board(0, 0), 8)
    board.publish(np.arange(8, dtype=np.float32), 5)
    published = int(board.header[2])
    board.header[3 + 2 * published] += 1  # a writer that died inside publish: odd for ever
    with pytest.raises(TimeoutError):
        board.read_into(np.empty(8, np.float32), timeout_s=0.05)


# ---- slots, files, sockets ------------------------------------------------------------------

def test_slots_carry_each_push_and_its_result_and_a_raised_push_raises(names):
    slots = shm.GradSlots.create(names.slots(0), [5, 3], depth=2)
    again = shm.GradSlots.attach(names.slots(0))  # as the shard sees it
    slots.gradient(1, 1)[:] = [1, 2, 3]
    assert again.gradient(1, 1).tolist() == [1, 2, 3] and again.gradient(0, 1).size == 5
    again.write_result(1, 1, 7, True, 4, 0.25, None)
    assert int(slots.results[1, 1]["done"]) == 7
    assert slots.read_result(1, 1) == (True, 4, 0.25, None)
    again.write_result(0, 0, 8, False, -1, 0.0, "fenced: é" + "x" * 500)
    accepted, tau, _, reason = slots.read_result(0, 0)
    assert (accepted, tau) == (False, -1) and reason.startswith("fenced: é")
    again.write_error(0, 1, 9, "shard 0: RuntimeError: boom")
    with pytest.raises(shm.ShardFailed, match="boom"):
        slots.read_result(0, 1)


def test_a_run_removes_its_files_and_a_dead_drivers_files_are_swept(names, tmp_path):
    shm.ValueBoard.create(names.board(0, 0), 4)
    shm.GradSlots.create(names.slots(2), [4], 1)
    assert len(names.files()) == 2
    assert names.remove_replica(2) == 1 and names.remove() == 1 and names.files() == []
    dead = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    tag = shm.host_tag()
    stale = tmp_path / f"{shm.PREFIX}{dead.pid}-{tag}-feedbeef-s0i0.board"
    live = tmp_path / f"{shm.PREFIX}{os.getpid()}-{tag}-feedbeef-s0i0.board"
    elsewhere = tmp_path / f"{shm.PREFIX}{dead.pid}-0badc0de-feedbeef-s0i0.board"  # another host's
    for path in (stale, live, elsewhere):
        path.touch()
    assert shm.sweep_stale(str(tmp_path)) == 1
    assert not stale.exists() and live.exists() and elsewhere.exists()


def test_a_socket_path_too_long_is_a_clear_error(tmp_path):
    with pytest.raises(shm.ShmError, match=shm.ENV_DIR):
        shm.datagram_socket(str(tmp_path / ("x" * 120)))


def test_a_full_folder_is_refused_before_any_file_is_made(tmp_path):
    with pytest.raises(shm.ShmError, match="cannot reserve"):
        shm.Segment.create(str(tmp_path / "huge"), 1 << 60)
    assert not (tmp_path / "huge").exists()


# ---- choosing the transport -----------------------------------------------------------------

def test_ray_asks_for_no_segments():
    assert transport.choose("ray", [10], 2, 2, warn=pytest.fail) is None


def test_auto_falls_back_with_one_warning_and_shm_refuses(monkeypatch, tmp_path):
    monkeypatch.setenv(shm.ENV_DIR, str(tmp_path / "missing"))
    lines = []
    assert transport.choose("auto", [10], 2, 2, warn=lines.append) is None
    assert len(lines) == 1 and "missing is not a folder" in lines[0] and "--transport ray" in lines[0]
    with pytest.raises(UserError, match="--transport shm: .*missing is not a folder"):
        transport.choose("shm", [10], 2, 2, warn=pytest.fail)


def test_a_job_larger_than_the_free_shared_memory_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(shm.ENV_DIR, str(tmp_path))
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(UserError, match="MiB free, this job needs about"):
        transport.choose("shm", [free // 4], 1, 1, warn=pytest.fail)


def test_another_architecture_uses_ray_calls(monkeypatch):
    monkeypatch.setattr(shm.platform, "machine", lambda: "aarch64")
    lines = []
    assert transport.choose("auto", [10], 1, 1, warn=lines.append) is None
    assert "x86-64" in lines[0]


# ---- a shard and a client in this process ---------------------------------------------------

def one_shard(names, optimizer="sgd", size=1000):
    plan = make_plan([("w", (size,))], 1, "balanced")
    shard = SharedMemoryShard(0, np.zeros(size, np.float32), parse_optimizer(optimizer), 0.5,
                              "constant", shm=names)
    return plan, shard, ShmShardClient(plan, names, 0, [None], depth=3, timeout_s=30)


def test_a_pipelined_fetch_does_not_wait_for_the_own_push_and_a_push_pull_does(names):
    plan, shard, client = one_shard(names)
    host, grad = np.empty(1000, np.float32), np.ones(1000, np.float32)
    got = client.install(client.start_fetch(), host)
    with shard._lock:  # the shard cannot apply anything meanwhile
        client.push(grad, got, 0, and_pull=False)
        pipelined = client.install(client.start_fetch(), host)
        assert pipelined.versions == [0] and (host == 0).all()
    exchanged = client.push(grad, pipelined, 0, and_pull=True)
    after = client.install(exchanged, host)
    assert after.versions == [2] and np.array_equal(host, np.full(1000, -1.0, np.float32))
    while client.inflight:
        client.settle_oldest()
    assert client.counts["pushes"] == 2 and client.counts["rejected"] == 0
    assert shard.tau_counts == {0: 1, 1: 1}  # the second push was computed without the first
    client.close()
    shard.close()
    assert names.files() == []


def test_bad_pushes_through_shared_memory_are_rejected_and_change_nothing(names):
    plan, shard, client = one_shard(names, "adam")
    host = np.empty(1000, np.float32)
    got = client.install(client.start_fetch(), host)
    bad = np.ones(1000, np.float32)
    bad[7] = np.nan
    fetch = client.push(bad, got, 0, and_pull=True)
    assert client.install(fetch, host).versions == [0] and (host == 0).all()
    client.settle_oldest()
    assert client.counts["rejected"] == 1 and shard.rejected == {"nonfinite": 1}
    assert shard.export_state().optim == {}  # no step was taken: no Adam state either
    client.close()
    shard.close()


# ---- on the session's Ray: the two transports, bit for bit ---------------------------------

STEPS, BATCH = 6, 32


def train_one(ray_session, optimizer: str, transport_name: str, names) -> np.ndarray:
    data = synthetic(SEED, train_size=600, test_size=100)
    config = TrainConfig(replicas=1, shards=1, model="mlp", batch_size=BATCH, steps=STEPS,
                         optimizer=optimizer, lr=0.05, lr_rule="inverse", prefetch=False, seed=SEED,
                         transport=transport_name)
    model = build_model("mlp", SEED)
    plan = make_plan(named_shapes(model), 1, "balanced")
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    cls, extra = (SharedMemoryShard, {"shm": names}) if transport_name == "shm" else (ParameterShard, {})
    shard = ray_session.remote(cls).options(num_cpus=0).remote(
        0, initial, parse_optimizer(optimizer), 0.05, "inverse", **extra)
    ray_session.get(shard.__ray_ready__.remote(), timeout=60)  # its board exists, as the job waits for
    replica = ray_session.remote(ModelReplica).options(num_cpus=0, max_concurrency=2).remote(
        0, replica_settings(config), plan, [shard], data.train_images, data.train_labels, 1,
        shm=names if transport_name == "shm" else None)
    try:
        result = ray_session.get(replica.run.remote(), timeout=120)
        version, values = ray_session.get(shard.pull.remote(), timeout=60)
        taus = [r["tau"] for r in ray_session.get(shard.drain_events.remote(), timeout=60)]
        if transport_name == "shm":
            ray_session.get(shard.close.remote(), timeout=60)
    finally:
        ray_session.kill(replica)
        ray_session.kill(shard)
    assert (result["transport"], result["steps"], version, taus) == (transport_name, STEPS, STEPS,
                                                                     [0] * STEPS)
    return values


@pytest.mark.ray
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_shm_and_ray_transports_train_bit_for_bit_alike_and_as_torch_optim(ray_session, names,
                                                                            optimizer):
    from test_engine import reference_run

    over_ray = train_one(ray_session, optimizer, "ray", names)
    over_shm = train_one(ray_session, optimizer, "shm", names)
    assert np.array_equal(over_shm, over_ray)
    np.testing.assert_allclose(over_shm, reference_run(optimizer, synthetic(SEED, 600, 100)),
                               rtol=1e-5, atol=1e-6)
    assert names.files() == []


def test_a_result_is_written_only_after_the_board_holds_its_update(names):
    plan, shard, client = one_shard(names)
    host, grad = np.empty(1000, np.float32), np.ones(1000, np.float32)
    got = client.install(client.start_fetch(), host)
    publish, done_at_publish = shard.board.publish, []

    def watched(values, version):
        done_at_publish.append(int(client.slots.results[0, 1]["done"]))  # ticket 1 uses slot 1
        publish(values, version)

    shard.board.publish = watched
    after = client.install(client.push(grad, got, 0, and_pull=True), host)
    assert done_at_publish == [0] and after.versions == [1]  # not done while publishing; then 1
    client.settle_oldest()
    client.close()
    shard.close()


def test_a_doorbell_thread_that_fails_fails_the_job_instead_of_hanging_it(names, monkeypatch):
    plan, shard, client = one_shard(names)
    monkeypatch.setattr(shard, "_serve_one", lambda message: 1 / 0)
    got = client.install(client.start_fetch(), np.empty(1000, np.float32))
    client.push(np.ones(1000, np.float32), got, 0, and_pull=False)
    with pytest.raises(RuntimeError, match="shard 0 died"):  # its doorbell closed: seen as dead
        client.settle_oldest()
    with pytest.raises(RuntimeError, match="doorbell thread: ZeroDivisionError"):
        shard.stats()
    client.close()
    shard.close()


def test_under_auto_a_shard_without_shared_memory_serves_ray_calls(tmp_path):
    names = shm.ShmNames(str(tmp_path / "missing"), "downpour-1-x-y")
    shard = SharedMemoryShard(0, np.zeros(4, np.float32), parse_optimizer("sgd"), 0.5, "constant",
                              shm=names)
    assert shard.stats()["transport"] == "ray" and shard.push(np.ones(4, np.float32), 0, 0).accepted
    with pytest.raises(shm.ShmError):
        SharedMemoryShard(0, np.zeros(4, np.float32), parse_optimizer("sgd"), 0.5, "constant",
                          shm=names, required=True)


def test_a_folder_whose_socket_paths_would_be_too_long_falls_back(monkeypatch, tmp_path):
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setenv(shm.ENV_DIR, str(deep))
    lines = []
    assert transport.choose("auto", [10], 1, 1, warn=lines.append) is None
    assert "socket paths" in lines[0] and len(lines) == 1
