"""Just-in-time prefetch: the timing controller, the cancellable scheduled fetch, and both in the
replica loop (in-process shards, see test_replica)."""

import threading

import pytest
from test_replica import make_replica

from replicas.prefetch import MARGIN, JustInTime, ScheduledFetch


def test_no_delay_until_a_step_was_measured():
    assert JustInTime().delay() == 0.0


def test_fetch_is_issued_one_padded_round_trip_before_compute_ends():
    jit = JustInTime()
    jit.observe(compute_s=0.100, rtt_s=0.010)
    assert jit.delay() == pytest.approx(0.100 - MARGIN * 0.010)


def test_a_late_fetch_moves_the_next_one_earlier_at_once():
    jit = JustInTime()
    jit.observe(0.100, 0.010)
    jit.observe(0.100, 0.040)  # we waited: the round trip is longer than believed
    assert jit.delay() == pytest.approx(0.100 - MARGIN * 0.040)


def test_early_fetches_move_the_next_one_later_but_never_past_the_compute():
    jit = JustInTime()
    jit.observe(0.100, 0.040)
    delays = []
    for _ in range(50):
        jit.observe(0.100, None)  # it had landed already: we could have asked later
        delays.append(jit.delay())
    assert all(a < b for a, b in zip(delays, delays[1:]))
    assert delays[-1] <= 0.100


def test_delay_is_never_negative():
    jit = JustInTime()
    jit.observe(0.001, 1.0)
    assert jit.delay() == 0.0


def test_zero_delay_fires_at_once():
    calls = []
    scheduled = ScheduledFetch(lambda: calls.append(1) or "refs", 0.0)
    assert calls == [1] and scheduled.take() == "refs"


def test_take_before_the_timer_cancels_the_fetch():
    fired = threading.Event()
    scheduled = ScheduledFetch(fired.set, delay=3600.0)
    assert scheduled.take() is None
    assert not fired.is_set()


def test_take_after_the_timer_returns_its_result():
    fired = threading.Event()
    scheduled = ScheduledFetch(lambda: fired.set() or "refs", delay=0.001)
    assert fired.wait(timeout=30)
    assert scheduled.take() == "refs"


def test_in_the_loop_a_prefetch_serves_the_next_step_and_costs_at_most_one_version():
    replica, client, shards = make_replica(prefetch=True, total_steps=6)
    result = replica.run()
    assert result["steps"] == 6 and [s.version for s in shards] == [6, 6]
    assert len(replica.drain_events()) == 6  # one install a step, prefetched or carried by a push
    # Step 0 has no measured compute, so its prefetch fires at once, before push 0: that push goes
    # alone and push 1 misses it (tau 1). Later ones race the timer: tau 1 if it fired first, else 0.
    assert client.pushes[0] == (0, False)
    for shard in shards:
        taus = [e["tau"] for e in shard.drain_events()]
        assert taus[:2] == [0, 1] and set(taus) <= {0, 1}
