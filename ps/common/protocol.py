"""What shards, replicas and the driver say to each other: reply types and a replica's settings.

Version and staleness: a shard's `version` counts the pushes it has applied. A gradient computed on
parameters fetched at version v and applied when the shard is at version v + tau is tau stale.
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np


class PushResult(NamedTuple):
    accepted: bool
    tau: int
    scale: float
    reason: Optional[str] = None


class PushPullReply(NamedTuple):
    """What `push_pull` returns: the shard's state after the push, as `pull` gives it, and the
    push's own result."""
    version: int
    values: np.ndarray
    push: PushResult


@dataclass(frozen=True)
class ReplicaSettings:
    """The part of a job's configuration a model replica reads (TrainConfig.replica_settings)."""
    model: str
    seed: int
    replicas: int           # of the job as started: the default partition is part `id` of these
    batch_size: int
    total_steps: Optional[int]  # steps per replica; None: epochs over the replica's own part
    epochs: int
    n_fetch: int
    n_push: int
    max_inflight: int
    local_lr: float         # the replica's own SGD step between fetches (n_fetch > 1)
    prefetch: bool
    device: str
    timeout_s: float
    event_log: bool         # record fetches for the event log
    transport: str = "ray"  # auto | ray | shm (TrainConfig.transport)
    pipeline: bool = False  # shm: the next fetch does not wait for the own push's result
    rounds: bool = False    # sync, backup: the fetch after a push waits for its round to close
    ssp_bound: Optional[int] = None  # ssp: paced by the job's pacer to this clock gap
    local_steps: Optional[int] = None  # async local SGD: H local steps, then push the delta
    local_optimizer: str = "sgd"       # the replica's own optimizer for those steps (local_lr)
    inject_delay: Optional[str] = None  # ps.common.delays: seconds to sleep after each compute
