"""The SSP clock table in shared memory, for a job whose replicas all run on one machine (no Ray).

Each replica writes its own clock (steps done and acknowledged by every shard) into its row and
reads the slowest clock of the replicas still training: a report is a store, a check a scan of
a few kilobytes, where the pacer actor (ps/server/pacer.py) costs a Ray call each. The rules are
the pacer's: the job's replicas start at clock 0, one that joins later starts at the slowest
clock, a clock never goes back, and a retired replica (finished or dead) holds no one back and
stays out.

Every row has one writer (its replica; the driver only retires a dead one), so no lock is needed.
Reads race with writes only towards waiting longer: a replica's clock and offset are written
before its state says it is in, and a retirement read late counts a clock that no longer holds
anyone back. Aligned 8-byte stores are whole on x86-64, which `--transport auto` requires.
"""

from typing import Optional

import numpy as np

from ps.common.shm import ALIGN, MAGIC_CLOCKS, Segment, ShmError

CAPACITY = 4096  # replica ids a job may hand out in its life (replacements and scaling take new ids)
UNUSED, ACTIVE, RETIRED = 0, 1, 2
_H_MAGIC, _H_CAPACITY, _H_BOUND = 0, 1, 2
# one int64 column each, `capacity` long, after the header
_COLUMNS = ("state", "clock", "offset", "waits", "max_gap", "violations")


class ClockBoard:
    def __init__(self, segment: Segment):
        self.segment = segment
        header = segment.array(np.int64, 8, 0)
        if int(header[_H_MAGIC]) != MAGIC_CLOCKS:
            raise ShmError(0, f"{segment.path} is not a downpour clock table")
        self.capacity, self.bound = int(header[_H_CAPACITY]), int(header[_H_BOUND])
        for k, name in enumerate(_COLUMNS):
            setattr(self, name, segment.array(np.int64, self.capacity, ALIGN + 8 * k * self.capacity))

    @classmethod
    def create(cls, path: str, bound: int, replicas: int, capacity: int = CAPACITY) -> "ClockBoard":
        """Replicas 0 .. replicas-1 in, at clock 0: one that starts late still holds the others
        back."""
        segment = Segment.create(path, ALIGN + 8 * len(_COLUMNS) * capacity)
        header = segment.array(np.int64, 8, 0)
        header[_H_CAPACITY], header[_H_BOUND] = capacity, bound
        header[_H_MAGIC] = MAGIC_CLOCKS
        board = cls(segment)
        board.state[:replicas] = ACTIVE
        return board

    @classmethod
    def attach(cls, path: str) -> "ClockBoard":
        return cls(Segment.attach(path))

    def join(self, replica: int) -> None:
        """Enters a replica that was not among the job's first ones at the slowest clock; one
        already in (or retired) keeps its row."""
        if not 0 <= replica < self.capacity:
            raise ShmError(0, f"replica {replica}: the shared clock table of {self.segment.path} "
                              f"holds ids below {self.capacity}; use --transport ray for this job")
        if int(self.state[replica]) == UNUSED:
            start = self.slowest() or 0
            self.offset[replica] = self.clock[replica] = start
            self.state[replica] = ACTIVE  # last: readers count the row only once its clock is in

    def report(self, replica: int, steps: int) -> int:
        """`replica` has done `steps` of its own steps, all acknowledged; returns its clock."""
        clock = max(int(self.offset[replica]) + steps, int(self.clock[replica]))
        if int(self.state[replica]) == ACTIVE:
            self.clock[replica] = clock
        return clock

    def slowest(self) -> Optional[int]:
        """The slowest clock of the replicas still training, None when there are none."""
        active = self.state == ACTIVE
        return int(self.clock[active].min()) if active.any() else None

    def went(self, replica: int, gap: int, waited: bool) -> None:
        """Records that `replica` went on `gap` steps ahead of the slowest clock it saw."""
        self.waits[replica] += waited
        self.max_gap[replica] = max(int(self.max_gap[replica]), gap)
        self.violations[replica] += gap > self.bound

    def retire(self, replica: int) -> None:
        if 0 <= replica < self.capacity:
            self.state[replica] = RETIRED

    def stats(self) -> dict:
        """As the pacer actor's: bound, waits, violations, max_gap and the training clocks."""
        active = np.flatnonzero(self.state == ACTIVE)
        return {"bound": self.bound, "waits": int(self.waits.sum()),
                "violations": int(self.violations.sum()), "max_gap": int(self.max_gap.max()),
                "clocks": {int(r): int(self.clock[r]) for r in active}}

    def close(self) -> None:
        for name in _COLUMNS:
            setattr(self, name, None)
        self.segment.close()
