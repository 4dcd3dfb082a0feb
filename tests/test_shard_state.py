"""A shard's state without Ray: export/restore through the file format, fencing, the overflow guard,
clip_norm and push counts; the fault-flag parsers and the new config fields."""

import math

import numpy as np
import pytest
import torch

from ps.common.config import from_mapping
from ps.common.errors import UserError
from ps.common.faults import Cadence, Fault, FaultInjector, parse_cadence, parse_faults
from ps.server.checkpoint import decode, encode
from ps.server.optimizers import OPTIMIZERS, parse_optimizer
from ps.server.shard import ParameterShard

SIZE = 1000
LR = 0.01


def initial(seed=0, size=SIZE):
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


def make_shard(name="sgd", lr=LR, rule="constant", schedule="constant", planned=1, w0=None, **kw):
    w0 = initial() if w0 is None else w0
    return ParameterShard(0, w0, parse_optimizer(name), lr, rule, schedule, planned, **kw)


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint32) if a.dtype == np.float32 else a


def assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(bits(a), bits(b))


def snapshot(shard):
    """Copies of everything a push must leave alone when it is rejected."""
    return shard.version, shard.pull()[1].copy(), shard.optimizer.export_state()


def assert_unchanged(shard, snap):
    version, values, optim = snap
    assert shard.version == version
    assert_bitwise(shard.pull()[1], values)
    now = shard.optimizer.export_state()
    assert now.keys() == optim.keys()
    for key in optim:
        assert_bitwise(now[key], optim[key])


def comparable_stats(shard):
    s = shard.stats()
    return {k: s[k] for k in ("version", "tau_counts", "rejected", "pushes_from", "planned_updates", "size")}


# ---- 1, 2: export, encode, decode, restore ---------------------------------------------------------
RULES = [("constant", "constant", 1), ("inverse_mean", "cosine", 12)]


@pytest.mark.parametrize("rule, schedule, planned", RULES, ids=["constant", "inverse_mean-cosine"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_restored_shard_continues_bitwise_like_the_original(name, rule, schedule, planned):
    rng = np.random.default_rng(7)
    a = make_shard(name, rule=rule, schedule=schedule, planned=planned)
    grads = [rng.standard_normal(SIZE).astype(np.float32) for _ in range(10)]
    for i, g in enumerate(grads[:5]):
        a.push(g, max(0, a.version - i % 3), replica_id=i % 2)  # some stale pushes too
    a.push(grads[0].astype(np.float64), a.version, replica_id=1)  # a rejected one is counted too
    st = decode(encode(a.export_state()), "x")
    b = make_shard(name, rule=rule, schedule=schedule, planned=planned, w0=initial(seed=99), state=st)
    assert comparable_stats(b) == comparable_stats(a)
    for i, g in enumerate(grads[5:]):
        fetched = max(0, a.version - (i + 1) % 3)
        ra, rb = a.push(g, fetched, replica_id=i % 2), b.push(g, fetched, replica_id=i % 2)
        assert ra == rb
    assert a.version == b.version == 10
    assert_bitwise(b.pull()[1], a.pull()[1])
    sa, sb = a.optimizer.export_state(), b.optimizer.export_state()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert_bitwise(sb[key], sa[key])
    assert comparable_stats(b) == comparable_stats(a)
    assert b.stats()["rejected"] == {"dtype": 1}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_restore_right_after_export_without_pushes_is_exact(name):
    a = make_shard(name)
    b = make_shard(name, w0=initial(seed=5), state=decode(encode(a.export_state()), "x"))
    g = initial(seed=3)
    a.push(g, 0, 0)
    b.push(g, 0, 0)
    assert_bitwise(b.pull()[1], a.pull()[1])


def test_restore_with_another_optimizer_is_a_value_error_naming_both():
    st = make_shard("adam").export_state()
    with pytest.raises(ValueError, match="optimizer") as exc:
        make_shard("sgd", state=st)
    assert "adam" in str(exc.value) and "sgd" in str(exc.value)


def test_restore_with_other_optimizer_parameters_is_a_value_error():
    st = make_shard("momentum").export_state()
    with pytest.raises(ValueError, match="optimizer"):
        ParameterShard(0, initial(), parse_optimizer("momentum:momentum=0.5"), LR, "constant", state=st)


def test_restore_with_another_size_is_a_value_error_naming_both_sizes():
    st = make_shard("adam").export_state()
    with pytest.raises(ValueError) as exc:
        make_shard("adam", w0=initial(size=SIZE + 1), state=st)
    assert str(SIZE) in str(exc.value) and str(SIZE + 1) in str(exc.value)


# ---- 3: fencing ------------------------------------------------------------------------------------
def test_a_push_of_another_incarnation_is_fenced_with_tau_minus_one():
    shard = make_shard(incarnation=1)
    g = initial(seed=1)
    snap = snapshot(shard)
    old = shard.push(g, 0, replica_id=0, incarnation=0)
    assert not old.accepted and old.reason.startswith("fenced") and old.tau == -1
    default = shard.push(g, 0, replica_id=0)  # a caller that does not say is incarnation 0
    assert not default.accepted and default.reason.startswith("fenced")
    newer = shard.push(g, 0, replica_id=0, incarnation=2)
    assert not newer.accepted and newer.reason.startswith("fenced")
    assert_unchanged(shard, snap)
    ok = shard.push(g, 0, replica_id=1, incarnation=1)
    assert ok.accepted and ok.tau == 0 and shard.version == 1
    events = shard.drain_events()
    assert [e["tau"] for e in events] == [-1, -1, -1, 0]
    assert [e["accepted"] for e in events] == [False, False, False, True]
    assert all(e["reason"].startswith("fenced") for e in events[:3])
    assert shard.stats()["rejected"] == {"fenced": 3} and shard.stats()["incarnation"] == 1


def test_event_taus_are_never_below_minus_one_and_accepted_ones_are_not_negative():
    shard = make_shard(incarnation=2)
    g = initial(seed=1)
    pushes = [(g, 0, 2), (g, 0, 1), (g, 5, 2), (g, -3, 2), (g, 1, 2), (g, 0, 2), (g.astype(np.float16), 0, 2),
              (np.full(SIZE, np.nan, np.float32), 0, 2), (g, "x", 2), (g, 2, 3)]
    for grad, fetched, inc in pushes:
        shard.push(grad, fetched, replica_id=0, incarnation=inc)
    events = shard.drain_events()
    assert len(events) == len(pushes)
    assert all(e["tau"] >= -1 for e in events)
    assert all(e["tau"] >= 0 for e in events if e["accepted"])
    assert sum(e["accepted"] for e in events) == 3


# ---- 4: overflow guard -----------------------------------------------------------------------------
TORCH = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "adagrad": lambda p, lr: torch.optim.Adagrad(p, lr=lr, fused=True),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, fused=True),
}
HUGE_LR, HUGE = 1e10, np.float32(1e30)


def torch_step_overflows(name, w0, grad, lr, before=()):
    """The reference: a plain torch.optim step on the same input (after the steps of the gradients
    `before`) leaves something non-finite."""
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = TORCH[name]([p], lr)
    for g in [*before, grad]:
        p.grad = torch.tensor(g)
        opt.step()
    tensors = [p.detach()] + [t for t in opt.state[p].values() if torch.is_tensor(t)]
    return not all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_an_overflowing_first_step_is_rejected_and_leaves_everything_bitwise(name):
    # The first step: momentum's buffer and adam's moments do not exist yet and must not stay behind.
    w0, g = initial(), np.full(SIZE, HUGE, np.float32)
    assert torch_step_overflows(name, w0, g, HUGE_LR)
    shard = make_shard(name, lr=HUGE_LR, w0=w0)
    snap = snapshot(shard)
    result = shard.push(g, 0, replica_id=0)
    assert not result.accepted and result.reason.startswith("overflow")
    assert_unchanged(shard, snap)
    event = shard.drain_events()[0]
    assert not event["accepted"] and event["reason"].startswith("overflow")
    assert shard.stats()["rejected"] == {"overflow": 1}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_overflow_after_normal_steps_keeps_values_and_state_and_a_normal_push_still_applies(name):
    rng = np.random.default_rng(2)
    shard = make_shard(name, lr=HUGE_LR)
    small = [rng.standard_normal(SIZE).astype(np.float32) * np.float32(1e-12) for _ in range(3)]
    for g in small[:2]:
        assert shard.push(g, shard.version, replica_id=0).accepted
    snap = snapshot(shard)
    assert torch_step_overflows(name, initial(), np.full(SIZE, HUGE, np.float32), HUGE_LR, small[:2])
    for k in range(20):
        g = np.full(SIZE, HUGE, np.float32) * np.where(rng.random(SIZE) < 0.5, -1, 1).astype(np.float32)
        r = shard.push(g, shard.version, replica_id=k % 2)
        assert not r.accepted and r.reason.startswith("overflow")
        assert_unchanged(shard, snap)
    assert np.isfinite(shard.pull()[1]).all()
    # the guard undid the failed steps exactly: the next step is the one a twin without them takes
    twin = make_shard(name, lr=HUGE_LR)
    for g in small[:2]:
        twin.push(g, twin.version, replica_id=0)
    assert shard.push(small[2], shard.version, replica_id=0).accepted
    assert twin.push(small[2], twin.version, replica_id=0).accepted
    assert shard.version == twin.version == 3
    assert_bitwise(shard.pull()[1], twin.pull()[1])
    for key, arr in twin.optimizer.export_state().items():
        assert_bitwise(shard.optimizer.export_state()[key], arr)
    assert shard.stats()["rejected"] == {"overflow": 20}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_huge_learning_rate_with_an_ordinary_gradient_overflows_sgd_like_updates(name):
    # lr 1e38 x gradients of about 10: the parameters (not only the state) leave float32's range
    w0, g = initial(), np.full(SIZE, 10.0, np.float32)
    shard = make_shard(name, lr=1e38, w0=w0)
    snap = snapshot(shard)
    r = shard.push(g, 0, replica_id=0)
    if torch_step_overflows(name, w0, g, 1e38):
        assert not r.accepted and r.reason.startswith("overflow")
        assert_unchanged(shard, snap)
    else:  # adam and adagrad steps are bounded by lr: 1e38 still fits
        assert r.accepted
    assert np.isfinite(shard.pull()[1]).all()


# ---- 5: clip_norm ----------------------------------------------------------------------------------
def exact_norm_10_gradient():
    """100 entries of +-1 (the rest 0): its float32 sum of squares is exactly 100, the norm 10."""
    rng = np.random.default_rng(4)
    g = np.zeros(SIZE, np.float32)
    idx = rng.choice(SIZE, 100, replace=False)
    g[idx] = np.where(rng.random(100) < 0.5, -1.0, 1.0)
    return g


def test_clip_norm_scales_a_norm_10_gradient_like_a_norm_1_one_on_a_twin():
    g = exact_norm_10_gradient()
    assert math.sqrt(float(np.dot(g, g))) == 10.0
    clipped, twin = make_shard("sgd", clip_norm=1.0), make_shard("sgd")
    assert clipped.push(g, 0, replica_id=0).accepted
    assert twin.push(g * np.float32(1 / 10), 0, replica_id=0).accepted
    assert_bitwise(clipped.pull()[1], twin.pull()[1])
    assert not np.array_equal(clipped.pull()[1], initial())
    assert clipped.drain_events()[0]["grad_norm"] == 10.0  # the norm as pushed, before clipping


def test_clip_norm_leaves_a_gradient_within_the_norm_alone():
    g = exact_norm_10_gradient()
    clipped, plain = make_shard("sgd", clip_norm=10.0), make_shard("sgd")
    clipped.push(g, 0, 0)
    plain.push(g, 0, 0)
    assert_bitwise(clipped.pull()[1], plain.pull()[1])


def test_clip_norm_tames_a_gradient_whose_square_overflows():
    g = np.full(SIZE, HUGE, np.float32)  # finite, but its float32 sum of squares is inf
    shard = make_shard("sgd", lr=1.0, clip_norm=1.0)
    r = shard.push(g, 0, replica_id=0)
    assert r.accepted
    step = initial() - shard.pull()[1]
    assert np.isfinite(step).all()
    assert math.isclose(float(np.linalg.norm(step.astype(np.float64))), 1.0, rel_tol=1e-5)


def test_clip_norm_survives_export_and_restore_as_a_constructor_argument():
    g = exact_norm_10_gradient()
    a = make_shard("sgd", clip_norm=1.0)
    a.push(g, 0, 0)
    b = make_shard("sgd", clip_norm=1.0, state=decode(encode(a.export_state()), "x"))
    a.push(g, 1, 0)
    b.push(g, 1, 0)
    assert_bitwise(a.pull()[1], b.pull()[1])


# ---- 6: pushes_from --------------------------------------------------------------------------------
def test_pushes_from_counts_every_push_that_reached_the_shard_per_replica():
    shard = make_shard("sgd", rule="exponential:gamma=0.5", incarnation=1)
    g = initial(seed=1)
    shard.push(g, 0, replica_id=0, incarnation=1)                     # accepted
    shard.push(g, 0, replica_id=0, incarnation=0)                     # fenced
    shard.push(g.astype(np.float64), 1, replica_id=1, incarnation=1)  # dtype
    shard.push(g[:10], 1, replica_id=1, incarnation=1)                # shape
    shard.push(g, 7, replica_id=1, incarnation=1)                     # version
    shard.push(np.full(SIZE, np.inf, np.float32), 1, replica_id=2, incarnation=1)  # nonfinite
    shard.push([1.0] * SIZE, 1, replica_id=2, incarnation=1)          # type
    shard.push(g, 1, replica_id=2, incarnation=1)                     # accepted
    stats = shard.stats()
    assert stats["pushes_from"] == {0: 2, 1: 3, 2: 3}
    assert sum(stats["pushes_from"].values()) == 8
    assert stats["version"] == 2
    assert sum(stats["rejected"].values()) == 6
    assert stats["rejected"] == {"fenced": 1, "dtype": 1, "shape": 1, "version": 1, "nonfinite": 1, "type": 1}


def test_pushes_from_counts_overflow_and_rule_rejections_too():
    from ps.server.rules import Decision, Rule

    def refuse_stale(ctx):
        return Decision(0.0, accept=False, reason="stale: too old") if ctx.tau > 0 else 1.0

    shard = make_shard("sgd", lr=1e38, rule=Rule("refuse_stale", refuse_stale, {}))
    shard.push(np.full(SIZE, 10.0, np.float32), 0, replica_id=3)  # overflow
    shard.push(initial(seed=2) * np.float32(1e-40), 0, replica_id=4)  # accepted (a tiny step)
    shard.push(initial(seed=2), 0, replica_id=4)  # tau 1: rejected by the rule
    assert shard.stats()["pushes_from"] == {3: 1, 4: 2}
    assert shard.stats()["rejected"] == {"overflow": 1, "stale": 1}


# ---- 7: ps.common.faults ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("30s", Cadence(30.0, "s")), ("500", Cadence(500.0, "updates")), ("0", Cadence(0.0, "updates")),
    ("1.5s", Cadence(1.5, "s")), (" 10s ", Cadence(10.0, "s")), (500, Cadence(500.0, "updates")),
])
def test_parse_cadence_good(spec, expected):
    assert parse_cadence(spec) == expected


@pytest.mark.parametrize("spec", ["5m", "1.5", "-1", "", "s", "30 s", "1e3", "abc"])
def test_parse_cadence_bad_is_a_user_error_naming_the_value(spec):
    with pytest.raises(UserError) as exc:
        parse_cadence(spec)
    msg = str(exc.value)
    assert "checkpoint_every" in msg and f"'{spec}'" in msg and "\n" not in msg


def test_parse_faults_good_specs_in_the_order_given():
    faults = parse_faults("replica:1@30s, shard:0@50%,replica:random@200,shard:1@100%,replica:0@2.5s", 2, 2)
    assert faults == [Fault("replica", 1, 30.0, "s"), Fault("shard", 0, 50.0, "%"),
                      Fault("replica", None, 200.0, "steps"), Fault("shard", 1, 100.0, "%"),
                      Fault("replica", 0, 2.5, "s")]
    assert [str(f) for f in faults] == ["replica:1@30s", "shard:0@50%", "replica:random@200",
                                        "shard:1@100%", "replica:0@2.5s"]


@pytest.mark.parametrize("spec", [None, "", "   "])
def test_parse_faults_nothing_is_no_faults(spec):
    assert parse_faults(spec, 2, 2) == []


@pytest.mark.parametrize("spec, item, words", [
    ("replica:2@10", "replica:2@10", ["2 replicas", "0..1"]),
    ("replica:0@10,shard:5@1s", "shard:5@1s", ["2 shards", "0..1"]),
    ("shard:0@101%", "shard:0@101%", ["0..100"]),
    ("replica1@30s", "replica1@30s", ["ROLE:WHICH@WHEN"]),
    ("node:0@1", "node:0@1", ["ROLE:WHICH@WHEN"]),
    ("replica:0@", "replica:0@", ["ROLE:WHICH@WHEN"]),
    ("replica:-1@5", "replica:-1@5", ["ROLE:WHICH@WHEN"]),
    ("replica:0@5m", "replica:0@5m", ["ROLE:WHICH@WHEN"]),
    ("replica:0@10;shard:0@20", "replica:0@10;shard:0@20", ["ROLE:WHICH@WHEN"]),
])
def test_parse_faults_bad_is_a_user_error_naming_the_item(spec, item, words):
    with pytest.raises(UserError) as exc:
        parse_faults(spec, 2, 2)
    msg = str(exc.value)
    assert "inject_faults" in msg and f"'{item}'" in msg and "\n" not in msg
    assert all(w in msg for w in words), msg


def test_fault_injector_fires_each_fault_once_at_its_time_for_each_unit():
    faults = parse_faults("replica:0@10s,shard:1@50%,replica:1@20", 2, 2)
    inj = FaultInjector(faults, seed=0)
    assert inj.due(9.99, 0, 100) == []
    assert inj.due(10.0, 0, 100) == [faults[0]]
    assert inj.due(11.0, 0, 100) == []
    assert inj.due(12.0, 19, 100) == []
    assert inj.due(12.5, 20, 100) == [faults[2]]
    assert inj.due(13.0, 49, 100) == []
    assert inj.due(14.0, 50, 100) == [faults[1]]
    assert inj.due(1e9, 10**9, 100) == []
    assert inj.pending == []


def test_fault_injector_fires_all_overdue_faults_at_one_poll():
    faults = parse_faults("replica:0@10s,shard:1@50%,replica:1@20", 2, 2)
    inj = FaultInjector(faults, seed=0)
    assert inj.due(100.0, 100, 100) == faults
    assert inj.due(200.0, 200, 100) == []


def test_fault_injector_percent_of_a_zero_step_run_does_not_divide_by_zero():
    inj = FaultInjector(parse_faults("shard:0@0%", 1, 1), seed=0)
    assert inj.due(0.0, 0, 0) == [Fault("shard", 0, 0.0, "%")]


def test_fault_injector_pick_fixed_and_seeded_random():
    fixed, rand = Fault("replica", 1, 0.0, "s"), Fault("replica", None, 0.0, "s")
    inj = FaultInjector([], seed=3)
    assert inj.pick(fixed, [0, 1, 2]) == 1
    assert inj.pick(fixed, [0, 2]) is None
    assert inj.pick(fixed, []) is None
    assert inj.pick(rand, []) is None
    draws = [FaultInjector([], seed=3).pick(rand, list(range(10))) for _ in range(3)]
    assert len(set(draws)) == 1 and draws[0] in range(10)
    a, b = FaultInjector([], seed=11), FaultInjector([], seed=11)
    seq_a = [a.pick(rand, [4, 5, 6, 7]) for _ in range(20)]
    assert seq_a == [b.pick(rand, [4, 5, 6, 7]) for _ in range(20)]
    assert set(seq_a) <= {4, 5, 6, 7} and len(set(seq_a)) > 1


# ---- 8: config validation of the new fields ----------------------------------------------------------
@pytest.mark.parametrize("values, field", [
    ({"clip_norm": 0}, "clip_norm"), ({"clip_norm": -1}, "clip_norm"),
    ({"clip_norm": float("inf")}, "clip_norm"), ({"clip_norm": float("nan")}, "clip_norm"),
    ({"clip_norm": "big"}, "clip_norm"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"), ({"keep_checkpoints": -2}, "keep_checkpoints"),
    ({"keep_checkpoints": 1.5}, "keep_checkpoints"),
    ({"max_replica_restarts": -1}, "max_replica_restarts"),
    ({"max_shard_restarts": -1}, "max_shard_restarts"),
    ({"max_shard_restarts": "3"}, "max_shard_restarts"),
    ({"divergence_factor": 0.5}, "divergence_factor"), ({"divergence_factor": 1}, "divergence_factor"),
    ({"divergence_factor": -1}, "divergence_factor"),
    ({"divergence_factor": float("inf")}, "divergence_factor"),
    ({"divergence_factor": float("nan")}, "divergence_factor"),
    ({"checkpoint_every": "x"}, "checkpoint_every"), ({"checkpoint_every": "5m"}, "checkpoint_every"),
    ({"checkpoint_every": 1.5}, "checkpoint_every"), ({"checkpoint_every": True}, "checkpoint_every"),
    ({"checkpoint_every": "-1"}, "checkpoint_every"),
    ({"inject_faults": "replica:9@10%", "replicas": 2}, "inject_faults"),
    ({"inject_faults": "shard:2@10", "shards": 2}, "inject_faults"),
    ({"inject_faults": "replica:0@10x"}, "inject_faults"),
    ({"inject_faults": 5}, "inject_faults"),
])
def test_bad_new_config_fields_are_user_errors_naming_the_field(values, field):
    with pytest.raises(UserError) as exc:
        from_mapping(values, "flags")
    msg = str(exc.value)
    assert field in msg and "\n" not in msg, msg


@pytest.mark.parametrize("values, field", [
    ({"clip_norm": 0}, "--clip-norm"), ({"keep_checkpoints": 0}, "--keep-checkpoints"),
    ({"max_replica_restarts": -1}, "--max-replica-restarts"),
    ({"max_shard_restarts": -1}, "--max-shard-restarts"),
    ({"divergence_factor": 0.5}, "--divergence-factor"),
])
def test_range_errors_of_the_new_fields_name_the_flag_to_fix(values, field):
    with pytest.raises(UserError, match=field):
        from_mapping(values, "flags")


def test_good_new_config_fields_pass_and_keep_their_values():
    c = from_mapping({"clip_norm": 0.5, "checkpoint_every": 500, "keep_checkpoints": 1,
                      "max_replica_restarts": 0, "max_shard_restarts": 0, "divergence_factor": 0,
                      "inject_faults": "replica:1@30s,shard:1@50%", "replicas": 2, "shards": 2}, "flags")
    assert (c.clip_norm, c.checkpoint_every, c.keep_checkpoints) == (0.5, "500", 1)
    assert (c.max_replica_restarts, c.max_shard_restarts, c.divergence_factor) == (0, 0, 0.0)
    assert from_mapping({"divergence_factor": 1.5, "checkpoint_every": "0"}, "flags").divergence_factor == 1.5
    assert from_mapping({}, "flags").clip_norm is None
