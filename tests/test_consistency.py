"""Consistency modes in a shard, in-process: rounds, late gradients, equivalences, the SSP clock."""

import threading

import numpy as np
import pytest
import torch

from ps.common.errors import UserError
from ps.server.consistency import ASYNC, parse_consistency
from ps.server.optimizers import parse_optimizer
from ps.server.pacer import ClockTable
from ps.server.shard import ParameterShard

SIZE = 64


def shard(mode: str = "async", replicas: int = 4, optimizer: str = "sgd", rule: str = "constant",
          transform=None, seed: int = 0) -> ParameterShard:
    initial = np.random.default_rng(seed).standard_normal(SIZE).astype(np.float32)
    return ParameterShard(0, initial, parse_optimizer(optimizer), 0.1, rule,
                          consistency=parse_consistency(mode, replicas), replicas=replicas,
                          transform=transform, record_events=True)


def grads(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SIZE).astype(np.float32) for _ in range(count)]


def drive(s: ParameterShard, gradients, replicas: int = 4, lag: int = 0):
    """Pushes in turn from `replicas` replicas, each computed `lag` versions behind (as far as
    the shard has gone), with every replica pulling afterwards; returns the results."""
    results = []
    for i, g in enumerate(gradients):
        s.pull(i % replicas)
        results.append(s.push(g, max(0, s.version - lag), i % replicas))
    return results


@pytest.mark.parametrize("spec, replicas, per_update", [
    ("async", 4, 1), ("softsync:n=1", 8, 8), ("softsync:n=2", 8, 4), ("softsync:n=3", 8, 2),
    ("softsync:n=8", 8, 1), ("softsync:c=3", 8, 3), ("sync", 5, 5), ("backup:b=1", 5, 4),
    ("ssp:bound=0", 3, 1), ("hogwild", 3, 1)])
def test_gradients_per_update_follow_the_mode(spec, replicas, per_update):
    assert parse_consistency(spec, replicas).per_update(replicas) == per_update


@pytest.mark.parametrize("spec, words", [
    ("softsync:n=0", "n=0 is out of range"), ("softsync:n=5", "give n=1..4"),
    ("softsync", "needs one of n="), ("softsync:n=2,c=2", "needs one of n="),
    ("softsync:n=1.5", "whole number"), ("backup:b=4", "b=1..3"), ("backup:b=0", "b=1..3"),
    ("ssp:bound=-1", "bound= 0 or more"), ("ssp", "bound= 0 or more"),
    ("sync:n=2", "has no parameter 'n'"), ("bsp", "choose one of async, softsync"),
    ("async:x=1", "(its parameters: none)")])
def test_bad_modes_are_one_line_user_errors(spec, words):
    with pytest.raises(UserError, match="consistency") as info:
        parse_consistency(spec, 4)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_mode_text_round_trips():
    for spec in ("async", "softsync:n=3", "softsync:c=2", "sync", "backup:b=1", "ssp:bound=2", "hogwild"):
        assert parse_consistency(parse_consistency(spec, 4).text, 4).text == spec


@pytest.mark.parametrize("same", ["softsync:c=1", "softsync:n=4"])
@pytest.mark.parametrize("rule", ["constant", "inverse"])
def test_softsync_of_one_gradient_per_update_is_async_bitwise(same, rule):
    a, b = shard("async", rule=rule, optimizer="momentum"), shard(same, rule=rule, optimizer="momentum")
    ra, rb = drive(a, grads(40), lag=2), drive(b, grads(40), lag=2)
    assert ra == rb and a.version == b.version == 40
    assert np.array_equal(a.optimizer.values, b.optimizer.values)


def test_softsync_applies_the_mean_of_its_scaled_gradients_once_per_round():
    s = shard("softsync:c=3", rule="inverse")
    before = s.optimizer.values.copy()
    g = grads(3)
    taus = [2, 4, 1]
    s.version = 10  # pretend updates happened: staleness tau = 10 - fetched
    for tau, gi in zip(taus, g[:2]):
        assert s.push(gi, 10 - tau, 0).accepted
    assert s.version == 10 and np.array_equal(s.optimizer.values, before)  # round still open
    assert s.push(g[2], 10 - taus[2], 1).accepted and s.version == 11
    mean = sum(np.float32(1 / t) * gi for t, gi in zip(taus, g)) / np.float32(3)
    np.testing.assert_allclose(s.optimizer.values, before - np.float32(0.1) * mean, rtol=1e-6, atol=1e-7)
    assert s.stats()["tau_counts"] == {2: 1, 4: 1, 1: 1}


def test_sync_round_equals_one_sgd_step_on_the_big_batch():
    """N gradients of batch B on one version, averaged: single-process SGD with batch N*B."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    x, y = torch.randn(4 * 5, 8), torch.randint(0, 3, (4 * 5,))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    s = ParameterShard(0, flat, parse_optimizer("sgd"), 0.5, "constant",
                       consistency=parse_consistency("sync", 4), replicas=4)
    ref = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):  # three rounds
        version, values = s.pull()
        for r in range(4):
            torch.nn.utils.vector_to_parameters(torch.from_numpy(values.copy()), model.parameters())
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x[5 * r:5 * r + 5]), y[5 * r:5 * r + 5]).backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().copy()
            assert s.push(g, version, r).accepted
        assert s.version == version + 1
    torch.nn.utils.vector_to_parameters(torch.from_numpy(flat.copy()), model.parameters())
    for _ in range(3):
        ref.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        ref.step()
    want = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    np.testing.assert_allclose(s.optimizer.values, want, rtol=1e-5, atol=1e-6)


def test_backup_drops_late_gradients_and_never_applies_them():
    s = shard("backup:b=1", replicas=4)
    g = grads(5)
    for r in range(3):  # N - b = 3 gradients on version 0 close the round
        assert s.push(g[r], 0, r).accepted
    assert s.version == 1
    after_round = s.optimizer.values.copy()
    late = s.push(g[3], 0, 3)  # the fourth replica's, computed on version 0
    assert not late.accepted and late.reason.startswith("late") and late.tau == 1
    assert np.array_equal(s.optimizer.values, after_round) and s.version == 1
    assert s.round.count == 0 and s.stats()["rejected"] == {"late": 1}
    assert s.push(g[4], 1, 3).accepted and s.round.count == 1  # on the new version: counted


def test_sync_drops_a_gradient_from_an_older_version():
    s = shard("sync", replicas=2)
    g = grads(3)
    assert s.push(g[0], 0, 0).accepted and s.push(g[1], 0, 1).accepted and s.version == 1
    assert s.push(g[2], 0, 0).reason.startswith("late")


def test_pull_newer_waits_for_the_round_to_close():
    s = shard("sync", replicas=2)
    got = {}
    waiter = threading.Thread(target=lambda: got.update(reply=s.pull_newer(0, 60.0)))
    g = grads(2)
    s.push(g[0], 0, 0)
    waiter.start()
    s.push(g[1], 0, 1)  # closes the round: the waiter wakes
    waiter.join(timeout=60)
    assert not waiter.is_alive() and got["reply"][0] == 1
    assert np.array_equal(got["reply"][1], s.optimizer.values)
    assert got["reply"][1] is not s.optimizer.values  # a snapshot, taken under the lock


def test_pull_newer_gives_up_after_its_timeout_with_the_version_as_it_is():
    s = shard("sync", replicas=2)
    assert s.pull_newer(0, 0.01)[0] == 0


def test_overflowing_round_is_dropped_and_nothing_changes():
    s = shard("softsync:c=2", replicas=4)
    before = s.optimizer.values.copy()
    huge = np.full(SIZE, 3e38, dtype=np.float32)
    assert s.push(huge, 0, 0).accepted
    result = s.push(huge, 0, 1)  # the sum overflows: the round's update would be non-finite
    assert not result.accepted and result.reason.startswith("overflow")
    assert np.array_equal(s.optimizer.values, before) and s.version == 0 and s.round.count == 0


def test_round_schedule_plans_updates_not_pushes():
    assert shard("sync", replicas=4).planned_updates == 1
    s = ParameterShard(0, np.zeros(4, np.float32), parse_optimizer("sgd"), 0.1, "constant",
                       planned_updates=100, consistency=parse_consistency("backup:b=1", 4), replicas=4)
    assert s.planned_updates == 25 and s.replan(40) == 10
    assert ParameterShard(0, np.zeros(4, np.float32), parse_optimizer("sgd"), 0.1, "constant",
                          planned_updates=100, consistency=ASYNC).planned_updates == 100


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dcasgd_with_lambda_zero_is_asgd_bitwise(optimizer):
    a = shard("async", optimizer=optimizer, rule="inverse")
    b = shard("async", optimizer=optimizer, rule="inverse", transform="dcasgd:lambda=0")
    ra, rb = drive(a, grads(30), lag=3), drive(b, grads(30), lag=3)
    assert ra == rb and np.array_equal(a.optimizer.values, b.optimizer.values)
    assert b.stats()["transform_state_bytes"] >= 4 * SIZE * 4  # a backup copy per replica, at least


def test_dcasgd_compensates_with_the_replicas_backup_copy():
    s = shard("async", transform="dcasgd:lambda=0.5")
    g0, g1 = grads(2)
    s.pull(0)  # replica 0's w_bak
    w_bak = s.optimizer.values.copy()
    s.pull(1)
    s.push(g1, 0, 1)  # another replica moves the parameters
    w_now = s.optimizer.values.copy()
    s.push(g0, 0, 0)
    compensated = g0 + np.float32(0.5) * g0 * g0 * (w_now - w_bak)
    np.testing.assert_allclose(s.optimizer.values, w_now - np.float32(0.1) * compensated, rtol=1e-6)


def test_hogwild_applies_every_push_from_concurrent_threads():
    s = shard("hogwild", replicas=4)
    before = s.optimizer.values.copy()
    g = grads(4 * 25)
    threads = [threading.Thread(target=lambda r=r: [s.push(g[i], 0, r) for i in range(r, 100, 4)])
               for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert s.version == 100 and sum(s.tau_counts.values()) == 100
    # disjoint writes could still race element-wise; here the arrays are small and the sum exact
    np.testing.assert_allclose(s.optimizer.values, before - np.float32(0.1) * np.sum(g, axis=0),
                               rtol=1e-4, atol=1e-4)


def test_hogwild_refuses_an_update_that_could_overflow():
    s = shard("hogwild")
    before = s.optimizer.values.copy()
    result = s.push(np.full(SIZE, 3e38, dtype=np.float32), 0, 0)
    assert not result.accepted and result.reason.startswith("overflow")
    assert np.array_equal(s.optimizer.values, before)


def test_mean_tau_counts_gradients_not_updates():
    seen = []
    s = shard("softsync:c=4", rule="inverse_mean")
    for tau in (4, 4, 4, 4):
        s.version += 4
        seen.append(s.push(grads(1)[0], s.version - tau, 0).scale)
    assert seen == [0.25] * 4


def test_clock_table_paces_to_the_bound():
    table = ClockTable(bound=2)
    for r in range(3):
        table.report(r, 0)
    assert table.may_go(table.report(0, 2)) and not table.may_go(table.report(0, 3))
    table.report(1, 1), table.report(2, 1)
    assert table.may_go(3) and not table.may_go(4)
    table.retire(1), table.retire(2)
    assert table.may_go(table.report(0, 10))
    late = table.report(7, 0)  # a replacement joins at the slowest clock, not at zero
    assert late == 10


def test_clock_table_counts_what_went_on():
    table = ClockTable(bound=1)
    table.report(0, 0), table.report(1, 0)
    table.went(table.report(0, 1))
    assert (table.max_gap, table.violations) == (1, 0)
    table.went(table.report(0, 3))  # the pacer never lets this happen: counted if it does
    assert (table.max_gap, table.violations) == (3, 1)


def test_clock_table_started_holds_a_late_replica_and_a_retired_one_stays_out():
    table = ClockTable(bound=1)
    table.start(2)
    assert not table.may_go(table.report(0, 2))  # replica 1 has not reported: it is at 0
    table.retire(1)
    table.report(1, 5)  # a report that arrives after its retirement
    assert table.slowest() == 2 and table.may_go(table.report(0, 3))


def test_adaptive_dcasgd_state_survives_a_checkpoint():
    spec = "dcasgd:lambda=2,adaptive=1"
    a = shard("async", transform=spec)
    drive(a, grads(10), lag=1)
    state = a.export_state()
    b = ParameterShard(0, np.zeros(SIZE, np.float32), parse_optimizer("sgd"), 0.1, "constant",
                       transform=spec, state=state)
    g, h = grads(2, seed=9)
    for s in (a, b):  # replica 0 computes on values that replica 1's push then moves
        s.pull(0), s.pull(1)
        s.push(h, s.version, 1)
        s.push(g, s.version - 1, 0)
    assert np.array_equal(a.optimizer.values, b.optimizer.values)
    assert b.stats()["transform_state_bytes"] > 0
