"""Just-in-time prefetch: when, during a compute step, to issue the next fetch.

Issuing the fetch at the start of the compute (plain prefetch) hides the round trip but serves
parameters that miss every update made during the compute: roughly N-1 extra versions of
staleness with N replicas. Issuing it one round trip before the compute ends hides the round trip
too, and the parameters are only as old as one round trip. The controller learns the compute time
and the round-trip time from what it observes and aims for the fetch to land as compute ends.
"""

import threading
from typing import Callable, Optional

EMA = 0.2       # weight of the newest observation
MARGIN = 1.5    # lead = MARGIN x estimated round trip: arriving a bit early is cheaper than waiting
EARLY_DECAY = 0.9  # when a fetch was already waiting, trust a shorter round trip next time


class JustInTime:
    def __init__(self):
        self.compute_s: Optional[float] = None
        self.rtt_s = 0.0

    def delay(self) -> float:
        """Seconds after a compute starts at which to issue the next fetch (0 until measured)."""
        if self.compute_s is None:
            return 0.0
        return max(0.0, self.compute_s - MARGIN * self.rtt_s)

    def observe(self, compute_s: float, rtt_s: Optional[float]) -> None:
        """compute_s: the last compute step; rtt_s: issue-to-last-reply time of the last fetch when
        the replica had to wait for it, or None when it had already landed (an upper bound only)."""
        self.compute_s = compute_s if self.compute_s is None else _ema(self.compute_s, compute_s)
        if rtt_s is None:
            self.rtt_s *= EARLY_DECAY
        else:
            self.rtt_s = max(rtt_s, _ema(self.rtt_s, rtt_s))  # a late fetch costs: react at once


def _ema(old: float, new: float) -> float:
    return (1 - EMA) * old + EMA * new


class ScheduledFetch:
    """Calls `issue` after `delay` seconds on a timer thread, unless `take` comes first.

    `take` returns what `issue` returned, or None when it had not fired (then it never will), in
    which case the caller fetches after its push instead.
    """

    def __init__(self, issue: Callable[[], object], delay: float):
        self._issue, self._result, self._taken = issue, None, False
        self._lock = threading.Lock()
        self._timer = None
        if delay <= 0:
            self._fire()
        else:
            self._timer = threading.Timer(delay, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if not self._taken:
                self._result = self._issue()

    def take(self):
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._taken = True
            return self._result
