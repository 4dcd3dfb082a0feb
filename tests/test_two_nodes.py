"""A real two-node Ray cluster on this machine (two `ray start`s, one node labelled `ps` for the
shards, one `replica` for the replicas): submit, status, logs, scale and stop through the job API.

The cluster is started with `ray start --block` in process groups of its own and torn down by
signalling those groups, so the test never touches the shared test-session Ray (`ray stop` would).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent
WAIT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def env() -> dict:
    """The cluster and the CLI run from this venv; token auth as on any `ray start` cluster."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def node_ports() -> list[str]:
    return ["--metrics-export-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]


def start_node(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_node(process: subprocess.Popen) -> None:
    """SIGTERM to the node's process group (ray start --block ends its Ray processes), then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def downpour(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "downpour"), *args], env=env(), capture_output=True,
                            text=True, timeout=WAIT_S)
    if check:
        assert result.returncode == 0, f"downpour {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def wait_for(what: str, predicate, timeout_s: float = WAIT_S):
    """Polls `predicate` (a cluster or job state) until it holds or the deadline passes."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster():
    gcs, dashboard = free_port(), free_port()
    from ray.util import get_node_ip_address

    ip = get_node_ip_address()  # what Ray advertises on this machine
    head = start_node(["--head", "--port", str(gcs), "--dashboard-port", str(dashboard),
                       "--include-dashboard", "true", "--num-cpus", "2",
                       "--resources", '{"ps": 2}', "--ray-client-server-port", str(free_port()),
                       *node_ports()])
    worker = None
    try:
        address = f"http://127.0.0.1:{dashboard}"
        wait_for("the head's job API",
                 lambda: "no job" in downpour("status", "none", "--address", address, check=False).stderr)
        worker = start_node(["--address", f"{ip}:{gcs}", "--num-cpus", "2",
                             "--resources", '{"replica": 2}', *node_ports()])
        ray_status = [str(BIN / "ray"), "status", "--address", f"{ip}:{gcs}"]
        wait_for("two nodes", lambda: "2.0 replica" in subprocess.run(
            ray_status, env=env(), capture_output=True, text=True, timeout=60).stdout)
        yield address
    finally:
        for node in filter(None, (worker, head)):
            stop_node(node)


def test_submit_places_roles_on_their_nodes_then_status_logs_scale_stop(cluster, tmp_path):
    run_dir = tmp_path / "cluster-run"
    submitted = downpour("submit", "--dataset", "synthetic", "--model", "mlp", "--replicas", "2",
                         "--shards", "2", "--steps", "100000", "--eval-every", "0",
                         "--shard-resources", "CPU=0.5,ps=1", "--replica-resources", "CPU=0.5,replica=1",
                         "--run-dir", str(run_dir), "--address", cluster).stdout
    job = re.search(r"job id: (\S+)", submitted).group(1)
    assert job == "downpour-cluster-run" and str(run_dir) in submitted

    wait_for("the job to train", lambda: "samples/s" in downpour("logs", job, "--address", cluster).stdout)
    assert "RUNNING" in downpour("status", job, "--address", cluster).stdout
    assert "2 -> 1 replicas" in downpour("scale", job, "--replicas", "1", "--address", cluster).stdout
    scaled_up = downpour("scale", job, "--replicas", "9", "--address", cluster, check=False)
    assert scaled_up.returncode == 2 and "replica" in scaled_up.stderr  # no room: says what is free

    assert "SUCCEEDED" in downpour("stop", job, "--address", cluster).stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped"
    nodes = summary["nodes"]
    # the driver runs on the head, the node labelled `ps`; replicas on the other, labelled `replica`
    assert set(nodes["shards"]) == {nodes["driver"]}
    assert len(set(nodes["replicas"][:2])) == 1 and nodes["replicas"][0] != nodes["driver"]
    assert "no job" in downpour("status", "downpour-nothing", "--address", cluster, check=False).stderr


def test_a_wrong_token_is_a_clear_error(cluster):
    result = subprocess.run([str(BIN / "downpour"), "status", "downpour-x", "--address", cluster],
                            env={**env(), "RAY_AUTH_TOKEN": "not-the-token"}, capture_output=True,
                            text=True, timeout=WAIT_S)
    assert result.returncode == 2 and "refused the token" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_dashboard_fails_fast():
    started = time.time()
    result = downpour("status", "x", "--address", f"http://127.0.0.1:{free_port()}", check=False)
    assert result.returncode == 2 and "nothing answers" in result.stderr
    assert time.time() - started < 60
