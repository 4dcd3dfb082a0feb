"""Consistency modes on the session's local Ray, end to end through `train`: sync equals big-batch
SGD, backup drops late gradients, SSP keeps its bound, and the other modes run."""

import collections

import numpy as np
import pytest
from tests_support import big_batch_sgd, final_values

from ps.cli import main
from ps.common import schema
from ps.common.config import TrainConfig
from ps.driver.train import train
from ps.obs import events

pytestmark = pytest.mark.ray
SEED, BATCH = 5, 16


def run(tmp_path, name: str, **overrides):
    config = TrainConfig(**{"dataset": "synthetic", "model": "mlp", "replicas": 3, "shards": 2,
                            "steps": 8, "batch_size": BATCH, "eval_every": 0.0, "seed": SEED,
                            "timeout_s": 120, "run_dir": str(tmp_path / name), **overrides})
    path, summary = train(config)
    return path, summary, [r for r in events.read_events(path / schema.LOG_NAME) if r["kind"] == "push"]


def reads_back(path, capsys) -> None:
    """`downpour staleness` and `report` read the run unchanged, whatever its mode."""
    capsys.readouterr()
    assert main(["staleness", str(path)]) == 0 and "all shards: pushes" in capsys.readouterr().out
    assert main(["report", str(path)]) == 0 and (path / "report" / "report.md").is_file()


def test_sync_equals_single_process_sgd_with_batch_n_times_b(ray_session, tmp_path, capsys):
    path, summary, pushes = run(tmp_path, "sync", consistency="sync", optimizer="sgd", lr=0.1,
                                lr_rule="constant", lr_schedule="constant")
    assert summary["status"] == "completed" and summary["updates"] == [8, 8]
    assert summary["consistency"]["mode"] == "sync" and summary["consistency"]["per_update"] == [3, 3]
    assert {r["tau"] for r in pushes} == {0} and all(r["accepted"] for r in pushes)
    assert summary["transport"]["replicas"] == {"ray": 3}  # rounds wait through Ray calls
    np.testing.assert_allclose(final_values(path, "mlp", SEED), big_batch_sgd("mlp", SEED, BATCH, 3, 8, 0.1),
                               rtol=1e-4, atol=1e-5)
    reads_back(path, capsys)


def test_backup_never_applies_a_late_gradient(ray_session, tmp_path, capsys):
    path, summary, pushes = run(tmp_path, "backup", consistency="backup:b=1", steps=12)
    assert summary["status"] == "completed"
    for shard in (0, 1):
        mine = [r for r in pushes if r["shard"] == shard]
        late = [r for r in mine if r["fetched"] < r["applied"]]
        assert all(not r["accepted"] and r["reason"].startswith("late") for r in late)
        accepted = [r for r in mine if r["accepted"]]
        assert all(r["tau"] == 0 for r in accepted)
        # every update is a round of N - b = 2 gradients on one version, but the last ones once
        # replicas finished (a round never waits for a replica that will not push again)
        rounds = collections.Counter(r["fetched"] for r in accepted)
        closed = summary["updates"][shard]
        assert set(rounds) == set(range(closed)) and all(k in (1, 2) for k in rounds.values())
        full = [v for v in sorted(rounds) if rounds[v] == 2]
        assert full == list(range(len(full))) and len(full) >= closed - 12
    assert summary["consistency"]["late_dropped"] == sum(not r["accepted"] for r in pushes)
    assert summary["rejected_by_reason"].get("late", 0) == summary["consistency"]["late_dropped"]
    reads_back(path, capsys)


@pytest.mark.parametrize("bound, transport", [(0, "auto"), (2, "auto"), (4, "auto"), (0, "ray"),
                                              (4, "ray")])  # the actor reports every other step at 4
def test_ssp_never_lets_a_replica_run_past_its_bound(ray_session, tmp_path, bound, transport, capsys):
    path, summary, pushes = run(tmp_path, f"ssp{bound}", consistency=f"ssp:bound={bound}", steps=12,
                                replicas=3, shards=1, transport=transport)
    assert summary["status"] == "completed"
    ssp = summary["consistency"]["ssp"]
    assert ssp["violations"] == 0 and ssp["max_gap"] <= bound
    # one machine with shared memory: the clocks are in it; Ray calls: in the pacer actor
    assert ssp["clock_table"] == {"auto": "shm", "ray": "actor"}[transport]
    # from the log alone: when a replica's push of its step c lands, every other replica's
    # pushes of steps 0 .. c - bound - 1 have landed before it
    seen = collections.Counter()
    for r in sorted(pushes, key=lambda r: r["applied"] if r["accepted"] else r["t"]):
        c = seen[r["replica"]]
        assert all(seen[q] >= c - bound for q in range(3) if q != r["replica"]), (r, dict(seen))
        seen[r["replica"]] += 1
    assert sum(seen.values()) == 3 * 12
    # Ho et al.'s read guarantee: the parameters a replica's step c computed on (the version it
    # fetched) hold every other replica's updates of steps 0 .. c - bound - 1
    applied = {q: sorted(r["applied"] for r in pushes if r["replica"] == q) for q in range(3)}
    for q, versions in applied.items():
        for c, r in enumerate(sorted((r for r in pushes if r["replica"] == q), key=lambda r: r["applied"])):
            for other in set(applied) - {q}:
                held = sum(v < r["fetched"] for v in applied[other])
                assert held >= min(c - bound, 12), (q, c, other, r["fetched"], applied[other])
    reads_back(path, capsys)


@pytest.mark.parametrize("overrides", [
    {"consistency": "softsync:n=2", "replicas": 4},
    {"consistency": "hogwild", "optimizer": "sgd", "lr": 0.05},
    {"gradient_transform": "dcasgd:lambda=0.04,adaptive=1"},
    {"local_steps": 4, "optimizer": "nesterov", "lr": 0.7, "local_lr": 0.05, "steps": 12},
    {"inject_delay": "straggler:mean=0.002,p=0.5,factor=10"},
])
def test_other_modes_train_and_report_what_they_did(ray_session, tmp_path, overrides, capsys):
    path, summary, pushes = run(tmp_path, "mode", **overrides)
    reads_back(path, capsys)
    assert summary["status"] == "completed" and summary["rejected_pushes"] == 0
    steps, replicas = overrides.get("steps", 8), overrides.get("replicas", 3)
    every = overrides.get("local_steps", 1)
    assert len(pushes) == 2 * replicas * steps // every
    modes = summary["consistency"]
    if overrides.get("consistency") == "softsync:n=2":
        assert modes["per_update"] == [2, 2] and summary["updates"] == [4 * 8 // 2] * 2
    if "gradient_transform" in overrides:
        # a backup copy of its shard's slice per replica, and the adaptive mean square
        assert modes["transform_state_bytes"] >= 3 * 4 * sum(summary["shard_sizes"]) if \
            "shard_sizes" in summary else modes["transform_state_bytes"] > 0
        assert summary["transport"]["replicas"] == {"ray": 3}
    if "inject_delay" in overrides:
        # 8 steps of at least 0.9 x 2 ms each, half of them 10 x longer on average: the sleep
        # is counted as compute time
        assert all(r["compute_s"] >= 8 * 0.0018 for r in summary["replica_stats"])
