"""Specs of the fault-tolerance flags, pure: when to checkpoint (`--checkpoint-every`) and which
actors to kill when (`--inject-faults`), and the injector that decides what is due.

A fault is `ROLE:WHICH@WHEN`: ROLE `replica` or `shard`; WHICH an id or `random` (drawn from the
run's seed); WHEN `30s` (seconds since training started), `40%` (of the run's steps) or `200`
(steps of all replicas together). Progress-based times make an injected run repeatable: the
driver fires a fault at its first poll (about once a second) at or after that point.
"""

import random
import re
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ps.common.errors import UserError

ROLES = ("replica", "shard")
_FAULT = re.compile(r"^(replica|shard):(\d+|random)@(\d+(?:\.\d+)?)(s|%|)$")
_CADENCE = re.compile(r"^(\d+(?:\.\d+)?)(s|)$")


class Cadence(NamedTuple):
    """Checkpoint every `value` seconds (unit "s") or updates (unit "updates"); value 0: only at
    the start and the end of the run."""
    value: float
    unit: str


def parse_cadence(spec: str) -> Cadence:
    text = str(spec).strip()
    m = _CADENCE.match(text)
    if not m:
        raise UserError(f"checkpoint_every is '{spec}': give seconds as 30s, updates as 500, "
                        "or 0 for only the start and the end")
    value = float(m.group(1))
    if m.group(2) == "" and value != int(value):
        raise UserError(f"checkpoint_every is '{spec}': a number of updates is a whole number")
    return Cadence(value, "s" if m.group(2) else "updates")


@dataclass(frozen=True)
class Fault:
    role: str
    which: Optional[int]  # None: a random one of the role, chosen when it fires
    at: float
    unit: str             # "s", "%" or "steps"

    def __str__(self) -> str:
        which = "random" if self.which is None else self.which
        return f"{self.role}:{which}@{self.at:g}{'' if self.unit == 'steps' else self.unit}"


def parse_faults(spec: Optional[str], replicas: int, shards: int) -> list[Fault]:
    """'replica:1@30s,shard:0@50%' -> Faults, in the order given; ids are checked against the job."""
    if spec is None or not str(spec).strip():
        return []
    faults = []
    for item in str(spec).split(","):
        m = _FAULT.match(item.strip())
        if not m:
            raise UserError(f"inject_faults item '{item.strip()}' is not ROLE:WHICH@WHEN; write e.g. "
                            "replica:1@30s, shard:0@50% or replica:random@200")
        role, which, at, unit = m.group(1), m.group(2), float(m.group(3)), m.group(4) or "steps"
        count = replicas if role == "replica" else shards
        if which != "random" and int(which) >= count:
            raise UserError(f"inject_faults item '{item.strip()}': the job has {count} {role}s "
                            f"(ids 0..{count - 1})")
        if unit == "%" and at > 100:
            raise UserError(f"inject_faults item '{item.strip()}': a percentage is 0..100")
        faults.append(Fault(role, None if which == "random" else int(which), at, unit))
    return faults


class FaultInjector:
    """Says which faults are due; the job kills the actors. Each fault fires once."""

    def __init__(self, faults: list[Fault], seed: int):
        self.pending = list(faults)
        self.rng = random.Random(seed)

    def due(self, elapsed_s: float, steps: int, total_steps: int) -> list[Fault]:
        """The faults whose time has come, with `random` ones still to be resolved by `pick`."""
        now = {"s": elapsed_s, "%": 100.0 * steps / max(1, total_steps), "steps": steps}
        fired = [f for f in self.pending if now[f.unit] >= f.at]
        self.pending = [f for f in self.pending if f not in fired]
        return fired

    def pick(self, fault: Fault, candidates: list[int]) -> Optional[int]:
        """The actor a fault kills: its own id if that one can be killed now, a seeded draw for
        `random`; None when there is none (e.g. that replica has already finished)."""
        if fault.which is not None:
            return fault.which if fault.which in candidates else None
        return self.rng.choice(candidates) if candidates else None
