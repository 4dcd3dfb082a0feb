"""Step accounting of a job, pure: how many steps, pushes and epochs a run plans, and how a
rescale shares out what is left.

An epoch is one pass of every replica over its own partition: `steps_per_epoch` counts the steps
of all replicas together. The budget is fixed when the job starts (steps or epochs of the replicas
as started) and stays the same however the job is scaled. How it is shared (--budget): `replica`,
each replica its own equal share; `job`, the replicas together, by their speeds (`balance`).
"""

from dataclasses import dataclass
from typing import Optional


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class StepBudget:
    train_samples: int
    replicas: int          # as the job started
    batch_size: int
    n_push: int
    steps: Optional[int]   # per replica, or None: `epochs` passes
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        """Steps of all replicas together in one epoch (each replica over its own partition)."""
        return (self.train_samples // self.replicas // self.batch_size) * self.replicas

    @property
    def steps_per_replica(self) -> int:
        """Steps each replica does in the job as started."""
        return self.steps or self.epochs * (self.steps_per_epoch // self.replicas)

    @property
    def total_steps(self) -> int:
        """Steps of all replicas together that the run does, however it is scaled."""
        return self.steps_per_replica * self.replicas

    @property
    def planned_updates(self) -> int:
        """Pushes each shard receives if nothing is rejected: what a schedule measures progress
        against (a replica also pushes its last, partial round)."""
        return ceil_div(self.steps_per_replica, self.n_push) * self.replicas

    @property
    def planned_epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch if self.steps else float(self.epochs)

    def epochs_of(self, steps: int) -> float:
        return steps / self.steps_per_epoch

    def samples_of(self, steps: int) -> int:
        return steps * self.batch_size


@dataclass(frozen=True)
class RescalePlan:
    members: list  # replica ids of the new generation: members[k] trains part k of len(members)
    drop: list     # replica ids that stop after their current step
    new: list      # the members to start (the others go on, reassigned)
    share: int     # steps each member does from now on

    @property
    def keep(self) -> list:
        return [i for i in self.members if i not in self.new]

    def updates_left(self, n_push: int) -> int:
        """Pushes each shard is still owed by the new generation. An approximation to within one
        push per replica stopped mid-round: it still pushes its partial round."""
        return ceil_div(self.share, n_push) * len(self.members)


def rescale_plan(training: list[int], steps_left: int, n: int, next_id: int) -> "RescalePlan | str":
    """Who stays, who goes, who starts, and each one's share of the steps left; or why not.
    `training`: ids of the replicas still short of their steps, in order."""
    if n < 1:
        return f"replicas {n}: a job needs 1 or more"
    if n == len(training):
        return f"the job already has {n} replicas"
    if steps_left < n:
        return "the run is about to end: nothing left to share out"
    new = list(range(next_id, next_id + max(0, n - len(training))))
    return RescalePlan(training[:n] + new, training[n:], new, ceil_div(steps_left, n))


def replace_refused(plan: RescalePlan, refused: list[int], next_id: int) -> RescalePlan:
    """A kept replica that refused its new share (its loop had just ended) hands its part to a
    new replica: the parts and shares stay as planned, only who trains them changes."""
    substitute = {i: next_id + k for k, i in enumerate(refused)}
    members = [substitute.get(i, i) for i in plan.members]
    return RescalePlan(members, plan.drop, plan.new + list(substitute.values()), plan.share)


def balance(rows: list[dict], steps_left: int) -> dict[int, int]:
    """--budget job: each running replica's new end (its total_steps), the steps left shared in
    proportion to the replicas' speeds so that they finish together. `rows`: progress rows
    (replica, step, t_first, t_last) of the replicas still training. A replica with no speed yet
    is taken at the others' mean (or all at one, when none has one)."""
    speeds = {r["replica"]: _speed(r) for r in rows}
    known = [s for s in speeds.values() if s]
    default = sum(known) / len(known) if known else 1.0
    speeds = {i: s or default for i, s in speeds.items()}
    left, total = max(0, steps_left), sum(speeds.values())
    exact = {i: left * s / total for i, s in speeds.items()}
    shares = {i: int(x) for i, x in exact.items()}
    # largest remainders first, ties by id: the shares add up to exactly the steps left
    by_remainder = sorted(exact, key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[:left - sum(shares.values())]:
        shares[i] += 1
    return {r["replica"]: r["step"] + shares[r["replica"]] for r in rows}


def _speed(row: dict) -> float:
    """Steps per second over the replica's run so far; 0 when it has none yet."""
    if not row.get("step") or row.get("t_first") is None:
        return 0.0
    span = row["t_last"] - row["t_first"]
    return row["step"] / span if span > 0 else 0.0
