"""Live scaling of a real job: 2 -> 4 -> 1 replicas through `downpour scale`, on the shared Ray.
How the steps left are shared out is checked on `rescale_plan` itself (test_budget.py)."""

import threading

import pytest
from tests_support import ProgressWatch

from ps import cli
from ps.common import schema
from ps.common.config import TrainConfig
from ps.obs import events

pytestmark = pytest.mark.ray
TIMEOUT_S = 180


def test_scale_a_running_job_up_then_down(ray_session, tmp_path, capsys):
    from ps.driver.train import train

    run_dir = tmp_path / "scaled-run"
    # A budget no run here reaches: the job ends by `downpour stop`, not by how fast it trains.
    config = TrainConfig(dataset="synthetic", model="mlp", replicas=2, shards=2, steps=100_000,
                         eval_every=0.0, replica_cpus=0.2, shard_cpus=0.2, run_dir=str(run_dir))
    out, result = ProgressWatch(), []
    thread = threading.Thread(target=lambda: result.append(train(config, out=out)), daemon=True)
    thread.start()
    assert out.started.wait(TIMEOUT_S), out.getvalue()

    assert cli.main(["scale", str(run_dir), "--replicas", "4", "--address", "auto"]) == 0
    assert "2 -> 4 replicas" in capsys.readouterr().out
    # 36 more replicas of 0.2 CPU do not fit in the session's 2 CPUs: only the request fails
    assert cli.main(["scale", str(run_dir), "--replicas", "40", "--address", "auto"]) == 2
    assert "36 replicas asking for {CPU=0.2} each cannot be placed" in capsys.readouterr().err
    assert cli.main(["scale", "downpour-" + run_dir.name, "--replicas", "1", "--address", "auto"]) == 0
    assert "4 -> 1 replicas" in capsys.readouterr().out
    assert cli.main(["scale", run_dir.name, "--replicas", "0", "--address", "auto"]) == 2
    assert "1 or more" in capsys.readouterr().err
    assert cli.main(["stop", run_dir.name, "--address", "auto"]) == 0

    thread.join(TIMEOUT_S)
    assert result, out.getvalue()
    _, summary = result[0]
    assert summary["status"] == "stopped", summary["error"]
    stats = {r["replica"]: r for r in summary["replica_stats"]}
    assert sorted(stats) == [0, 1, 2, 3]  # 2 and 3 joined; none reused an id
    # generation 1: four disjoint parts of 4; generation 2: replica 0 alone holds all of part 0 of 1
    assert stats[0]["part"] == [1, 0, 2]
    assert sorted(tuple(stats[i]["part"]) for i in (1, 2, 3)) == [(4, 1, 1), (4, 2, 1), (4, 3, 1)]

    scales = [r for r in events.read_events(run_dir / schema.LOG_NAME) if r["kind"] == "scale"]
    assert [(r["replicas"], r["active"], r["generation"]) for r in scales] == [
        (4, [0, 1, 2, 3], 1), (1, [0], 2)]
