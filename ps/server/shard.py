"""ParameterShard: one parameter-server shard (a plain class; the job wraps it with ray.remote).

It holds a float32 slice of the flat parameters, a server optimizer and a version counter, and
applies pushes one at a time (a Ray actor runs one method at a time, so no lock is needed).

Incarnation: a shard recreated from a checkpoint after its actor died is the next incarnation of
that shard. Its version went back to the checkpoint's, so a gradient computed on parameters of an
earlier incarnation has no meaningful staleness: every push carries the incarnation its
parameters came from, and one from another incarnation is rejected as `fenced`.
"""

import math
import time
from collections import Counter
from typing import Optional

import numpy as np

from ps.common import schema
from ps.common.protocol import PushPullReply, PushResult
from ps.server.checkpoint import ShardState
from ps.server.metrics import ShardMetrics
from ps.server.optimizers import OptimizerSpec, ServerOptimizer
from ps.server.rules import Rule, StalenessContext, make_rule
from ps.server.schedules import get_schedule


class ParameterShard:
    def __init__(self, shard_id: int, initial: np.ndarray, optimizer: OptimizerSpec, lr: float,
                 lr_rule: "str | Rule", lr_schedule: str = "constant", planned_updates: int = 1,
                 metrics_run: Optional[str] = None, record_events: bool = True, *,
                 clip_norm: Optional[float] = None, incarnation: int = 0,
                 state: Optional[ShardState] = None):
        """`state`: continue from a checkpoint (its values replace `initial`)."""
        self.shard_id, self.incarnation, self.clip_norm = shard_id, incarnation, clip_norm
        self.optimizer_spec = optimizer
        self.optimizer = ServerOptimizer(optimizer, np.asarray(initial, dtype=np.float32).ravel(), lr)
        self.rule = lr_rule if isinstance(lr_rule, Rule) else make_rule(lr_rule)
        self.schedule, self.planned_updates = get_schedule(lr_schedule), max(1, planned_updates)
        self.version = 0        # number of updates applied so far
        self._tau_sum = 0       # over accepted pushes, for the running mean a rule may use
        self.tau_counts = Counter()  # tau -> accepted pushes: the summary's staleness, log or no log
        self.rejected = Counter()  # reason -> count
        self.pushes_from = Counter()  # replica -> pushes that reached this shard, for restarts
        if state is not None:
            self._load(state)
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

    def push(self, grad: np.ndarray, fetched_version: int, replica_id: int,
             incarnation: int = 0) -> PushResult:
        """Applies one gradient computed on parameters of `fetched_version` of `incarnation`; never
        raises for a bad gradient: it is rejected, counted and logged, and the parameters and the
        optimizer state stay bitwise unchanged. Through Ray the caller need not wait for it:
        pushes from one replica apply in order."""
        self.pushes_from[replica_id] += 1
        reason, norm = self._check(grad, fetched_version, incarnation)
        tau = self._tau(fetched_version, incarnation)
        decision = None
        if reason is None:
            decision = self.rule.decide(StalenessContext(
                tau=tau, mean_tau=(self._tau_sum + tau) / (self.version + 1), version=self.version))
            reason = None if decision.accept else (decision.reason or "rejected by lr rule")
        scale = decision.scale if decision else 0.0
        if reason is None and not self._apply(grad, norm, scale):
            reason = ("overflow: this update would make parameters non-finite: lower --lr or "
                      "set --clip-norm")
        if self.record_events:
            self._events.append((time.time(), replica_id, fetched_version, self.version, tau, scale,
                                 reason is None, reason, norm))
        if reason is not None:
            self.rejected[reason.split(":")[0]] += 1
            if self.metrics:
                self.metrics.rejected()
            return PushResult(False, tau, scale, reason)
        self.version += 1
        self._tau_sum += tau
        self.tau_counts[tau] += 1
        if self.metrics:
            self.metrics.accepted(tau)
        return PushResult(True, tau, scale)

    def push_pull(self, grad: np.ndarray, fetched_version: int, replica_id: int,
                  incarnation: int = 0) -> PushPullReply:
        """`push`, then `pull`, in one call: a replica that pushes and fetches at the same step
        pays one round trip per shard instead of two."""
        result = self.push(grad, fetched_version, replica_id, incarnation)
        return PushPullReply(*self.pull(), result)

    def _tau(self, fetched_version, incarnation) -> int:
        """Staleness of a push, or -1 where none is defined (no valid version, another incarnation)."""
        valid = isinstance(fetched_version, (int, np.integer)) and 0 <= fetched_version <= self.version
        return int(self.version - fetched_version) if valid and incarnation == self.incarnation else -1

    def _apply(self, grad: np.ndarray, norm: float, scale: float) -> bool:
        """One optimizer step, the gradient clipped to --clip-norm first; False if it was undone."""
        if self.clip_norm is not None and norm > self.clip_norm:
            grad = grad * np.float32(self.clip_norm / norm)
        return self.optimizer.step(grad, scale * self.schedule(self.version / self.planned_updates))

    def _check(self, grad, fetched_version, incarnation) -> tuple[Optional[str], float]:
        """(reason to reject or None, gradient L2 norm). Cheap: one dot product on the good path."""
        if incarnation != self.incarnation:
            return (f"fenced: computed on incarnation {incarnation!r}, this shard is incarnation "
                    f"{self.incarnation}", math.nan)
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
                "planned_updates": self.planned_updates, "incarnation": self.incarnation,
                "pushes_from": dict(self.pushes_from),
                "optimizer_state_bytes": self.optimizer.state_bytes()}

    def export_state(self) -> ShardState:
        """Admin verb: everything needed to continue from here (a checkpoint), as copies. Through
        Ray it is taken between two pushes, so values, state and version agree."""
        spec = self.optimizer_spec
        return ShardState(
            shard=self.shard_id, version=self.version, incarnation=self.incarnation,
            planned_updates=self.planned_updates, values=self.optimizer.values.copy(),
            optim=self.optimizer.export_state(),
            counters={"tau_sum": self._tau_sum, "tau_counts": dict(self.tau_counts),
                      "rejected": dict(self.rejected), "pushes_from": dict(self.pushes_from)},
            meta={"optimizer": {"name": spec.name, "params": dict(spec.params)}})

    def _load(self, state: ShardState) -> None:
        want = {"name": self.optimizer_spec.name, "params": dict(self.optimizer_spec.params)}
        if state.meta.get("optimizer", want) != want:
            raise ValueError(f"shard {self.shard_id}: the checkpoint was written with optimizer "
                             f"{state.meta['optimizer']}, this job uses {want}")
        if state.values.shape != (self.size,):
            raise ValueError(f"shard {self.shard_id}: the checkpoint holds {state.values.size} "
                             f"values, this shard {self.size}")
        self.optimizer.load_state(state.values, state.optim)
        self.version, self.planned_updates = state.version, max(1, state.planned_updates)
        counters = state.counters
        self._tau_sum = counters.get("tau_sum", 0)
        self.tau_counts = Counter(counters.get("tau_counts", {}))
        self.rejected = Counter(counters.get("rejected", {}))
        self.pushes_from = Counter(counters.get("pushes_from", {}))

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
