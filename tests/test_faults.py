"""Fault tolerance on the session's local Ray: actors killed mid-run (by the fault injector, as a
crash would), shards recreated and fenced, runs resumed, and no parameter ever non-finite."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ps.common import schema
from ps.common.config import TrainConfig
from ps.driver.controller import JobController
from ps.driver.train import resume, train
from ps.obs import events
from ps.server import checkpoint
from ps.server.optimizers import parse_optimizer
from ps.server.shard import ParameterShard
from replicas.client import RayShardClient
from replicas.models import build_model, named_shapes
from sharding import make_plan

pytestmark = pytest.mark.ray
STEPS = 300  # per replica: long enough (several polls) for a fault at 30% to land mid-run


def job(tmp_path: Path, name: str, **overrides) -> TrainConfig:
    values = dict(dataset="synthetic", model="mlp", replicas=2, shards=2, steps=STEPS,
                  eval_every=0.0, run_dir=str(tmp_path / name), timeout_s=60.0, metrics=False)
    return TrainConfig(**{**values, **overrides})


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in events.read_events(run_dir / schema.LOG_NAME) if r["kind"] == kind]


def test_a_killed_replica_is_replaced_on_its_part_and_the_steps_add_up(ray_session, tmp_path):
    # 10 ms a step (--inject-delay): the run spans several of the driver's 1 s polls, where the
    # fault at 30 % is injected, however fast the machine is
    run_dir, summary = train(job(tmp_path, "replica", inject_faults="replica:0@30%",
                                 inject_delay="constant:mean=0.01"))
    assert summary["status"] == "completed", summary["error"]
    assert summary["faults"]["replica_restarts"] == 1
    rows = {r["replica"]: r for r in summary["replica_stats"]}
    assert sorted(rows) == [0, 1, 2]  # replica 2 replaced replica 0
    steps = {i: r.get("steps", r.get("step")) for i, r in rows.items()}
    assert sum(steps.values()) == 2 * STEPS  # nothing lost, nothing counted twice
    assert 0 < steps[0] < STEPS and steps[0] + steps[2] == STEPS
    assert rows[2]["part"] == rows[0]["part"] == [2, 0, 0]  # the dead one's data part goes on
    (fault,), (restart,) = records(run_dir, "fault"), records(run_dir, "restart")
    assert (fault["role"], fault["id"], fault["cause"]) == ("replica", 0, "injected")
    assert (restart["replica"], restart["new"]) == (0, 2)
    assert restart["steps_done"] == steps[0] and restart["steps_owed"] == steps[2]
    assert summary["faults"]["events"] == [fault, restart]  # the summary lists them too
    # each shard got every push of the steps counted (a dead replica's last round may reach some)
    assert all(2 * STEPS <= v <= 2 * STEPS + 1 for v in summary["updates"])


def test_a_killed_shard_is_restored_from_its_checkpoint_and_the_run_completes(ray_session, tmp_path):
    run_dir, summary = train(job(tmp_path, "shard", inject_faults="shard:1@40%", n_fetch=4,
                                 checkpoint_every="100"))
    assert summary["status"] == "completed", summary["error"]
    assert summary["faults"]["shard_restores"] == 1
    (restore,) = records(run_dir, "restore")
    assert restore["shard"] == 1 and restore["incarnation"] == 1
    taken = {c["seq"]: c["versions"][1] for c in records(run_dir, "checkpoint")}
    assert restore["version"] == taken[restore["seq"]]  # back to what that checkpoint saved
    assert summary["faults"]["lost_updates"] == restore["lost_updates"] >= 0
    pushes = records(run_dir, "push")
    assert all(p["tau"] >= 0 for p in pushes if p["accepted"])
    assert all(p["tau"] == -1 for p in pushes if not p["accepted"])  # fenced: no staleness defined
    assert all(p["reason"].startswith("fenced") for p in pushes if not p["accepted"])
    fenced = sum(1 for p in pushes if not p["accepted"])
    assert summary["rejected_by_reason"].get("fenced", 0) == fenced
    assert summary["faults"]["fenced_pushes"] == fenced
    # every step was trained: the replicas' steps add up; shard 1 lost what the restore says
    assert sum(r["steps"] for r in summary["replica_stats"]) == 2 * STEPS
    assert summary["test_accuracy"] is not None


def test_a_push_to_a_dead_shard_is_lost_then_one_of_the_old_incarnation_is_fenced(ray_session):
    """The client, step by step: the shard dies, the job recreates it, the replica finds it."""
    plan = make_plan([("w", (10,))], 1, "balanced")
    spec = parse_optimizer("sgd")
    old = ray_session.remote(ParameterShard).options(num_cpus=0).remote(
        0, np.zeros(10, np.float32), spec, 0.1, "constant")
    directory = ray_session.remote(JobController).options(num_cpus=0).remote("test", "none")
    client = RayShardClient([old], plan, 30.0, directory)
    host = np.zeros(10, np.float32)
    got = client.install(client.start_fetch(), host)
    assert got.incarnations == (0,)
    ray_session.kill(old, no_restart=True)
    new = ray_session.remote(ParameterShard).options(num_cpus=0).remote(
        0, np.ones(10, np.float32), spec, 0.1, "constant", incarnation=1)
    ray_session.get(directory.set_shard.remote(0, 1, new))
    grad = np.ones(10, np.float32)
    client.push(grad, got, 0, and_pull=False)  # to the dead actor
    client.settle_oldest()
    assert client.counts["lost"] == 1 and client.incarnations == [1]
    client.push(grad, got, 0, and_pull=False)  # computed on incarnation 0: fenced by incarnation 1
    client.settle_oldest()
    assert client.counts["fenced"] == 1 and client.counts["rejected"] == 2
    refreshed = client.install(client.start_fetch(), host)
    assert refreshed.incarnations == (1,) and np.array_equal(host, np.ones(10, np.float32))
    client.push(grad, refreshed, 0, and_pull=False)
    client.settle_oldest()
    assert client.counts["rejected"] == 2  # accepted
    assert ray_session.get(new.stats.remote())["version"] == 1


def test_a_resumed_run_continues_the_versions_and_can_re_shard(ray_session, tmp_path):
    first = job(tmp_path, "resumed", steps=100)
    run_dir, before = train(first)
    assert before["status"] == "completed"
    flat_before = _flat(run_dir, before["checkpoints"]["last_seq"], first.shards)
    # more steps, on 3 shards and 4 replicas: continues from the final checkpoint
    _, after = resume(str(run_dir), {"steps": 200, "shards": 3, "replicas": 4}, "flags")
    assert after["status"] == "completed", after["error"]
    (resumed,) = records(run_dir, "resume")
    assert resumed["seq"] == before["checkpoints"]["last_seq"] and resumed["shards"] == 3
    # the resumed job's first checkpoint (taken before any push) holds the same flat vector
    start_seq = resumed["seq"] + 1
    assert np.array_equal(_flat(run_dir, start_seq, 3).view(np.uint32), flat_before.view(np.uint32))
    versions = max(before["updates"])
    assert all(u > versions for u in after["updates"])  # went on from there
    # the whole run's budget (--steps per replica of the job as resumed), over both sessions
    assert after["train_samples"] == 4 * 200 * 32
    assert sum(r["steps"] for r in after["replica_stats"]) == 4 * 200 - 2 * 100
    assert len(records(run_dir, "header")) == 1  # one log, appended to


def _flat(run_dir: Path, seq: int, shards: int) -> np.ndarray:
    states, _ = checkpoint.load_set(checkpoint.set_dir(run_dir / "checkpoints", seq))
    plan = make_plan(named_shapes(build_model("mlp", 0)), shards, "balanced")
    return plan.assemble([s.values for s in states], np.empty(plan.total, np.float32))


@pytest.mark.parametrize("case", ["huge_lr", "nan_model"])
def test_no_parameter_ever_becomes_non_finite(ray_session, tmp_path, case):
    overrides = {"huge_lr": dict(optimizer="sgd", lr=1e30, lr_schedule="constant", lr_rule="constant"),
                 "nan_model": dict(model="failing_plugins:nan_model")}[case]
    run_dir, summary = train(job(tmp_path, case, steps=60, checkpoint_every="10", **overrides))
    assert summary["status"] in ("failed", "diverged")  # most pushes rejected: it learned nothing
    assert "--lr" in summary["error"]
    if case == "nan_model":  # NaN losses: every push rejected, the alarm ends the run
        assert summary["status"] == "diverged" and "--lr" in summary["error"]
        assert summary["rejected_by_reason"].get("nonfinite", 0) > 0
    import torch

    state = torch.load(run_dir / "model.pt")
    assert all(torch.isfinite(t).all() for t in state.values())
    sets = checkpoint.list_sets(run_dir / "checkpoints")
    assert sets
    for _, path in sets:
        states, _ = checkpoint.load_set(path)
        for st in states:
            assert np.isfinite(st.values).all()
            assert all(np.isfinite(a).all() for a in st.optim.values())


def test_the_summary_reports_faults_and_checkpoints_of_an_undisturbed_run(ray_session, tmp_path):
    run_dir, summary = train(job(tmp_path, "quiet", steps=20))
    assert summary["faults"] == {"replica_restarts": 0, "shard_restores": 0, "lost_updates": 0,
                                 "lost_pushes": 0, "fenced_pushes": 0, "events": []}
    # one set at the start, one at the end (the default cadence is 30 s)
    assert summary["checkpoints"]["count"] == 2
    assert summary["checkpoints"]["last_versions"] == summary["updates"]
    job_state = json.loads((checkpoint.set_dir(run_dir / "checkpoints", 1) / "job.json").read_text())
    assert job_state["steps_done"] == 2 * 20 and math.isclose(job_state["train_samples"], 2 * 20 * 32)


def test_a_shard_death_beyond_the_restart_budget_fails_the_run_cleanly(ray_session, tmp_path):
    run_dir, summary = train(job(tmp_path, "budget", inject_faults="shard:0@30%", max_shard_restarts=0))
    assert summary["status"] == "failed"
    assert "--max-shard-restarts" in summary["error"]
    (fault,) = records(run_dir, "fault")
    assert (fault["role"], fault["id"]) == ("shard", 0) and not records(run_dir, "restore")
    assert (run_dir / "summary.json").is_file()  # written, as for any failed run
