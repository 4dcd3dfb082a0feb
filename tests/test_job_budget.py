"""--budget job on the session's local Ray: the driver shares the steps left by the replicas'
speeds at each poll, so a slow replica does fewer steps and the run still does its budget. How
the steps are shared is checked on `balance` itself (test_budget.py)."""

import pytest

from ps.common.config import TrainConfig
from ps.driver.train import train

pytestmark = pytest.mark.ray
STEPS = 400  # per replica as planned: at 5 ms a step (and 20 ms for replica 0) several polls long


def test_a_slow_replica_does_fewer_steps_and_the_run_does_its_budget(ray_session, tmp_path):
    config = TrainConfig(dataset="synthetic", model="mlp", replicas=3, shards=1, steps=STEPS,
                         budget="job", eval_every=0.0, metrics=False, timeout_s=60.0,
                         inject_delay="slow:mean=0.005,jitter=0,count=1,factor=4",
                         run_dir=str(tmp_path / "job-budget"))
    _, summary = train(config)
    assert summary["status"] == "completed", summary["error"]
    steps = {r["replica"]: r["steps"] for r in summary["replica_stats"]}
    # with shares of its own, replica 0 would do 400 steps like the others (and end last, alone)
    assert steps[0] < 0.75 * min(steps[1], steps[2]), steps
    # the budget, give or take the step each replica was in when its end was moved before it
    assert 3 * STEPS <= sum(steps.values()) <= 3 * STEPS + 3, steps
    assert summary["updates"] == [sum(steps.values())]  # every step's push was applied once
