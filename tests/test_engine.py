"""The engine on the session's local Ray: replica + shard against torch.optim, and real asynchrony."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ps.common import schema
from ps.common.config import TrainConfig, replica_settings
from ps.driver.train import train
from ps.obs import events
from ps.server.optimizers import parse_optimizer
from ps.server.shard import ParameterShard
from replicas.data import epoch_batches, normalise, partition, synthetic
from replicas.models import build_model, named_shapes
from replicas.replica import ModelReplica
from sharding import make_plan

pytestmark = pytest.mark.ray

TORCH_OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, fused=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.05, fused=True),
}
STEPS, BATCH, SEED = 6, 32, 3


def reference_run(optimizer: str, data) -> np.ndarray:
    """Single-process torch on the batches the replica draws, in the same order."""
    torch.set_num_threads(1)
    model = build_model("mlp", SEED)
    opt = TORCH_OPTIMIZERS[optimizer](list(model.parameters()))
    indices = partition(len(data.train_labels), 1, 0, SEED)
    for batch in epoch_batches(indices, BATCH, 0, SEED, 0)[:STEPS]:
        opt.zero_grad()
        x, y = torch.from_numpy(normalise(data.train_images[batch])), torch.from_numpy(data.train_labels[batch])
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


@pytest.mark.parametrize("optimizer", list(TORCH_OPTIMIZERS))
def test_one_replica_one_shard_at_tau_zero_matches_torch_optim(ray_session, optimizer):
    data = synthetic(SEED, train_size=600, test_size=100)
    config = TrainConfig(replicas=1, shards=1, model="mlp", batch_size=BATCH, steps=STEPS,
                         optimizer=optimizer, lr=0.05, lr_rule="inverse", prefetch=False, seed=SEED)
    model = build_model("mlp", SEED)
    plan = make_plan(named_shapes(model), 1, "balanced")
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    shard = ray_session.remote(ParameterShard).options(num_cpus=0).remote(
        0, initial, parse_optimizer(optimizer), 0.05, "inverse")
    replica = ray_session.remote(ModelReplica).options(num_cpus=0, max_concurrency=2).remote(
        0, replica_settings(config), plan, [shard], data.train_images, data.train_labels, 1)
    try:
        result = ray_session.get(replica.run.remote(), timeout=120)
        version, values = ray_session.get(shard.pull.remote(), timeout=60)
        taus = [r["tau"] for r in ray_session.get(shard.drain_events.remote(), timeout=60)]
    finally:
        ray_session.kill(replica)
        ray_session.kill(shard)
    assert (result["steps"], version, taus) == (STEPS, STEPS, [0] * STEPS)
    np.testing.assert_allclose(values, reference_run(optimizer, data), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def async_run(ray_session, tmp_path_factory):
    """One short run with 4 replicas and 2 shards, shared by the tests that read its outputs."""
    run_dir = tmp_path_factory.mktemp("runs") / "async"
    config = TrainConfig(replicas=4, shards=2, model="mlp", dataset="synthetic", steps=25,
                         batch_size=32, lr=0.01, eval_every=0.5, run_dir=str(run_dir), timeout_s=120)
    path, summary = train(config)
    return path, summary, list(events.read_events(path / schema.LOG_NAME))


def test_four_replicas_see_staleness_and_mixed_version_fetches(async_run):
    _, summary, records = async_run
    pushes = [r for r in records if r["kind"] == "push"]
    fetches = [r for r in records if r["kind"] == "fetch"]
    assert summary["status"] == "completed"
    assert max(r["tau"] for r in pushes) > 0
    assert any(len(set(f["versions"])) > 1 for f in fetches)
    assert {r["replica"] for r in pushes} == {0, 1, 2, 3}


def test_every_push_is_applied_once_and_versions_count_updates(async_run):
    _, summary, records = async_run
    pushes = [r for r in records if r["kind"] == "push"]
    assert summary["updates"] == [4 * 25, 4 * 25]
    assert summary["rejected_pushes"] == 0
    for shard in (0, 1):
        applied = sorted(r["applied"] for r in pushes if r["shard"] == shard)
        assert applied == list(range(100))  # each version met by exactly one push
        assert all(r["tau"] == r["applied"] - r["fetched"] for r in pushes)


def test_run_directory_holds_what_design_promises(async_run):
    path, summary, records = async_run
    assert {p.name for p in path.iterdir()} >= {"config.yaml", "summary.json", "events.msgpack", "model.pt"}
    for key in ("status", "test_accuracy", "test_loss", "wall_time_s", "train_samples",
                "samples_per_s", "replicas", "shards", "updates"):
        assert summary[key] is not None, key
    assert summary["train_samples"] == 4 * 25 * 32
    assert set(summary["staleness"]) >= {"mean", "p50", "p90", "p99", "max"}
    state = torch.load(path / "model.pt")
    model = build_model("mlp", 0)
    model.load_state_dict(state)  # a plain state_dict of the model
    assert any(r["kind"] == "eval" for r in records)


def test_a_failing_run_ends_failed_with_its_summary_and_exit_status_1(ray_session, tmp_path, capsys):
    from ps.cli import main

    run_dir = tmp_path / "failing"
    rc = main(["train", "--dataset", "synthetic", "--model", "mlp", "--replicas", "2", "--shards", "1",
               "--steps", "40", "--lr-rule", "failing_plugins:fail_at:version=30",
               "--run-dir", str(run_dir), "--timeout-s", "120"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert rc == 1
    assert summary["status"] == "failed"
    assert "injected failure at version 30" in summary["error"]
    assert summary["error"].startswith("replica ") and " on node " in summary["error"]  # which, where
    pushes = [r for r in events.read_events(run_dir / schema.LOG_NAME) if r["kind"] == "push"]
    assert max(r["applied"] for r in pushes) >= 29  # the log kept what happened before the failure
    assert "failed" in capsys.readouterr().err
    stats = {r["replica"]: r for r in summary["replica_stats"]}
    assert sorted(stats) == [0, 1] and summary["train_samples"] == sum(r["samples"] for r in stats.values())
    assert summary["train_samples"] > 0 and summary["samples_per_s"] > 0  # filled on a failure too
    # the final evaluation ran after every replica stopped: it saw the shard's last version
    assert summary["test_versions"] == summary["updates"]


@pytest.mark.parametrize("event_log", [True, False])
def test_summary_counts_staleness_and_rejections_with_or_without_the_event_log(ray_session, tmp_path,
                                                                                 event_log):
    config = TrainConfig(dataset="synthetic", model="mlp", replicas=2, shards=2, steps=30,
                         eval_every=0.0, lr_rule="failing_plugins:reject_stale:max_tau=0",
                         event_log=event_log, run_dir=str(tmp_path / "run"))
    _, summary = train(config)
    assert summary["status"] == "completed"
    applied, rejected = sum(summary["updates"]), summary["rejected_pushes"]
    assert applied + rejected == 2 * 30 * 2  # every push of every replica to every shard, once
    assert rejected > 0 and summary["rejected_by_reason"] == {"stale": rejected}
    assert summary["staleness"]["count"] == applied and summary["staleness"]["max"] == 0
