"""ParameterShard: one parameter-server shard (a plain class; the job wraps it with ray.remote).

It holds a float32 slice of the flat parameters, a server optimizer and a version counter, and
applies pushes one at a time. Its consistency mode (ps.server.consistency) says when gradients
become updates: at once (async), or averaged over a round (softsync, sync, backup). In the round
modes the actor is threaded, so a replica's `pull_newer` can wait for its round to close while
other pushes arrive: one lock keeps every verb to one at a time, as a plain actor is.

Incarnation: a shard recreated from a checkpoint after its actor died is the next incarnation of
that shard. Its version went back to the checkpoint's, so a gradient computed on parameters of an
earlier incarnation has no meaningful staleness: every push carries the incarnation its
parameters came from, and one from another incarnation is rejected as `fenced`.
"""

import contextlib
import functools
import math
import threading
import time
from collections import Counter
from typing import Optional

import numpy as np

from ps.common import schema
from ps.common.protocol import PushPullReply, PushResult
from ps.server.checkpoint import ShardState
from ps.server.consistency import ASYNC, Consistency, RoundBuffer
from ps.server.metrics import ShardMetrics
from ps.server.optimizers import OptimizerSpec, ServerOptimizer
from ps.server.rules import Rule, StalenessContext, make_rule
from ps.server.schedules import get_schedule
from ps.server.transforms import GradientTransform, TransformContext, make_transform

TRANSFORM_KEY = "transform."  # prefix of a transform's state among a checkpoint's optimizer state
HOGWILD_LIMIT = 1e37  # |values| + lr * |grad| below this stays finite in float32 (max 3.4e38)


def serialised(verb):
    """A verb that runs alone (the shard's lock), as every verb of a one-thread actor does."""
    @functools.wraps(verb)
    def locked(self, *args, **kwargs):
        with self._lock:
            return verb(self, *args, **kwargs)
    return locked


class ParameterShard:
    def __init__(self, shard_id: int, initial: np.ndarray, optimizer: OptimizerSpec, lr: float,
                 lr_rule: "str | Rule", lr_schedule: str = "constant", planned_updates: int = 1,
                 metrics_run: Optional[str] = None, record_events: bool = True, *,
                 clip_norm: Optional[float] = None, incarnation: int = 0,
                 state: Optional[ShardState] = None, consistency: Consistency = ASYNC,
                 replicas: int = 1, transform: "str | GradientTransform | None" = None):
        """`state`: continue from a checkpoint (its values replace `initial`); `replicas`: the
        job's, which sets the gradients per update of softsync, sync and backup; `transform`: a
        gradient transform applied before the rule's factor (DC-ASGD, gap-aware)."""
        self.shard_id, self.incarnation, self.clip_norm = shard_id, incarnation, clip_norm
        self._lock = threading.RLock()
        self._advanced = threading.Condition(self._lock)  # notified when the version moves
        self.consistency = consistency
        self.optimizer_spec = optimizer
        self.optimizer = ServerOptimizer(optimizer, np.asarray(initial, dtype=np.float32).ravel(), lr)
        self.rule = lr_rule if isinstance(lr_rule, Rule) else make_rule(lr_rule)
        self.replicas = replicas
        # `planned_updates` counts the pushes the job plans; a round of several is one update
        self.schedule = get_schedule(lr_schedule)
        self.planned_updates = max(1, consistency.updates(planned_updates, replicas))
        self.transform = transform if not isinstance(transform, str) else make_transform(
            transform, self.size)
        self._backups: dict[int, np.ndarray] = {}  # replica -> values it last fetched (transform)
        per_update = consistency.per_update(replicas)
        self.round = RoundBuffer(self.size, per_update) if per_update > 1 or consistency.rounds else None
        self._finished: set[int] = set()  # replicas whose runs ended (the round modes stop waiting)
        self.version = 0        # number of updates applied so far
        self._tau_sum = 0       # over accepted pushes, for the running mean a rule may use
        self.tau_counts = Counter()  # tau -> accepted pushes: the summary's staleness, log or no log
        self.rejected = Counter()  # reason -> count
        self.pushes_from = Counter()  # replica -> pushes that reached this shard, for restarts
        if state is not None:
            self._load(state)
        self._accepted = sum(self.tau_counts.values())
        self._events: list = []    # push event tuples since the last drain (see ps.common.schema)
        self.record_events = record_events
        # Ray metrics under this run's name; None in-process (tests) or when the user turned them off
        self.metrics = ShardMetrics(metrics_run, shard_id) if metrics_run else None

    @property
    def size(self) -> int:
        return self.optimizer.param.numel()

    @serialised
    def pull(self, replica_id: Optional[int] = None) -> tuple[int, np.ndarray]:
        """Returns (version, values). Through Ray the values arrive as a snapshot taken at this
        version; called in-process they are the live buffer, so copy before the next push. In
        the round modes the actor is threaded, so the snapshot is taken here, under the lock."""
        if self.transform is not None and self.transform.needs_backup and replica_id is not None:
            self._backup_for(replica_id)
        values = self.optimizer.values
        return self.version, values.copy() if self.consistency.rounds else values

    @serialised
    def pull_newer(self, version: int, timeout_s: float, replica_id: Optional[int] = None,
                   incarnation: Optional[int] = None) -> tuple[int, np.ndarray]:
        """`pull` once this shard's version is past `version` (the round a replica's gradient
        went into has closed), or after `timeout_s` with the version as it is: the caller
        checks. Only the round modes' threaded actors can wait here. A version of another
        `incarnation` says nothing of this one's rounds (a restore took the version back): no wait."""
        if incarnation is None or incarnation == self.incarnation:
            self._advanced.wait_for(lambda: self.version > version, timeout=timeout_s)
        return self.pull(replica_id)

    def _backup_for(self, replica_id: int) -> None:
        """w_bak of a transform (DC-ASGD): a copy of the values `replica_id` now computes on."""
        kept = self._backups.get(replica_id)
        if kept is None:
            kept = self._backups[replica_id] = np.empty(self.size, dtype=np.float32)
        kept[:] = self.optimizer.values

    def push(self, grad: np.ndarray, fetched_version: int, replica_id: int,
             incarnation: int = 0) -> PushResult:
        """Takes one gradient computed on parameters of `fetched_version` of `incarnation`; never
        raises for a bad gradient: it is rejected, counted and logged, and the parameters and the
        optimizer state stay bitwise unchanged. Through Ray the caller need not wait for it:
        pushes from one replica apply in order (the round modes send one per round)."""
        if self.consistency.mode == "hogwild":
            return self._push_hogwild(grad, fetched_version, replica_id, incarnation)
        return self._push(grad, fetched_version, replica_id, incarnation)

    @serialised
    def _push(self, grad, fetched_version, replica_id, incarnation) -> PushResult:
        self.pushes_from[replica_id] += 1
        reason, norm = self._check(grad, fetched_version, incarnation)
        tau = self._tau(fetched_version, incarnation)
        if reason is None and self.consistency.rounds and tau != 0:
            reason = (f"late: computed on version {fetched_version}, its round closed (the shard "
                      f"is at version {self.version})")
        decision = None
        if reason is None:
            decision = self.rule.decide(StalenessContext(
                tau=tau, mean_tau=(self._tau_sum + tau) / (self._accepted + 1), version=self.version))
            reason = None if decision.accept else (decision.reason or "rejected by lr rule")
        scale = decision.scale if decision else 0.0
        if reason is None and self.transform is not None:
            grad, norm = self._transformed(grad, norm, replica_id, tau)
        version_before = self.version
        if reason is None and not self._take(grad, norm, scale, replica_id):
            reason = ("overflow: this update would make parameters non-finite: lower --lr or "
                      "set --clip-norm")
        if self.record_events:
            self._events.append((time.time(), replica_id, fetched_version, version_before, tau,
                                 scale, reason is None, reason, norm))
        if reason is not None:
            self.rejected[reason.split(":")[0]] += 1
            if self.metrics:
                self.metrics.rejected()
            return PushResult(False, tau, scale, reason)
        self._tau_sum += tau
        self._accepted += 1
        self.tau_counts[tau] += 1
        if self.metrics:
            self.metrics.accepted(tau)
        return PushResult(True, tau, scale)

    def _push_hogwild(self, grad, fetched_version, replica_id, incarnation) -> PushResult:
        """Hogwild! (Niu et al. 2011): the checks and counts under the lock, the update outside
        it, at once with other pushes (plain SGD in place; numpy lets go of the GIL while it
        writes). An update that could overflow is rejected before it starts, since one that ran
        cannot be undone among concurrent writers."""
        with self._lock:
            self.pushes_from[replica_id] += 1
            reason, norm = self._check(grad, fetched_version, incarnation)
            tau = self._tau(fetched_version, incarnation)
            scale, lr = 0.0, 0.0
            if reason is None:
                decision = self.rule.decide(StalenessContext(
                    tau=tau, mean_tau=(self._tau_sum + tau) / (self._accepted + 1),
                    version=self.version))
                reason = None if decision.accept else (decision.reason or "rejected by lr rule")
                scale = decision.scale
                if self.clip_norm is not None and norm > self.clip_norm:
                    grad, norm = grad * np.float32(self.clip_norm / norm), self.clip_norm
                lr = self.optimizer.lr * scale * self.schedule(self.version / self.planned_updates)
            values = self.optimizer.values
            if reason is None and not lr * norm + float(np.abs(values).max()) < HOGWILD_LIMIT:
                reason = "overflow: this update could make parameters non-finite: lower --lr or set --clip-norm"
            if self.record_events:
                self._events.append((time.time(), replica_id, fetched_version, self.version, tau,
                                     scale, reason is None, reason, norm))
            if reason is not None:
                self.rejected[reason.split(":")[0]] += 1
                return PushResult(False, tau, scale, reason)
            self.version += 1
            self._tau_sum += tau
            self._accepted += 1
            self.tau_counts[tau] += 1
        values -= np.float32(lr) * grad  # concurrently with other pushes: the point of Hogwild!
        return PushResult(True, tau, scale)

    def push_pull(self, grad: np.ndarray, fetched_version: int, replica_id: int,
                  incarnation: int = 0) -> PushPullReply:
        """`push`, then `pull`, in one call: a replica that pushes and fetches at the same step
        pays one round trip per shard instead of two. One verb under the lock, but Hogwild's
        update, which runs beside the others."""
        held = contextlib.nullcontext() if self.consistency.mode == "hogwild" else self._lock
        with held:
            result = self.push(grad, fetched_version, replica_id, incarnation)
            return PushPullReply(*self.pull(replica_id), result)

    def _tau(self, fetched_version, incarnation) -> int:
        """Staleness of a push, or -1 where none is defined (no valid version, another incarnation)."""
        valid = isinstance(fetched_version, (int, np.integer)) and 0 <= fetched_version <= self.version
        return int(self.version - fetched_version) if valid and incarnation == self.incarnation else -1

    def _take(self, grad: np.ndarray, norm: float, scale: float, replica_id: int) -> bool:
        """Applies the gradient, or adds it to the open round and applies the round's mean when
        it is full; False if the update was undone (the round's gradients are then dropped)."""
        if self.clip_norm is not None and norm > self.clip_norm:
            grad, norm = grad * np.float32(self.clip_norm / norm), self.clip_norm
        if self.round is None:
            return self._step(grad, scale, norm)
        self.round.add(grad, scale, replica_id)
        return self._close_round() if self.round.count >= self._round_size() else True

    def _round_size(self) -> int:
        """Gradients the open round waits for: per_update, less the finished replicas that have
        no gradient in it (a round never waits for a replica that will not push again)."""
        if not self._finished:
            return self.round.per_update
        gone = len(self._finished - self.round.members)
        return max(1, min(self.round.per_update, self.replicas - gone))

    def _close_round(self) -> bool:
        try:
            return self._step(self.round.mean(), 1.0)
        finally:
            self.round.clear()

    def _step(self, grad: np.ndarray, scale: float, norm: Optional[float] = None) -> bool:
        """One optimizer step (`norm`: the gradient's, if known); the version moves (and round
        waiters wake) if it is kept."""
        if not self.optimizer.step(grad, scale, self.schedule(self.version / self.planned_updates), norm):
            return False
        self.version += 1
        self._advanced.notify_all()
        return True

    def _transformed(self, grad: np.ndarray, norm: float, replica_id: int,
                     tau: int) -> tuple[np.ndarray, float]:
        """The transform's gradient and its norm; a non-finite result keeps the gradient as sent."""
        out = self.transform.apply(grad, self.optimizer.values, self._backups.get(replica_id),
                                   TransformContext(tau=tau, replica=replica_id, version=self.version))
        if out is grad:
            return grad, norm
        with np.errstate(over="ignore", invalid="ignore"):
            out_norm = math.sqrt(float(np.dot(out, out)))
        return (out, out_norm) if math.isfinite(out_norm) else (grad, norm)

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

    @serialised
    def stats(self) -> dict:
        """Admin verb, cheap and non-mutating: version, counts and sizes for progress and summaries."""
        return {"shard": self.shard_id, "version": self.version, "size": self.size,
                "rejected": dict(self.rejected), "tau_counts": dict(self.tau_counts),
                "planned_updates": self.planned_updates, "incarnation": self.incarnation,
                "pushes_from": dict(self.pushes_from),
                "optimizer_state_bytes": self.optimizer.state_bytes(),
                "consistency": self.consistency.text,
                "round": None if self.round is None else {"per_update": self.round.per_update,
                                                          "open": self.round.count},
                "transform_state_bytes": self._transform_bytes()}

    def _transform_bytes(self) -> int:
        """What the gradient transform holds: its own state and the replicas' backup copies."""
        if self.transform is None:
            return 0
        return self.transform.state_bytes() + sum(b.nbytes for b in self._backups.values())

    @serialised
    def export_state(self) -> ShardState:
        """Admin verb: everything needed to continue from here (a checkpoint), as copies. Through
        Ray it is taken between two pushes, so values, state and version agree."""
        spec = self.optimizer_spec
        return ShardState(
            shard=self.shard_id, version=self.version, incarnation=self.incarnation,
            planned_updates=self.planned_updates, values=self.optimizer.values.copy(),
            optim={**self.optimizer.export_state(), **self._transform_state()},
            counters={"tau_sum": self._tau_sum, "tau_counts": dict(self.tau_counts),
                      "rejected": dict(self.rejected), "pushes_from": dict(self.pushes_from)},
            meta={"optimizer": {"name": spec.name, "params": dict(spec.params)}})

    def _transform_state(self) -> dict:
        """The transform's own state (DC-ASGD's mean square) beside the optimizer's; the replicas'
        backup copies are not kept: after a restore each replica fetches anew."""
        if self.transform is None:
            return {}
        return {TRANSFORM_KEY + k: np.asarray(v) for k, v in self.transform.export_state().items()}

    def _load(self, state: ShardState) -> None:
        want = {"name": self.optimizer_spec.name, "params": dict(self.optimizer_spec.params)}
        if state.meta.get("optimizer", want) != want:
            raise ValueError(f"shard {self.shard_id}: the checkpoint was written with optimizer "
                             f"{state.meta['optimizer']}, this job uses {want}")
        if state.values.shape != (self.size,):
            raise ValueError(f"shard {self.shard_id}: the checkpoint holds {state.values.size} "
                             f"values, this shard {self.size}")
        optim = {k: v for k, v in state.optim.items() if not k.startswith(TRANSFORM_KEY)}
        self.optimizer.load_state(state.values, optim)
        if self.transform is not None:
            self.transform.load_state({k[len(TRANSFORM_KEY):]: v for k, v in state.optim.items()
                                       if k.startswith(TRANSFORM_KEY)})
        self.version, self.planned_updates = state.version, max(1, state.planned_updates)
        counters = state.counters
        self._tau_sum = counters.get("tau_sum", 0)
        self.tau_counts = Counter(counters.get("tau_counts", {}))
        self.rejected = Counter(counters.get("rejected", {}))
        self.pushes_from = Counter(counters.get("pushes_from", {}))

    @serialised
    def resize(self, replicas: int) -> int:
        """Admin verb, when the job is scaled: the gradients per update of softsync:n, sync and
        backup follow the number of replicas. Returns the new number."""
        self.replicas, self._finished = replicas, set()
        if self.round is not None:
            self.round.per_update = self.consistency.per_update(replicas)
        return self.round.per_update if self.round is not None else 1

    @serialised
    def finished(self, replica_id: int) -> int:
        """Admin verb: `replica_id` ended its run. In sync and backup, rounds stop waiting for it:
        replicas that finish at different times (backup's late ones do) would otherwise leave the
        last rounds of the others unable to close. A round already as full as it now needs to be
        is applied. Returns the gradients the open round now waits for."""
        if not self.consistency.rounds:
            return self.round.per_update if self.round is not None else 1
        self._finished.add(replica_id)
        if self.round.count and self.round.count >= self._round_size():
            self._close_round()
        return self._round_size()

    @serialised
    def replan(self, updates_left: int) -> int:
        """Admin verb, when the job is scaled: the schedule now ends `updates_left` updates from
        here (its progress so far stands). Returns the new planned total."""
        self.planned_updates = max(1, self.version + self.consistency.updates(
            max(0, int(updates_left)), self.replicas))
        return self.planned_updates

    @serialised
    def drain_events(self) -> list[dict]:
        """Push events since the last call, as event-log records; the job calls this about once a
        second, which is also when the counters and the version gauge reach Ray's metrics."""
        batch, self._events = self._events, []
        if self.metrics:
            self.metrics.flush(self.version)
        return [schema.push_record(self.shard_id, *e) for e in batch]
