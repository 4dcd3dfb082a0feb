"""Ray at the edge: connect to (or start) Ray with our transport settings, find endpoints, pin an actor to this node."""

import logging
import os
import socket
from typing import Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ps.common.errors import UserError

# Objects up to this size travel inside the actor call instead of through the object store: shard
# pieces of 100K-250K floats then skip the raylet (1.55x the pushes per second at 100K floats on a
# 2-core machine); from about 1 MiB on, the object store is faster (docs/design.md, "Transport").
INLINE_OBJECT_BYTES = 1 << 20
# Ray 2.60 logs at every local start whether it turned token auth on; for a Ray of our own that
# only this job uses, that is noise before our first line (a cluster's is the cluster's business).
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def system_config() -> dict:
    """Ray settings for a Ray this process starts; a `ray start` cluster takes the same with
    `--system-config` (README, "Running on a cluster")."""
    return {"max_direct_call_object_size": INLINE_OBJECT_BYTES}


def connect(address: Optional[str], metrics_port: Optional[int] = None) -> bool:
    """Joins `address` or starts a local Ray; returns True when this call started Ray (so the job
    shuts it down). An already-initialised Ray (tests, notebooks) is reused as it is."""
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    else:
        logging.getLogger(AUTH_LOGGER).setLevel(logging.ERROR)
    try:
        # "local": a new Ray of our own, even where a `ray start` cluster runs on this machine
        ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=True,
                 include_dashboard=False if not address else None,
                 runtime_env=None if address else local_runtime_env(),
                 _metrics_export_port=None if address else metrics_port,
                 _system_config=None if address else system_config())
    except Exception as exc:  # Ray raises many kinds here (RpcError, TimeoutError, plain Exception)
        why = first_line(exc)
        if not address:
            raise UserError(f"could not start a local Ray ({why}); if the machine is busy, retry, "
                            "or start one with `ray start --head` and pass --address auto") from None
        raise UserError(f"address {address!r}: cannot connect to Ray ({why}); check the address, "
                        "that `ray status` works there, and for a `ray start` cluster "
                        "RAY_AUTH_MODE=token with its token in ~/.ray/auth_token") from None
    return True


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def metrics_endpoints() -> list[str]:
    """The Prometheus endpoint of every live node: each exports the metrics of its own actors."""
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT nobody answers on would make ray.init wait for minutes: fail in seconds instead."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return  # 'auto' and other forms are resolved by Ray itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"address {address!r}: nothing answers at {host}:{port} ({exc}); "
                        "start the cluster (`ray start --head`) or fix --address") from None


def local_runtime_env() -> dict:
    """Workers of a local Ray import user plug-ins (`--model pkg.mod:fn`) from where the driver
    does: the current directory and PYTHONPATH. A cluster's nodes need them installed instead."""
    paths = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """Pins an actor to the driver's node (the evaluator writes model.pt into the run directory)."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
