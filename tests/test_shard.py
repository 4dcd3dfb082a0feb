"""ParameterShard without Ray: exact updates, torch.optim equivalence, rejected pushes, events."""

import numpy as np
import pytest
import torch

from ps.common.errors import UserError
from ps.server.optimizers import OPTIMIZERS, parse_optimizer
from ps.server.schedules import cosine
from ps.server.shard import ParameterShard

SIZE = 257


def make_shard(optimizer="sgd", lr=0.25, rule="constant", initial=None):
    w0 = np.arange(SIZE, dtype=np.float32) if initial is None else initial
    return ParameterShard(0, w0, parse_optimizer(optimizer), lr, rule)


def snapshot(shard):
    version, values = shard.pull()
    return version, values.copy()


def test_k_pushes_of_a_fixed_gradient_leave_w0_minus_k_lr_g():
    # values chosen so float32 arithmetic is exact: the check is equality, not closeness
    rng = np.random.default_rng(0)
    g = rng.integers(-4, 5, SIZE).astype(np.float32) / 2
    shard, k, lr = make_shard(lr=0.25), 7, 0.25
    _, w0 = snapshot(shard)
    for _ in range(k):
        assert shard.push(g, shard.version, replica_id=0).accepted
    version, w = shard.pull()
    assert version == k
    np.testing.assert_array_equal(w, w0 - k * lr * g)


TORCH_OPTIMIZERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "adagrad": lambda p, lr: torch.optim.Adagrad(p, lr=lr, fused=True),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, fused=True),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_shard_at_tau_zero_matches_torch_optim_step_for_step(name):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(SIZE).astype(np.float32)
    shard = make_shard(name, lr=0.01, rule="inverse", initial=w0)
    ref = torch.nn.Parameter(torch.tensor(w0))
    opt = TORCH_OPTIMIZERS[name]([ref], 0.01)
    for _ in range(25):
        g = rng.standard_normal(SIZE).astype(np.float32)
        assert shard.push(g, shard.version, replica_id=0).tau == 0
        ref.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_array_equal(shard.pull()[1], ref.detach().numpy())


def test_plain_sgd_with_staleness_factors_and_a_schedule_matches_torch_bitwise():
    """Plain SGD steps without the guard's copy while its bound allows: still torch's step, with
    the factor on the gradient and the schedule on the rate."""
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal(SIZE).astype(np.float32)
    shard = ParameterShard(0, w0, parse_optimizer("sgd"), 0.05, "inverse", "cosine", 40)
    ref = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([ref], lr=0.05)
    for k in range(40):
        g = rng.standard_normal(SIZE).astype(np.float32)
        result = shard.push(g, max(0, shard.version - k % 4), replica_id=0)  # tau 0..3
        assert result.accepted and result.scale == 1 / max(1, result.tau)
        ref.grad = torch.tensor(g * np.float32(result.scale) if result.scale != 1 else g)
        opt.param_groups[0]["lr"] = 0.05 * cosine(k / 40) * 1.0
        opt.step()
        assert shard.pull()[1].tobytes() == ref.detach().numpy().tobytes(), k


@pytest.mark.parametrize("start", [1e36, 3e38])
def test_plain_sgd_still_rejects_an_overflowing_update(start):
    """Values near float32's end: at 3e38 no step goes unguarded; at 1e36 the first steps do,
    then a push whose update would overflow must still be caught and leave nothing changed."""
    shard = make_shard("sgd", lr=1.0, initial=np.full(SIZE, start, np.float32))
    for _ in range(3):
        assert shard.push(np.full(SIZE, 1e30, np.float32), shard.version, 0).accepted
    version, before = snapshot(shard)
    huge = np.zeros(SIZE, np.float32)
    huge[0] = -3.4e38  # start + 3.4e38 is past float32's 3.40e38
    result = shard.push(huge, shard.version, 0)
    assert not result.accepted and result.reason.startswith("overflow")
    after_version, after = shard.pull()
    assert after_version == version and after.tobytes() == before.tobytes()


def test_inverse_rule_scales_the_step_by_one_over_tau():
    shard = make_shard(lr=0.5, rule="inverse")
    g = np.ones(SIZE, np.float32)
    for _ in range(4):
        shard.push(g, shard.version, 0)
    _, before = snapshot(shard)
    result = shard.push(g, fetched_version=0, replica_id=1)  # computed on version 0, applied at 4
    assert (result.tau, result.scale) == (4, 0.25)
    np.testing.assert_array_equal(shard.pull()[1], before - 0.5 * 0.25 * g)


BAD_PUSHES = {
    "shape": (np.ones(SIZE + 1, np.float32), 0),
    "dtype": (np.ones(SIZE, np.float64), 0),
    "type": ([1.0] * SIZE, 0),
    "nonfinite": (np.full(SIZE, np.nan, np.float32), 0),
    "version": (np.ones(SIZE, np.float32), 99),
}


@pytest.mark.parametrize("reason", BAD_PUSHES)
def test_a_rejected_push_leaves_parameters_bitwise_unchanged(reason):
    shard = make_shard("adam", rule="inverse")
    shard.push(np.ones(SIZE, np.float32), 0, 0)
    version, before = snapshot(shard)
    grad, fetched = BAD_PUSHES[reason]
    result = shard.push(grad, fetched, replica_id=3)
    assert not result.accepted and result.reason.startswith(reason)
    after_version, after = shard.pull()
    assert after_version == version
    assert after.tobytes() == before.tobytes()
    assert shard.stats()["rejected"] == {reason: 1}
    last = shard.drain_events()[-1]
    assert (last["accepted"], last["replica"], last["reason"]) == (False, 3, result.reason)


def test_push_pull_replies_with_the_state_after_its_push():
    shard, twin = make_shard(), make_shard()
    g = np.ones(SIZE, np.float32)
    reply = shard.push_pull(g, 0, replica_id=0)
    expected = twin.push(g, 0, replica_id=0)
    assert reply.push == expected
    assert reply.version == twin.version == 1
    np.testing.assert_array_equal(reply.values, twin.pull()[1])


def test_a_rejected_push_pull_replies_with_the_unchanged_parameters():
    shard = make_shard()
    version, before = snapshot(shard)
    reply = shard.push_pull(np.full(SIZE, np.nan, np.float32), 0, replica_id=0)
    assert not reply.push.accepted and reply.push.reason.startswith("nonfinite")
    assert reply.version == version and reply.values.tobytes() == before.tobytes()


def test_one_inf_among_finite_values_is_rejected():
    shard = make_shard()
    grad = np.zeros(SIZE, np.float32)
    grad[100] = np.inf
    _, before = snapshot(shard)
    assert shard.push(grad, 0, 0).reason.startswith("nonfinite")
    assert shard.pull()[1].tobytes() == before.tobytes()


def test_huge_but_finite_gradient_is_accepted_with_its_norm():
    shard = make_shard(lr=1e-30)
    grad = np.full(SIZE, 1e30, np.float32)  # its squared norm overflows float32
    assert shard.push(grad, 0, 0).accepted
    assert shard.drain_events()[0]["grad_norm"] == pytest.approx(1e30 * np.sqrt(SIZE), rel=1e-6)


def test_a_gating_rule_rejects_without_changing_parameters(tmp_path, monkeypatch):
    (tmp_path / "gating_rule.py").write_text(
        "from ps.server.rules import Decision\n"
        "def gate(ctx, limit=1.0):\n"
        "    return Decision(1.0) if ctx.tau <= limit else Decision(0.0, False, 'too stale')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shard = make_shard(rule="gating_rule:gate")
    g = np.ones(SIZE, np.float32)
    for _ in range(3):
        shard.push(g, shard.version, 0)
    version, before = snapshot(shard)
    result = shard.push(g, 0, 1)
    assert (result.accepted, result.tau, result.reason) == (False, 3, "too stale")
    assert shard.pull()[0] == version and shard.pull()[1].tobytes() == before.tobytes()


def test_push_events_record_versions_tau_and_scale():
    shard = make_shard(rule="inverse")
    g = np.ones(SIZE, np.float32)
    shard.push(g, 0, 0)
    shard.push(g, 0, 1)
    records = shard.drain_events()
    assert [(r["replica"], r["fetched"], r["applied"], r["tau"], r["scale"]) for r in records] == [
        (0, 0, 0, 0, 1.0), (1, 0, 1, 1, 1.0)]
    assert records[0]["grad_norm"] == pytest.approx(np.sqrt(SIZE))
    assert shard.drain_events() == []


@pytest.mark.parametrize("spec, words", [
    ("rmsprop", ["optimizer", "sgd", "adam"]),
    ("adam:momentum=0.9", ["no parameter", "momentum"]),
    ("adam:beta1=1.5", ["beta1"]),
    ("momentum:momentum=1.5", ["momentum=1.5", "out of range"]),
])
def test_bad_optimizer_specs_are_user_errors(spec, words):
    with pytest.raises(UserError) as err:
        parse_optimizer(spec)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_optimizer_parameters_reach_torch():
    shard = make_shard("momentum:momentum=0.5", lr=1.0, initial=np.zeros(SIZE, np.float32))
    g = np.ones(SIZE, np.float32)
    shard.push(g, 0, 0)
    shard.push(g, 1, 0)
    np.testing.assert_array_equal(shard.pull()[1], np.full(SIZE, -(1 + 1.5), np.float32))


@pytest.mark.parametrize("record_events", [True, False])
def test_staleness_and_rejections_are_counted_with_or_without_the_event_log(record_events):
    shard = ParameterShard(0, np.zeros(SIZE, np.float32), parse_optimizer("sgd"), 0.1, "constant",
                           record_events=record_events)
    g = np.ones(SIZE, np.float32)
    for fetched in (0, 0, 1, 1):  # taus 0, 1, 1, 2
        shard.push(g, fetched, replica_id=0)
    shard.push(np.full(SIZE, np.nan, np.float32), shard.version, replica_id=1)
    stats = shard.stats()
    assert stats["tau_counts"] == {0: 1, 1: 2, 2: 1}
    assert stats["rejected"] == {"nonfinite": 1} and stats["version"] == 4
    assert len(shard.drain_events()) == (5 if record_events else 0)


def test_replan_moves_the_end_of_the_schedule_from_here():
    g = np.ones(SIZE, np.float32)

    def run(replan_to):
        shard = ParameterShard(0, np.zeros(SIZE, np.float32), parse_optimizer("sgd"), 1.0, "constant",
                               lr_schedule="linear", planned_updates=4)
        shard.push(g, 0, replica_id=0)
        shard.push(g, 1, replica_id=0)
        if replan_to is not None:
            assert shard.replan(replan_to) == 2 + replan_to
        steps = []
        for _ in range(3):
            before = shard.pull()[1][0]
            shard.push(g, shard.version, replica_id=0)
            steps.append(float(before - shard.pull()[1][0]))
        return steps

    assert run(None) == [0.5, 0.25, 0.0]  # linear over 4: progress 2/4, 3/4, then the end
    assert run(6) == pytest.approx([1 - 2 / 8, 1 - 3 / 8, 1 - 4 / 8])  # now 8 planned in all
