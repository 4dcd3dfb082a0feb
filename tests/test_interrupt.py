"""Ctrl-C on a running `downpour train`, as a terminal sends it (SIGINT to the whole process group):
one quiet line, status interrupted, replicas stopped before the final evaluation."""

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray
TIMEOUT_S = 300


def test_ctrl_c_ends_the_run_quietly_with_a_consistent_final_model(tmp_path):
    run_dir = tmp_path / "interrupted"
    argv = ["train", "--dataset", "synthetic", "--model", "mlp", "--replicas", "2", "--shards", "1",
            "--steps", "1000000", "--eval-every", "0", "--run-dir", str(run_dir)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a local Ray of its own, not the session's
    proc = subprocess.Popen([sys.executable, "-c", f"from ps.cli import main; raise SystemExit(main({argv!r}))"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        before = []
        for line in proc.stderr:  # the first progress line: training has started
            before.append(line)
            if "epoch" in line:
                break
        assert "epoch" in before[-1], "".join(before)
        os.killpg(proc.pid, signal.SIGINT)
        after = proc.stderr.read()
        assert proc.wait(TIMEOUT_S) == 130, after
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    said = [line for line in after.splitlines() if line.strip() and not line.lstrip().startswith("[")]
    assert "Traceback" not in after and "ActorDiedError" not in after, after
    assert len(said) == 1 and said[0].startswith("downpour: interrupted"), after
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["train_samples"] > 0
    assert summary["test_versions"] == summary["updates"]  # nobody pushed after the final pull


def test_an_interrupted_run_resumes_from_the_versions_it_stopped_at(ray_session, tmp_path):
    """Ctrl-C, then `train --resume`: the final checkpoint holds the shards' last versions, and the
    resumed shards' first pushes are applied on exactly those."""
    from ps.common import schema
    from ps.driver.train import resume
    from ps.obs import events

    run_dir = tmp_path / "interrupted"
    argv = ["train", "--dataset", "synthetic", "--model", "mlp", "--replicas", "2", "--shards", "2",
            "--steps", "1000000", "--eval-every", "0", "--run-dir", str(run_dir)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-c", f"from ps.cli import main; raise SystemExit(main({argv!r}))"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        for line in proc.stderr:
            if "epoch" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        proc.stderr.read()
        assert proc.wait(TIMEOUT_S) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped = json.loads((run_dir / "summary.json").read_text())
    done = stopped["train_samples"] // 32
    # a budget of a few more steps per replica than were done: the resumed run ends on its own
    _, summary = resume(str(run_dir), {"steps": done // 2 + 20}, "flags")
    assert summary["status"] == "completed", summary["error"]
    log = list(events.read_events(run_dir / schema.LOG_NAME))
    at = next(i for i, r in enumerate(log) if r["kind"] == "resume")
    assert log[at]["versions"] == stopped["updates"]  # the final checkpoint: the last versions
    for shard, version in enumerate(stopped["updates"]):
        first = next(r for r in log[at:] if r["kind"] == "push" and r["shard"] == shard)
        assert first["applied"] == first["fetched"] == version
    share = -(-(2 * (done // 2 + 20) - done) // 2)  # the steps left, shared by the 2 replicas
    assert summary["train_samples"] == (done + 2 * share) * 32
