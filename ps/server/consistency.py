"""Consistency modes: when a shard turns the gradients it receives into updates. Pure: no Ray.

- `async` (Dean et al. 2012, Downpour): every gradient is applied when it arrives.
- `softsync:n=K` (Zhang, Gupta, Lian, Liu 2016, n-softsync): a shard applies the average of
  c = max(1, N // K) gradients (N replicas), each scaled by its own rule factor first, so the
  staleness averages about K. `softsync:c=C` asks for C gradients per update directly: `c=1` is
  async, `n=N` too.
- `sync` (hardsync): c = N, every gradient of a round computed on the same version (a replica's
  next fetch waits for the update its gradient went into): single-process SGD with batch N*B.
- `backup:b=K` (Chen et al. 2016, backup workers): sync over the first N - K gradients computed
  on the round's version; a gradient that arrives after its round closed is dropped and counted
  (`late`), never applied.
- `ssp:bound=S` (Ho et al. 2013, stale synchronous parallel): updates as async; a replica whose
  clock (steps done) runs more than S ahead of the slowest replica's waits (ps.server.pacer).
- `hogwild` (Niu et al. 2011): a shard applies pushes concurrently, without a lock and without
  ordering (plain SGD only).

Zhang et al.'s n counts the staleness, not the gradients per update: `softsync:n=1` averages all
N gradients (tau <= 1 or 2), `softsync:n=N` is async. The issue that asked for this mode wrote
"the average of K gradients" and "n = 1 equals async", which is the c form: both are offered.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ps.common.errors import UserError
from ps.common.specs import parse_spec

MODES = ("async", "softsync", "sync", "backup", "ssp", "hogwild")
_PARAMS = {"async": (), "softsync": ("n", "c"), "sync": (), "backup": ("b",), "ssp": ("bound",),
           "hogwild": ()}
_EXAMPLE = {"softsync": "softsync:n=4", "backup": "backup:b=1", "ssp": "ssp:bound=3"}


@dataclass(frozen=True)
class Consistency:
    mode: str = "async"
    n: Optional[int] = None      # softsync: the staleness asked for (c = N // n)
    c: Optional[int] = None      # softsync: gradients per update, given directly
    backups: int = 0             # backup: gradients of a round that are not waited for
    bound: Optional[int] = None  # ssp: clock gap allowed

    def per_update(self, replicas: int) -> int:
        """Gradients averaged into one update when the job has `replicas` replicas."""
        if self.mode == "softsync":
            return self.c if self.c is not None else max(1, replicas // self.n)
        if self.mode == "sync":
            return replicas
        if self.mode == "backup":
            return max(1, replicas - self.backups)
        return 1

    def updates(self, pushes: int, replicas: int) -> int:
        """Updates a shard makes from `pushes` gradients (what a schedule plans over)."""
        per_round = replicas if self.rounds else self.per_update(replicas)
        return -(-pushes // per_round)

    @property
    def rounds(self) -> bool:
        """Every gradient of an update was computed on the same version: a replica's next fetch
        waits for the update, and a gradient from an older version is late."""
        return self.mode in ("sync", "backup")

    @property
    def text(self) -> str:
        params = {"n": self.n, "c": self.c, "b": self.backups if self.mode == "backup" else None,
                  "bound": self.bound}
        shown = ",".join(f"{k}={v}" for k, v in params.items() if v is not None)
        return f"{self.mode}:{shown}" if shown else self.mode


ASYNC = Consistency()


def parse_consistency(spec: str, replicas: int) -> Consistency:
    """'--consistency' text for a job of `replicas` replicas; every problem is a UserError."""
    name, params = parse_spec(spec, "consistency")
    if name not in MODES:
        raise UserError(f"consistency is '{name}': choose one of {', '.join(MODES)} "
                        "(e.g. softsync:n=4, backup:b=1, ssp:bound=3)")
    allowed = _PARAMS[name]
    for key, value in params.items():
        if key not in allowed:
            which = ", ".join(allowed) if allowed else "none"
            raise UserError(f"consistency '{name}' has no parameter '{key}' (its parameters: {which})")
        if value != int(value):
            raise UserError(f"consistency '{name}': {key}={value:g} must be a whole number")
    ints = {k: int(v) for k, v in params.items()}
    mode = Consistency(name, n=ints.get("n"), c=ints.get("c"), backups=ints.get("b", 0),
                       bound=ints.get("bound"))
    _check(mode, replicas)
    return mode


def _check(mode: Consistency, replicas: int) -> None:
    example = _EXAMPLE.get(mode.mode)
    if mode.mode == "softsync":
        if (mode.n is None) == (mode.c is None):
            raise UserError(f"consistency softsync needs one of n= (staleness, Zhang et al.) or c= "
                            f"(gradients per update): e.g. {example}")
        key, value = ("n", mode.n) if mode.n is not None else ("c", mode.c)
        if not 1 <= value <= replicas:
            raise UserError(f"consistency softsync: {key}={value} is out of range: with {replicas} "
                            f"replicas give {key}=1..{replicas}")
    if mode.mode == "backup" and not 1 <= mode.backups < replicas:
        raise UserError(f"consistency backup: b={mode.backups} is out of range: with {replicas} "
                        f"replicas give b=1..{replicas - 1} (b=0 is sync)")
    if mode.mode == "ssp" and (mode.bound is None or mode.bound < 0):
        raise UserError(f"consistency ssp needs bound= 0 or more (clock steps a replica may run "
                        f"ahead of the slowest): e.g. {example}")


class RoundBuffer:
    """The gradients of one update: their sum, each scaled by its push's rule factor, and how
    many there are. Float32, summed in arrival order (the order single-process SGD would not
    have, so sync equals it to float tolerance, not bitwise)."""

    def __init__(self, size: int, per_update: int):
        self.per_update = per_update
        self.total = np.zeros(size, dtype=np.float32)
        self.count = 0
        self.members: set = set()  # replicas with a gradient in the open round

    def add(self, grad: np.ndarray, scale: float, member: Optional[int] = None) -> bool:
        """Adds one gradient (of replica `member`); True when the round is full."""
        self.members.add(member)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow fails the round's step
            if scale == 1.0:
                self.total += grad
            else:
                self.total += np.float32(scale) * grad
        self.count += 1
        return self.count >= self.per_update

    def mean(self) -> np.ndarray:
        return self.total / np.float32(self.count)

    def clear(self) -> None:
        self.total[:] = 0
        self.count = 0
        self.members.clear()
