"""Placement: the Ray resources each role asks for, sized from the cluster, checked before any actor starts."""

import math
from dataclasses import dataclass, field
from typing import Optional

import ray

from ps.common.config import TrainConfig
from ps.common.errors import UserError
from ps.common.resources import check_fits, parse_resources


@dataclass(frozen=True)
class Placement:
    replica_cpus: float
    shard_cpus: float
    replica_gpus: float
    threads: int
    # Overlapping a fetch with compute only pays when the replica's core (or GPU) would otherwise
    # idle during the round trip; on shared cores it gains nothing and adds staleness.
    prefetch: bool
    replica_custom: dict = field(default_factory=dict)  # custom resources, e.g. {"replica": 1}
    shard_custom: dict = field(default_factory=dict)
    shard_strategy: str = "SPREAD"  # Ray scheduling strategy of the shards

    def replica_options(self) -> dict:
        return {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus,
                "resources": self.replica_custom or None}

    def shard_options(self) -> dict:
        return {"num_cpus": self.shard_cpus, "resources": self.shard_custom or None,
                "scheduling_strategy": self.shard_strategy}


def plan_resources(c: TrainConfig, resources: dict, nodes: Optional[list[dict]] = None) -> Placement:
    """Defaults give each actor an equal share of the cluster's CPUs (`ray.cluster_resources()`),
    at most one; what was asked for explicitly must fit, or the job stops here instead of waiting
    forever for resources. `nodes`: each live node's resources, for the per-node check."""
    check_memory(c.replicas + c.shards, resources.get("memory"))
    replica_ask = parse_resources(c.replica_resources, "replica_resources") if c.replica_resources else {}
    shard_ask = parse_resources(c.shard_resources, "shard_resources") if c.shard_resources else {}
    cpus = resources.get("CPU", 0.0)
    if not cpus:
        raise UserError("the cluster has no CPUs for replicas and shards: start its nodes with "
                        "CPUs (`ray start --num-cpus N`)")
    share = min(1.0, cpus / (c.replicas + c.shards))
    replica_cpus = replica_ask.pop("CPU", share if c.replica_cpus is None else c.replica_cpus)
    shard_cpus = shard_ask.pop("CPU", share if c.shard_cpus is None else c.shard_cpus)
    needed = c.replicas * replica_cpus + c.shards * shard_cpus
    if needed > cpus + 1e-9:
        raise UserError(f"replicas and shards ask for {needed:g} CPUs in all "
                        f"({c.replicas} x {replica_cpus:g} + {c.shards} x {shard_cpus:g}) but the "
                        f"cluster has {cpus:g}: ask for fewer CPUs per actor or add nodes")
    gpus = replica_ask.pop("GPU", 1.0 if c.device == "cuda" else 0.0)
    if shard_ask.pop("GPU", 0.0):
        raise UserError("shard_resources asks for a GPU: shards update on the CPU; drop GPU= there")
    if gpus and c.device == "cpu":
        raise UserError("replica_resources gives replicas a GPU but device is cpu: use --device auto or cuda")
    if gpus and resources.get("GPU", 0.0) < c.replicas * gpus:
        raise UserError(f"{c.replicas} replicas with {gpus:g} GPU each need {c.replicas * gpus:g} GPUs "
                        f"but the cluster has {resources.get('GPU', 0.0):g}: use fewer --replicas "
                        "or --device cpu")
    replica_cpus, shard_cpus = _floor4(replica_cpus), _floor4(shard_cpus)
    if nodes is not None:
        check_fits("replica", c.replicas, {"CPU": replica_cpus, "GPU": gpus, **replica_ask}, nodes)
        check_fits("shard", c.shards, {"CPU": shard_cpus, **shard_ask}, nodes)
    threads = c.threads or max(1, int(replica_cpus))
    return Placement(replica_cpus, shard_cpus, gpus, threads,
                     prefetch=c.prefetch if c.prefetch is not None else (replica_cpus >= 1 or gpus > 0),
                     replica_custom=replica_ask, shard_custom=shard_ask,
                     shard_strategy="SPREAD" if c.placement == "spread" else "DEFAULT")


# Every replica and shard is a process of its own with torch loaded: about 0.4 GB resident each
# (ModelReplica 406 MiB, ParameterShard 383 MiB, CNN on CPU, measured with `top` on this machine).
ACTOR_BYTES = 400e6


def check_memory(actors: int, memory: Optional[float]) -> None:
    """Refuses a job whose actors cannot all live in the cluster's memory (`--shards 300000`
    would otherwise start creating 300,000 processes)."""
    if memory and actors * ACTOR_BYTES > memory:
        raise UserError(f"{actors} replicas and shards need about {actors * ACTOR_BYTES / 1e9:,.0f} GB "
                        f"(each is a process of about {ACTOR_BYTES / 1e9:.1f} GB) but the cluster has "
                        f"{memory / 1e9:.0f} GB for them: use fewer replicas or shards, or add nodes")


def live_nodes() -> list[dict]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def _floor4(x: float) -> float:
    """Ray takes fractional resources to 4 decimals; rounding up could overcommit (3 x 0.6667 > 2)."""
    return math.floor(x * 10_000) / 10_000
