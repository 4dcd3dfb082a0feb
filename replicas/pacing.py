"""How an SSP replica is paced (Ho et al. 2013): through the pacer actor, or through the shared
clock table when the whole job is on one machine.

Both keep one promise: a step starts at most `bound` clocks ahead of the slowest replica, and the
parameters it computes on hold every update of the steps that slowest clock counts. A clock counts
a replica's steps once every shard acknowledged their pushes, so `pace` settles this replica's
pushes before it reports. It returns True when the parameters in hand may be older than the clock
that let the step go: the caller then fetches anew.
"""

import time
from typing import Callable, Optional

import ray

from ps.common.shm_clocks import ClockBoard

PACE_GRACE_S = 5.0  # beyond the pacer's own timeout, for its answer to arrive
POLL_S = 0.0002     # between looks at the shared clock table while waiting


class ActorPacing:
    """Reports to the pacer actor (ps.server.pacer.Pacer), a Ray call each. Within the bound the
    replica goes on without a call. It reports every step while near the slowest (the others may
    be waiting for it), else every `report_every` steps: a clock the pacer hears late only makes
    others wait longer, never lets one past the bound. The check uses only answers read before
    the parameters in hand were fetched (those of earlier steps); one that has come since is read
    for the next step. Beyond the bound it reports and waits for the answer."""

    def __init__(self, pacer, replica_id: int, bound: int, timeout_s: float):
        self.pacer, self.id, self.bound, self.timeout_s = pacer, replica_id, bound, timeout_s
        # (my clock - my steps, the slowest clock) of the last answer read; the (answer, my
        # steps) of the last report not waited for
        self._lead: Optional[tuple[int, int]] = None
        self._unread: Optional[tuple] = None

    @property
    def report_every(self) -> int:
        """Every step for bounds 0 and 1, then every (bound + 1) // 2, so a replica the others
        wait for reports within their bound."""
        return max(1, (self.bound + 1) // 2)

    def pace(self, steps: int, settle: Callable[[], None], reads_at_install: bool) -> bool:
        lead = None if self._lead is None else self._lead[0] + steps - self._lead[1]
        if self._unread is not None and ray.wait([self._unread[0]], timeout=0)[0]:
            self._read(*self._unread)
        within = lead is not None and lead <= self.bound
        if within and lead >= self.report_every and steps % self.report_every:
            return False
        settle()
        ref = self.pacer.ready.remote(self.id, steps, self.timeout_s)
        if within:
            self._unread = (ref, steps)
            return False
        self._read(ref, steps)
        return True

    def _read(self, ref, steps: int) -> None:
        clock, slowest = ray.get(ref, timeout=self.timeout_s + PACE_GRACE_S)
        self._lead, self._unread = (clock - steps, slowest), None

    def retire(self) -> None:
        self.pacer.retire.remote(self.id)


class BoardPacing:
    """Reports every step into the shared clock table (a store) and waits by looking at it. With
    a shared-memory client the parameters are copied when they are installed, after this check,
    so the slowest clock read now is the one they hold; with Ray calls they were fetched before,
    so the check uses the slowest clock read at the previous step."""

    def __init__(self, path: str, replica_id: int, bound: int, timeout_s: float):
        self.board, self.id, self.bound, self.timeout_s = ClockBoard.attach(path), replica_id, bound, timeout_s
        self.board.join(replica_id)
        self._seen: Optional[int] = None  # the slowest clock at the previous check

    def pace(self, steps: int, settle: Callable[[], None], reads_at_install: bool) -> bool:
        settle()
        clock = self.board.report(self.id, steps)
        slowest = self.board.slowest()
        basis, self._seen = (slowest if reads_at_install else self._seen), slowest
        if slowest is None:  # this replica was retired (the job thinks it dead): no one to wait for
            return False
        if basis is not None and clock - basis <= self.bound:
            self.board.went(self.id, clock - basis, False)
            return False
        waited = clock - slowest > self.bound
        if waited:
            slowest = self._seen = self._wait(clock)
        self.board.went(self.id, 0 if slowest is None else clock - slowest, waited)
        return True

    def _wait(self, clock: int) -> Optional[int]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            slowest = self.board.slowest()
            if slowest is None or clock - slowest <= self.bound:
                return slowest
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {self.id} waited {self.timeout_s:g} s at clock {clock} "
                                   f"for the slowest replica (clock {slowest}, bound {self.bound})")
            time.sleep(POLL_S)

    def retire(self) -> None:
        self.board.retire(self.id)
        self.board.close()


def make_pacing(pacer, replica_id: int, bound: int, timeout_s: float):
    """`pacer`: the pacer actor's handle, or the path of the job's shared clock table."""
    if isinstance(pacer, str):
        return BoardPacing(pacer, replica_id, bound, timeout_s)
    return ActorPacing(pacer, replica_id, bound, timeout_s)
