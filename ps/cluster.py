"""Ray at the edge: connect to (or start) Ray, size the actors' resources, pin an actor to this node."""

import logging
import math
import os
import socket
from dataclasses import dataclass
from typing import Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ps.config import TrainConfig
from ps.errors import UserError


def connect(address: Optional[str], metrics_port: Optional[int] = None) -> bool:
    """Joins `address` or starts a local Ray; returns True when this call started Ray (so the job
    shuts it down). An already-initialised Ray (tests, notebooks) is reused as it is."""
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    try:
        ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=True,
                 include_dashboard=False if not address else None,
                 runtime_env=None if address else local_runtime_env(),
                 _metrics_export_port=None if address else metrics_port)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"address {address!r}: cannot connect to Ray ({exc}); check the address, "
                        "that `ray status` works there, and for a `ray start` cluster "
                        "RAY_AUTH_MODE=token with its token in ~/.ray/auth_token") from None
    return True


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


@dataclass(frozen=True)
class Placement:
    replica_cpus: float
    shard_cpus: float
    replica_gpus: float
    threads: int
    # Overlapping a fetch with compute only pays when the replica's core (or GPU) would otherwise
    # idle during the round trip; on shared cores it gains nothing and adds staleness.
    prefetch: bool


def plan_resources(c: TrainConfig, resources: dict) -> Placement:
    """Defaults give each actor an equal share of the cluster's CPUs (`ray.cluster_resources()`),
    at most one; what was asked for explicitly must fit, or the job stops here instead of waiting
    forever for resources."""
    cpus = resources.get("CPU", 0.0)
    share = min(1.0, cpus / (c.replicas + c.shards)) if cpus else 0.0
    replica_cpus = share if c.replica_cpus is None else c.replica_cpus
    shard_cpus = share if c.shard_cpus is None else c.shard_cpus
    needed = c.replicas * replica_cpus + c.shards * shard_cpus
    if needed > cpus + 1e-9:
        raise UserError(f"replica_cpus/shard_cpus ask for {needed:g} CPUs in all "
                        f"({c.replicas} x {replica_cpus:g} + {c.shards} x {shard_cpus:g}) but the "
                        f"cluster has {cpus:g}: lower --replica-cpus/--shard-cpus or add nodes")
    gpus = 1.0 if c.device == "cuda" else 0.0
    if gpus and resources.get("GPU", 0.0) < c.replicas:
        raise UserError(f"device cuda gives each of {c.replicas} replicas a GPU but the cluster has "
                        f"{resources.get('GPU', 0.0):g}: use fewer --replicas or --device cpu")
    threads = c.threads or max(1, int(replica_cpus))
    return Placement(_floor4(replica_cpus), _floor4(shard_cpus), gpus, threads,
                     prefetch=c.prefetch if c.prefetch is not None else (replica_cpus >= 1 or gpus > 0))


def _floor4(x: float) -> float:
    """Ray takes fractional resources to 4 decimals; rounding up could overcommit (3 x 0.6667 > 2)."""
    return math.floor(x * 10_000) / 10_000


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """Pins an actor to the driver's node (the evaluator writes model.pt into the run directory)."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
