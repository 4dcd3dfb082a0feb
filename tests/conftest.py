"""Shared fixtures: one local Ray for the whole test session, started only by tests that need it."""

import os
import socket
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion-mnist"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from ps.driver.ray_session import system_config

    # Workers import the test plug-ins (tests/failing_plugins.py) the way a user's would be found.
    tests_dir = str(Path(__file__).resolve().parent)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
    # The transport settings of the Ray a job starts; a known Prometheus port, and metrics shipped every second (Ray's default is slower), so a
    # test can scrape a running job's metrics.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": env}, _metrics_export_port=free_port(),
             _system_config={**system_config(), "metrics_report_interval_ms": 1000})
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The real Fashion-MNIST files, found as `downpour train` finds them without --data-dir
    (DOWNPOUR_DATA, which CI sets, then the cache and Debian's folder), never downloaded; else
    the shared copy beside the repo; else the real-data tests skip."""
    from replicas.data import DataError
    from replicas.fashion_mnist import find_fashion_mnist

    try:
        return find_fashion_mnist(download=False)
    except DataError as exc:
        if os.environ.get("DOWNPOUR_DATA") or not SHARED_DATA.is_dir():
            pytest.skip(f"{exc}")
    try:
        return find_fashion_mnist(SHARED_DATA, download=False)
    except DataError as exc:
        pytest.skip(f"{exc}")


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    """Every run removes its shared-memory files on every exit path: after the whole session none
    of a driver of this session (this process, or a `downpour` process that has ended) is left."""
    from ps.common import shm

    before = set(Path(shm.shm_dir()).glob(f"{shm.PREFIX}*"))
    yield
    left = [p for p in set(Path(shm.shm_dir()).glob(f"{shm.PREFIX}*")) - before
            if _ours(p.name[len(shm.PREFIX):].split("-", 1)[0])]
    assert not left, f"shared-memory files left behind: {sorted(map(str, left))[:5]}"


def _ours(pid: str) -> bool:
    """This process, or one that has ended (the CLI tests' drivers); not another live program."""
    from ps.common.rundir import pid_alive

    return not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid))
