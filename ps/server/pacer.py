"""The SSP pacer (Ho et al. 2013): replicas' clocks, and a wait for the one running too far ahead.

A replica's clock is the number of steps it has finished and had acknowledged by every shard.
A replica about to compute step c may go on while c - (slowest clock) <= bound; otherwise it
waits here, so it is paced, never dropped. Replicas that finished (or died) are retired: they no
longer hold anyone back. A replica that joins later (a replacement) starts at the slowest clock.

`ClockTable` is the pure core; `Pacer` serves it as an asyncio Ray actor, so any number of
replicas can wait at once without a thread each.
"""

import asyncio
from typing import Optional


class ClockTable:
    def __init__(self, bound: int):
        self.bound = bound
        self.clocks: dict[int, int] = {}  # replica -> steps done, of the replicas still training
        self.offsets: dict[int, int] = {}  # replica -> clock it joined at
        self.waits = 0           # times a replica had to wait
        self.violations = 0      # times a replica went on more than `bound` ahead (must stay 0)
        self.max_gap = 0         # largest clock gap any replica went on with
        self.retired: set[int] = set()

    def start(self, replicas: int) -> None:
        """Replicas 0..replicas-1 at clock 0 before anyone reports: one that starts late still
        holds the others back (instead of joining at their clock)."""
        self.clocks.update({r: 0 for r in range(replicas)})
        self.offsets.update({r: 0 for r in range(replicas)})

    def report(self, replica: int, steps: int) -> int:
        """`replica` has done `steps` of its own steps; returns its clock. A report that comes
        after its replica was retired does not bring it back."""
        if replica in self.retired:
            return self.offsets.get(replica, 0) + steps
        if replica not in self.offsets:
            self.offsets[replica] = self.slowest() if self.clocks else 0
        # reports of one replica may be served out of order: a clock never goes back
        clock = max(self.offsets[replica] + steps, self.clocks.get(replica, 0))
        self.clocks[replica] = clock
        return clock

    def slowest(self) -> Optional[int]:
        return min(self.clocks.values()) if self.clocks else None

    def may_go(self, clock: int) -> bool:
        slowest = self.slowest()
        return slowest is None or clock - slowest <= self.bound

    def went(self, clock: int) -> None:
        """Records that a replica at `clock` went on (the gap it went on with)."""
        gap = clock - (self.slowest() if self.clocks else clock)
        self.max_gap = max(self.max_gap, gap)
        self.violations += gap > self.bound

    def retire(self, replica: int) -> None:
        self.clocks.pop(replica, None)
        self.retired.add(replica)

    def stats(self) -> dict:
        return {"bound": self.bound, "waits": self.waits, "violations": self.violations,
                "max_gap": self.max_gap, "clocks": dict(self.clocks)}


class Pacer:
    """Ray actor (asyncio): `ready` reports a replica's steps and returns once it may go on."""

    def __init__(self, bound: int, replicas: int):
        self.table = ClockTable(bound)
        self.table.start(replicas)
        self._moved = asyncio.Condition()

    async def ready(self, replica: int, steps: int, timeout_s: float) -> tuple[int, int]:
        """(its clock, the slowest clock) once `replica`, having done `steps`, may compute its
        next step; raises TimeoutError after `timeout_s`."""
        async with self._moved:
            clock = self.table.report(replica, steps)
            if replica in self.table.retired:  # a report overtaken by its replica's retirement
                return clock, clock
            self._moved.notify_all()
            if not self.table.may_go(clock):
                self.table.waits += 1
                await asyncio.wait_for(self._moved.wait_for(lambda: self.table.may_go(clock)),
                                       timeout_s)
            self.table.went(clock)
            return clock, self.table.slowest()

    async def retire(self, replica: int) -> None:
        async with self._moved:
            self.table.retire(replica)
            self._moved.notify_all()

    async def stats(self) -> dict:
        return self.table.stats()
