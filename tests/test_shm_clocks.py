"""SSP's clock table in shared memory: the same clocks as the pacer's ClockTable under any sequence
of reports, joins and retirements, seen alike from every mapping; and the replica's pacing over
it goes on within the bound, refetches when its parameters are older than the clock that let it
go, and waits (then times out) beyond it."""

import random

import pytest

from ps.common import shm
from ps.common.shm_clocks import ClockBoard
from ps.server.pacer import ClockTable
from replicas.pacing import BoardPacing


@pytest.fixture
def path():
    names = shm.ShmNames.new()
    yield names.clocks()
    assert names.remove() == 1  # the table is one file, under the run's prefix


@pytest.mark.parametrize("seed", range(5))
def test_the_shared_table_keeps_the_clocks_the_pacer_keeps(path, seed):
    rng = random.Random(seed)
    table, board = ClockTable(bound=2), ClockBoard.create(path, bound=2, replicas=3)
    table.start(3)
    other_view = ClockBoard.attach(path)  # another process's mapping
    steps = {r: 0 for r in range(3)}
    for _ in range(300):
        op = rng.random()
        if op < 0.8:
            replica = rng.choice(sorted(steps))
            steps[replica] += rng.choice([0, 1, 1, 2])
            expected = table.report(replica, steps[replica])
            if replica not in table.retired:
                assert board.report(replica, steps[replica]) == expected
            else:
                board.report(replica, steps[replica])
        elif op < 0.9 and len(steps) < 12:  # a replacement or a scaled-up replica
            replica = len(steps)
            steps[replica] = 0
            board.join(replica)
            assert board.report(replica, 0) == table.report(replica, 0)
        else:
            replica = rng.choice(sorted(steps))
            table.retire(replica), board.retire(replica)
        assert board.slowest() == other_view.slowest() == table.slowest()
        assert board.stats()["clocks"] == table.stats()["clocks"]
    other_view.close(), board.close()


def test_a_clock_never_goes_back_and_a_retired_replica_stays_out(path):
    board = ClockBoard.create(path, bound=1, replicas=2)
    assert board.report(0, 5) == 5 and board.report(0, 3) == 5  # reports may come out of order
    assert board.slowest() == 0  # replica 1 has not reported: it holds the others at 0
    board.retire(1)
    board.report(1, 9)  # a report after its retirement
    assert board.slowest() == 5 and board.stats()["clocks"] == {0: 5}
    board.join(1)  # a retired row is not entered again
    assert board.slowest() == 5
    board.retire(0)
    assert board.slowest() is None
    board.close()


def test_a_replica_id_beyond_the_table_is_a_clear_error(path):
    board = ClockBoard.create(path, bound=1, replicas=2, capacity=4)
    with pytest.raises(shm.ShmError, match="ids below 4; use --transport ray"):
        board.join(4)
    board.close()


def test_what_went_on_is_counted_per_replica_and_summed(path):
    board = ClockBoard.create(path, bound=1, replicas=2)
    board.went(0, 1, waited=True)
    board.went(1, 0, waited=False)
    board.went(1, 3, waited=True)  # pacing never does this: counted if it does
    assert board.stats() == {"bound": 1, "waits": 2, "violations": 1, "max_gap": 3,
                             "clocks": {0: 0, 1: 0}}
    board.close()


def test_pacing_goes_within_the_bound_refetches_when_behind_and_waits_beyond(path):
    board = ClockBoard.create(path, bound=1, replicas=2)
    settled = []
    fast = BoardPacing(path, 0, bound=1, timeout_s=0.05)
    slow = BoardPacing(path, 1, bound=1, timeout_s=0.05)
    settle = lambda: settled.append(1)  # noqa: E731
    # shared-memory parameters are copied after the check: the clock read now is what they hold
    assert fast.pace(0, settle, True) is False and fast.pace(1, settle, True) is False
    with pytest.raises(TimeoutError, match="clock 2 for the slowest replica \\(clock 0, bound 1\\)"):
        fast.pace(2, settle, True)
    assert len(settled) == 3  # a clock counts acknowledged steps: every report settles first
    assert slow.pace(1, settle, True) is False and board.slowest() == 1
    # parameters fetched through Ray calls came before this check: judged by the clock seen at the
    # previous one (0), they may lack step 0 of replica 1: fetch anew, without waiting
    assert fast.pace(2, settle, False) is True
    assert slow.pace(2, settle, True) is False
    assert fast.pace(3, settle, False) is True  # seen at the previous check: 1, now 2
    slow.retire()  # a finished replica holds no one back
    assert fast.pace(9, settle, True) is False
    stats = board.stats()
    assert stats["violations"] == 0 and stats["max_gap"] == 1 and stats["clocks"] == {0: 9}
    fast.retire(), board.close()
