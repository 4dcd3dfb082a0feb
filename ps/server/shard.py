"""ParameterShard: one parameter-server shard (a plain class; the job wraps it with ray.remote).

It holds a float32 slice of the flat parameters, a server optimizer and a version counter, and
applies pushes one at a time (a Ray actor runs one method at a time, so no lock is needed).
"""

import math
import time
from collections import Counter
from typing import Optional

import numpy as np

from ps.common import schema
from ps.common.protocol import PushPullReply, PushResult
from ps.server.metrics import ShardMetrics
from ps.server.optimizers import OptimizerSpec, ServerOptimizer
from ps.server.rules import Rule, StalenessContext, make_rule
from ps.server.schedules import get_schedule


class ParameterShard:
    def __init__(self, shard_id: int, initial: np.ndarray, optimizer: OptimizerSpec, lr: float,
                 lr_rule: "str | Rule", lr_schedule: str = "constant", planned_updates: int = 1,
                 metrics_run: Optional[str] = None, record_events: bool = True):
        self.shard_id = shard_id
        self.optimizer = ServerOptimizer(optimizer, np.asarray(initial, dtype=np.float32).ravel(), lr)
        self.rule = lr_rule if isinstance(lr_rule, Rule) else make_rule(lr_rule)
        self.schedule, self.planned_updates = get_schedule(lr_schedule), max(1, planned_updates)
        self.version = 0        # number of updates applied so far
        self._tau_sum = 0       # over accepted pushes, for the running mean a rule may use
        self.tau_counts = Counter()  # tau -> accepted pushes: the summary's staleness, log or no log
        self.rejected = Counter()  # reason -> count
        self._events: list = []    # push event tuples since the last drain (see ps.common.schema)
        self.record_events = record_events
        # Ray metrics under this run's name; None in-process (tests) or when the user turned them off
        self.metrics = ShardMetrics(metrics_run, shard_id) if metrics_run else None

    @property
    def size(self) -> int:
        return self.optimizer.param.numel()

    def pull(self) -> tuple[int, np.ndarray]:
        """Returns (version, values). Through Ray the values arrive as a snapshot taken at this
        version; called in-process they are the live buffer, so copy before the next push."""
        return self.version, self.optimizer.values

    def push(self, grad: np.ndarray, fetched_version: int, replica_id: int) -> PushResult:
        """Applies one gradient computed on parameters of `fetched_version`; never raises for a bad
        gradient: it is rejected, counted and logged, and the parameters stay bitwise unchanged.
        Through Ray the caller need not wait for it: pushes from one replica apply in order."""
        tau = self.version - fetched_version if isinstance(fetched_version, (int, np.integer)) else -1
        reason, norm = self._check(grad, fetched_version)
        decision = None
        if reason is None:
            decision = self.rule.decide(StalenessContext(
                tau=tau, mean_tau=(self._tau_sum + tau) / (self.version + 1), version=self.version))
            reason = None if decision.accept else (decision.reason or "rejected by lr rule")
        scale = decision.scale if decision else 0.0
        if self.record_events:
            self._events.append((time.time(), replica_id, fetched_version, self.version, tau, scale,
                                 reason is None, reason, norm))
        if reason is not None:
            self.rejected[reason.split(":")[0]] += 1
            if self.metrics:
                self.metrics.rejected()
            return PushResult(False, tau, scale, reason)
        self.optimizer.step(grad, scale * self.schedule(self.version / self.planned_updates))
        self.version += 1
        self._tau_sum += tau
        self.tau_counts[tau] += 1
        if self.metrics:
            self.metrics.accepted(tau)
        return PushResult(True, tau, scale)

    def push_pull(self, grad: np.ndarray, fetched_version: int, replica_id: int) -> PushPullReply:
        """`push`, then `pull`, in one call: a replica that pushes and fetches at the same step
        pays one round trip per shard instead of two."""
        result = self.push(grad, fetched_version, replica_id)
        return PushPullReply(*self.pull(), result)

    def _check(self, grad, fetched_version) -> tuple[Optional[str], float]:
        """(reason to reject or None, gradient L2 norm). Cheap: one dot product on the good path."""
        if not isinstance(grad, np.ndarray):
            return f"type: gradient is {type(grad).__name__}, expected a numpy array", math.nan
        if grad.dtype != np.float32:
            return f"dtype: gradient is {grad.dtype}, expected float32", math.nan
        if grad.shape != (self.size,):
            return f"shape: gradient has shape {grad.shape}, expected ({self.size},)", math.nan
        if not isinstance(fetched_version, (int, np.integer)) or not 0 <= fetched_version <= self.version:
            return (f"version: fetched_version {fetched_version!r} is not in 0..{self.version}",
                    math.nan)
        with np.errstate(over="ignore"):
            norm = math.sqrt(float(np.dot(grad, grad)))
        if not math.isfinite(norm):
            if not np.isfinite(grad).all():
                return "nonfinite: gradient holds NaN or Inf", math.nan
            norm = float(np.linalg.norm(grad.astype(np.float64)))  # finite, but its square overflowed
        return None, norm

    def stats(self) -> dict:
        """Admin verb, cheap and non-mutating: version, counts and sizes for progress and summaries."""
        return {"shard": self.shard_id, "version": self.version, "size": self.size,
                "rejected": dict(self.rejected), "tau_counts": dict(self.tau_counts),
                "planned_updates": self.planned_updates,
                "optimizer_state_bytes": self.optimizer.state_bytes()}

    def replan(self, updates_left: int) -> int:
        """Admin verb, when the job is scaled: the schedule now ends `updates_left` updates from
        here (its progress so far stands). Returns the new planned total."""
        self.planned_updates = max(1, self.version + max(0, int(updates_left)))
        return self.planned_updates

    def drain_events(self) -> list[dict]:
        """Push events since the last call, as event-log records; the job calls this about once a
        second, which is also when the counters and the version gauge reach Ray's metrics."""
        batch, self._events = self._events, []
        if self.metrics:
            self.metrics.flush(self.version)
        return [schema.push_record(self.shard_id, *e) for e in batch]
