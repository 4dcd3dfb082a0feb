"""A real job, watched while it runs: Ray's Prometheus endpoint, `downpour top` from the run
directory and through the cluster, TensorBoard scalars, and a stop asked through the job's controller."""

import re
import threading
import time
import urllib.request

import pytest
from tests_support import ProgressWatch

from ps import cli
from ps.common.config import TrainConfig
from ps.driver.controller import NAMESPACE

pytestmark = pytest.mark.ray
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def running_job(ray_session, tmp_path_factory):
    """A job long enough to outlive the module's tests; stopped through its controller at the end."""
    from ps.driver.train import train

    run_dir = tmp_path_factory.mktemp("live") / "observed-run"  # a name no other test uses
    config = TrainConfig(dataset="synthetic", model="mlp", replicas=2, shards=2, steps=10**6,
                         eval_every=0.0, run_dir=str(run_dir), tensorboard=True)
    out, result = ProgressWatch(), []
    thread = threading.Thread(target=lambda: result.append(train(config, out=out)), daemon=True)
    thread.start()
    assert out.started.wait(START_TIMEOUT_S), f"the job did not start: {out.getvalue()}"
    yield run_dir
    ray_session.get_actor(run_dir.name, namespace=NAMESPACE).request_stop.remote("test over")
    thread.join(START_TIMEOUT_S)
    assert result, f"the job did not end after the stop: {out.getvalue()}"
    _, summary = result[0]
    assert summary["status"] == "stopped" and summary["stop_reason"] == "test over"
    assert summary["test_accuracy"] is not None  # a stopped job still evaluates and saves
    assert (run_dir / "model.pt").is_file()
    assert_tensorboard_scalars(run_dir / "tensorboard")


def assert_tensorboard_scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(path)).Reload().Tags()["scalars"]
    assert {"test/accuracy", "test/loss", "staleness/tau_p50", "throughput/samples/s"} <= set(scalars)


def scrape_until(predicate, timeout_s: float = 60.0) -> str:
    """Ray ships metrics to the node's endpoint periodically (every 1 s in tests): read it until
    `predicate` holds or the deadline passes."""
    from ps.driver.ray_session import metrics_endpoints

    deadline, text = time.time() + timeout_s, ""
    while time.time() < deadline:
        text = "".join(urllib.request.urlopen(url, timeout=5).read().decode()
                       for url in metrics_endpoints())
        if predicate(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"metrics never satisfied the check; last scrape had "
                         f"{text.count('downpour')} downpour lines")


def samples(text: str, name: str, run: str) -> list[float]:
    pattern = re.compile(rf'^{name}\{{([^}}]*)\}} (\S+)$', re.M)
    return [float(v) for labels, v in pattern.findall(text) if f'run="{run}"' in labels]


def test_prometheus_endpoint_exposes_the_tau_histogram(running_job):
    run = running_job.name
    # The histogram moves with each push, the counters and gauge with each drain (once a second):
    # wait until both shards show all three.
    names = ("ray_downpour_staleness_count", "ray_downpour_shard_version", "ray_downpour_pushes_total")
    text = scrape_until(lambda t: all(len(v) >= 2 and min(v) > 0
                                      for v in (samples(t, name, run) for name in names)))
    counts = samples(text, "ray_downpour_staleness_count", run)
    assert len(counts) == 2  # one histogram per shard
    buckets = samples(text, "ray_downpour_staleness_bucket", run)
    assert buckets and max(buckets) == max(counts)  # the +Inf bucket holds every push
    assert 'le="0.5"' in text and 'le="8.5"' in text  # integer tau buckets
    assert len(samples(text, "ray_downpour_shard_version", run)) == 2
    assert re.search(rf'ray_downpour_pushes_total{{[^}}]*outcome="accepted"[^}}]*run="{run}"', text)


def test_top_renders_a_frame_from_the_run_directory(running_job, capsys):
    assert cli.main(["top", str(running_job), "--frames", "1"]) == 0
    frame = capsys.readouterr().out
    assert f"downpour top  {running_job.name}  [running]" in frame
    assert re.search(r"^\s+0\s+[1-9]\d*\s", frame, re.M)  # shard 0 with a version above 0
    assert "replica" in frame and "samples/s" in frame


def test_top_renders_a_frame_through_the_cluster(running_job, capsys):
    # Ray is already up in this process: `connect` reuses it, as it would join the cluster.
    assert cli.main(["top", "--address", "auto", "--run", running_job.name, "--frames", "1"]) == 0
    frame = capsys.readouterr().out
    assert f"downpour top  {running_job.name}  [running]" in frame
    assert re.search(r"^\s+1\s+[1-9]\d*\s", frame, re.M)  # shard 1 with a version above 0


def test_top_names_an_unknown_job(running_job, capsys):
    assert cli.main(["top", "--address", "auto", "--run", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert "no-such-run" in err and running_job.name in err
