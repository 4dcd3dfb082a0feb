"""Delay-adaptive lr rules: delay_adaptive's values and shape, threshold's gating, their bounds."""

import math

import pytest

from ps.common.errors import UserError
from ps.server.rules import Decision, StalenessContext, make_rule


def ctx(tau):
    return StalenessContext(tau=tau, mean_tau=float(tau), version=1000)


@pytest.mark.parametrize("spec, tau, expected", [
    ("delay_adaptive:alpha=0.5,tau_c=4", 0, 0.5),
    ("delay_adaptive:alpha=0.5,tau_c=4", 4, 0.5),     # full step up to tau_c
    ("delay_adaptive:alpha=0.5,tau_c=4", 8, 0.25),    # then alpha * tau_c / tau
    ("delay_adaptive:alpha=2,tau_c=2.5", 10, 0.5),    # tau_c need not be whole
    ("delay_adaptive", 4, 0.25),                      # defaults alpha=1, tau_c=1: `inverse`
    ("delay_adaptive:tau_c=0.5", 0, 0.5),             # tau 0 counts as 1
])
def test_delay_adaptive_values(spec, tau, expected):
    assert make_rule(spec).decide(ctx(tau)) == Decision(expected)


def test_delay_adaptive_is_constant_then_falls_as_one_over_tau():
    rule = make_rule("delay_adaptive:alpha=1,tau_c=8")
    scales = [rule.decide(ctx(t)).scale for t in range(200)]
    assert scales[:9] == [1.0] * 9
    assert all(a > b > 0 for a, b in zip(scales[8:], scales[9:]))
    assert all(math.isclose(scales[t] * t, 8.0) for t in range(8, 200))


def test_delay_adaptive_with_tau_c_one_equals_inverse():
    a, b = make_rule("delay_adaptive:alpha=0.3,tau_c=1"), make_rule("inverse:alpha=0.3")
    assert all(math.isclose(a.decide(ctx(t)).scale, b.decide(ctx(t)).scale) for t in range(100))


def test_threshold_accepts_up_to_max_tau_and_rejects_staler_pushes():
    rule = make_rule("threshold:alpha=0.5,max_tau=3")
    assert [rule.decide(ctx(t)) for t in range(4)] == [Decision(0.5)] * 4
    assert rule.decide(ctx(4)) == Decision(0.0, accept=False, reason="stale: tau 4 > max_tau 3")
    assert rule.decide(ctx(100)).reason.split(":")[0] == "stale"  # the shard counts it under "stale"


def test_threshold_zero_accepts_only_fresh_pushes_and_the_default_rejects_none():
    fresh = make_rule("threshold:max_tau=0")
    assert fresh.decide(ctx(0)) == Decision(1.0)
    assert not fresh.decide(ctx(1)).accept
    anything = make_rule("threshold")
    assert all(anything.decide(ctx(t)) == Decision(1.0) for t in (0, 1, 64, 10**6))


def test_threshold_accepts_a_fractional_max_tau():
    rule = make_rule("threshold:max_tau=2.5")
    assert rule.decide(ctx(2)).accept and not rule.decide(ctx(3)).accept
    assert rule.decide(ctx(3)).reason == "stale: tau 3 > max_tau 2.5"


@pytest.mark.parametrize("spec, words", [
    ("delay_adaptive:tau_c=0", ["lr_rule", "tau_c=0.0", "out of range", "0.0 < tau_c"]),
    ("delay_adaptive:tau_c=-1", ["tau_c"]),
    ("delay_adaptive:alpha=0", ["alpha"]),
    ("delay_adaptive:max_tau=3", ["parameters", "max_tau"]),
    ("threshold:max_tau=-1", ["lr_rule", "max_tau=-1.0", "0.0 <= max_tau"]),
    ("threshold:tau_c=3", ["parameters", "tau_c"]),
    ("threshold:max_tau=inf", ["finite"]),
    ("threshold:alpha=-0.5", ["alpha"]),
])
def test_bad_delay_rule_specs_are_user_errors(spec, words):
    with pytest.raises(UserError) as err:
        make_rule(spec)
    assert all(w in str(err.value) for w in words), str(err.value)
