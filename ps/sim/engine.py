"""The simulator's clock: which learner pushes next, and who waits for whom.

Event-driven over simulated time. A learner fetches, computes (its steps take what its delay
stream draws), and pushes when that time comes; pushes that fall at the same instant go by
learner id (order "delay") or in a seeded random order (order "shuffled": with a constant delay,
every round of N pushes is a fresh permutation). The waits are those of the Ray mode:
sync and backup: a learner fetches only once every shard's version passed the one its gradient
was computed on (its round closed); ssp: a learner whose clock is more than the bound ahead of
the slowest waits (the same ClockTable the pacer actor serves). Everything runs in one thread, so
a run is a function of its configuration and seed.
"""

import heapq
from typing import Callable, Optional, Sequence

import numpy as np

from ps.server.consistency import Consistency
from ps.server.pacer import ClockTable
from ps.sim.learner import Learner

ORDERS = ("delay", "shuffled")


class Deadlock(RuntimeError):
    pass


class Engine:
    def __init__(self, learners: Sequence[Learner], shards: Sequence, mode: Consistency,
                 order: str, seed: int, warmstart_steps: int = 0):
        """`warmstart_steps`: learner 0 trains alone for that many steps first (Dean et al.)."""
        self.learners, self.shards, self.mode = list(learners), list(shards), mode
        self.warmstart_steps = warmstart_steps
        self.shuffled = order == "shuffled"
        self.rng = np.random.default_rng([seed, 0x5EED])
        self.clocks = ClockTable(mode.bound) if mode.mode == "ssp" else None
        self.now = 0.0
        self._queue: list = []     # (time, tie-break, sequence, learner id)
        self._sequence = 0
        self._waiting: list[int] = []  # learner ids, in the order they began to wait
        self.incarnations = [0] * len(self.shards)

    def run(self, on_fetch: Callable[[dict], None], after_push: Callable[[Learner], None]) -> float:
        """Until every learner has done its steps; returns the simulated seconds it took.
        `on_fetch`: each fetch record; `after_push`: called after each learner's push."""
        for learner in self.learners:
            self._go_or_wait(learner, on_fetch)
        while self._queue:
            self.now, _, _, lid = heapq.heappop(self._queue)
            learner = self.learners[lid]
            learner.push(self.shards, self.incarnations)
            after_push(learner)
            if learner.done:
                self._retire(learner)
            waiting, self._waiting = self._waiting, []
            for other in waiting:  # those whose wait this push ended go first, in wait order
                self._go_or_wait(self.learners[other], on_fetch, waited=True)
            if not learner.done:
                self._go_or_wait(learner, on_fetch)
        if self._waiting:
            raise Deadlock(f"learners {self._waiting} wait for a round or a clock that no push "
                           "will move (a simulator bug: please report it)")
        return self.now

    def _retire(self, learner: Learner) -> None:
        """A finished learner holds no one back."""
        if self.clocks is not None:
            self.clocks.retire(learner.id)
        for shard in self.shards:
            shard.finished(learner.id)

    def _go_or_wait(self, learner: Learner, on_fetch, waited: bool = False) -> None:
        if learner.done:  # a shared quota (--budget job) ran out while it waited
            self._retire(learner)
            return
        if not self._may_go(learner):
            if self.clocks is not None and not waited:
                self.clocks.waits += 1
            self._waiting.append(learner.id)
            return
        on_fetch(learner.fetch(self.shards, self.now))
        took = learner.compute()
        tie = self.rng.random() if self.shuffled else learner.id
        heapq.heappush(self._queue, (self.now + took, tie, self._sequence, learner.id))
        self._sequence += 1

    def _may_go(self, learner: Learner) -> bool:
        first = self.learners[0]
        if learner.id and first.steps < self.warmstart_steps and not first.done:
            return False  # warmstart: the others wait for learner 0's first steps
        if self.mode.rounds and learner.versions and any(
                s.version <= v for s, v in zip(self.shards, learner.versions)):
            return False  # its round is still open
        if self.clocks is not None:
            clock = self.clocks.report(learner.id, learner.steps)
            if not self.clocks.may_go(clock):
                return False
            self.clocks.went(clock)
        return True

    def ssp_stats(self) -> Optional[dict]:
        if self.clocks is None:
            return None
        stats = self.clocks.stats()
        stats.pop("clocks", None)
        return stats
