"""The replica loop in-process, over real ParameterShard objects and no Ray: the Downpour schedule
(n_fetch, n_push, max_inflight), reassign, stop and progress. Hooks fire at chosen steps, no sleeps."""

from typing import Callable, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ps.common.protocol import ReplicaSettings
from ps.server.optimizers import parse_optimizer
from ps.server.shard import ParameterShard
from replicas.client import LocalShardClient
from replicas.data import epoch_batches, normalise, partition, synthetic
from replicas.models import build_model, named_shapes
from replicas.replica import ModelReplica
from sharding import make_plan

SEED, BATCH, LR, LOCAL_LR = 3, 16, 0.05, 0.1
DATA = synthetic(SEED, train_size=640, test_size=10)


def settings(**overrides) -> ReplicaSettings:
    base = dict(model="mlp", seed=SEED, replicas=1, batch_size=BATCH, total_steps=6, epochs=1,
                n_fetch=1, n_push=1, max_inflight=1, local_lr=LOCAL_LR, prefetch=False,
                device="cpu", timeout_s=30.0, event_log=True)
    return ReplicaSettings(**{**base, **overrides})


def initial_values() -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in build_model("mlp", SEED).parameters()]).numpy()


class RecordingClient(LocalShardClient):
    """LocalShardClient that records what the loop asks of it and calls `hook(step)` as each
    install begins, i.e. before that step's compute."""

    def __init__(self, shards, plan):
        super().__init__(shards, plan)
        self.replica: Optional[ModelReplica] = None
        self.hook: Optional[Callable[[int], None]] = None
        self.pushes: list[tuple[int, bool]] = []  # (step, and_pull)
        self.inflight_at_push: list[int] = []

    def install(self, fetch, host, probe=False):
        if self.hook:
            self.hook(self.replica.step)
        return super().install(fetch, host, probe)

    def push(self, flat_grad, versions, replica_id, and_pull):
        self.pushes.append((self.replica.step, and_pull))
        self.inflight_at_push.append(self.inflight)
        return super().push(flat_grad, versions, replica_id, and_pull)


def make_replica(num_shards: int = 2, **overrides) -> tuple[ModelReplica, RecordingClient, list]:
    plan = make_plan(named_shapes(build_model("mlp", SEED)), num_shards, "balanced")
    shards = [ParameterShard(s, piece.copy(), parse_optimizer("sgd"), LR, "constant")
              for s, piece in enumerate(plan.split(initial_values()))]
    client = RecordingClient(shards, plan)
    replica = ModelReplica(0, settings(**overrides), plan, [], DATA.train_images, DATA.train_labels,
                           1, client=client)
    client.replica = replica
    return replica, client, shards


def shard_values(replica: ModelReplica, shards: list) -> np.ndarray:
    return replica.plan.assemble([s.pull()[1] for s in shards], np.empty(replica.plan.total, np.float32))


def first_batches(k: int, part=(1, 0, 0)) -> list[np.ndarray]:
    parts, index, generation = part
    indices = partition(len(DATA.train_labels), parts, index, SEED + generation)
    return epoch_batches(indices, BATCH, 0, SEED, 0)[:k]


def grad_at(values: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """The flat gradient of the loss on `batch` at parameters `values` (the reference)."""
    model = build_model("mlp", SEED)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(values.copy()), model.parameters())
    x, y = torch.from_numpy(normalise(DATA.train_images[batch])), torch.from_numpy(DATA.train_labels[batch])
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()


@pytest.mark.parametrize("n_fetch,n_push,steps", [(1, 2, 7), (3, 2, 10), (2, 3, 10), (3, 1, 8)])
def test_fetch_and_push_rounds_follow_the_schedule_exactly(n_fetch, n_push, steps):
    replica, client, shards = make_replica(n_fetch=n_fetch, n_push=n_push, total_steps=steps)
    result = replica.run()
    rounds = [s for s in range(steps) if (s + 1) % n_push == 0 or s + 1 == steps]  # the last is forced
    # a push at a step where a fetch is due carries it (push_pull), except after the last step
    assert client.pushes == [(s, (s + 1) % n_fetch == 0 and s + 1 < steps) for s in rounds]
    assert [s.version for s in shards] == [len(rounds)] * len(shards)
    assert (result["steps"], result["samples"]) == (steps, steps * BATCH)
    assert (result["pushes"], result["rejected"]) == (len(rounds) * len(shards), 0)
    fetches = replica.drain_events()
    assert len(fetches) == len(range(0, steps, n_fetch))


def test_n_push_sums_the_round_and_n_fetch_steps_locally_in_between():
    replica, _, shards = make_replica(n_fetch=2, n_push=2, total_steps=2)
    w0, (b0, b1) = initial_values(), first_batches(2)
    replica.run()
    g0 = grad_at(w0, b0)
    g1 = grad_at(w0 - LOCAL_LR * g0, b1)  # the replica's own SGD step between fetches
    np.testing.assert_allclose(shard_values(replica, shards), w0 - LR * (g0 + g1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_inflight", [1, 3])
def test_no_more_than_max_inflight_rounds_are_ever_unsettled(max_inflight):
    steps = 8
    replica, client, shards = make_replica(max_inflight=max_inflight, total_steps=steps)
    result = replica.run()
    # each push finds the rounds before it settled down to the bound, never more
    assert client.inflight_at_push == [min(i, max_inflight) for i in range(steps)]
    assert client.inflight == 0 and result["pushes"] == steps * len(shards)


@pytest.mark.parametrize("n_fetch,n_push", [(1, 1), (2, 2), (1, 3)])
def test_one_replica_with_max_inflight_one_is_never_stale(n_fetch, n_push):
    replica, client, shards = make_replica(n_fetch=n_fetch, n_push=n_push, total_steps=6)
    replica.run()
    for shard in shards:
        assert [e["tau"] for e in shard.drain_events()] == [0] * len(client.pushes)


def test_reassign_mid_run_moves_the_part_and_the_end():
    replica, client, shards = make_replica(total_steps=6)
    seen, answers = [], []
    compute = replica._compute
    replica._compute = lambda batch, local_step: seen.append(batch) or compute(batch, local_step)
    client.hook = lambda step: step == 3 and answers.append(
        (replica.reassign((2, 1, 1), 12), replica.progress()["running"]))
    result = replica.run()
    assert answers == [(True, True)]
    assert (result["steps"], result["part"], [s.version for s in shards]) == (12, [2, 1, 1], [12, 12])
    # the new part takes effect from the very next batch, from its own epoch 0
    expected = first_batches(3) + first_batches(9, part=(2, 1, 1))
    assert all(np.array_equal(a, b) for a, b in zip(seen, expected, strict=True))


def test_reassign_is_refused_once_the_loop_ends_or_is_stopping():
    replica, client, _ = make_replica(total_steps=4)
    answers = []
    client.hook = lambda step: step == 1 and (replica.stop(), answers.append(replica.reassign((2, 1, 1), 9)))
    assert replica.run()["steps"] == 2 and answers == [False]
    assert replica.reassign((2, 1, 1), 9) is False
    assert (replica.part, replica.total_steps, replica._next_part) == ((1, 0, 0), 4, None)


def test_stop_inside_an_n_push_round_still_pushes_its_gradient():
    replica, client, shards = make_replica(n_push=4, total_steps=10)
    client.hook = lambda step: step == 1 and replica.stop()
    result = replica.run()
    assert (result["steps"], result["pushes"], [s.version for s in shards]) == (2, 2, [1, 1])
    assert client.pushes == [(2, False)]  # one push, after the loop ended at step 2
    w0, (b0, b1) = initial_values(), first_batches(2)  # nothing pushed yet: both steps saw w0
    expected = w0 - LR * (grad_at(w0, b0) + grad_at(w0, b1))
    np.testing.assert_allclose(shard_values(replica, shards), expected, rtol=1e-5, atol=1e-6)


def test_progress_reports_samples_times_and_whether_the_loop_runs():
    replica, client, _ = make_replica(total_steps=3)
    before = replica.progress()
    assert (before["running"], before["t_first"], before["samples"]) == (False, None, 0)
    during = []
    client.hook = lambda step: step == 2 and during.append(replica.progress())
    result = replica.run()
    assert during[0]["running"] and during[0]["samples"] == 2 * BATCH and during[0]["t_first"]
    after = replica.progress()
    assert set(after) == {"replica", "step", "total_steps", "steps_per_epoch", "samples",
                          "t_first", "t_last", "running", "part", "loss"}
    assert (after["running"], after["samples"]) == (False, 3 * BATCH)
    assert (after["t_first"], after["t_last"]) == (result["t_first"], result["t_last"])
