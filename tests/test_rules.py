"""Staleness rules: values at tau=0, monotone non-increasing, positive, parameters, plug-ins, gating."""

import math
import sys
import textwrap

import pytest

from ps.common.errors import UserError
from ps.server.rules import RULES, Decision, StalenessContext, make_rule

TAUS = range(0, 200)


def ctx(tau, mean=None):
    return StalenessContext(tau=tau, mean_tau=float(tau if mean is None else mean), version=1000)


@pytest.mark.parametrize("spec, expected", [
    ("constant", 1.0), ("inverse", 1.0), ("inverse_mean", 1.0), ("exponential", 1.0),
    ("constant:alpha=0.5", 0.5), ("inverse:alpha=2", 2.0), ("exponential:alpha=3,gamma=0.5", 3.0),
])
def test_scale_at_tau_zero_is_alpha(spec, expected):
    assert make_rule(spec).decide(ctx(0)).scale == expected


@pytest.mark.parametrize("name", list(RULES))
def test_rules_are_positive_and_non_increasing_in_tau(name):
    rule = make_rule(name)
    scales = [rule.decide(ctx(t)).scale for t in TAUS]
    assert all(s > 0 and math.isfinite(s) for s in scales)
    assert all(a >= b for a, b in zip(scales, scales[1:]))


def test_inverse_and_exponential_values():
    assert make_rule("inverse").decide(ctx(4)).scale == 0.25
    assert make_rule("inverse:alpha=0.5").decide(ctx(1)).scale == 0.5
    assert make_rule("exponential:gamma=0.5").decide(ctx(3)).scale == 0.125
    assert make_rule("inverse_mean").decide(ctx(9, mean=4.0)).scale == 0.25
    assert make_rule("inverse_mean").decide(ctx(9, mean=0.5)).scale == 1.0  # mean floored at 1


@pytest.mark.parametrize("spec, words", [
    ("nosuchrule", ["lr_rule", "constant", "inverse"]),
    ("exponential:gamma=1.5", ["gamma", "range"]),
    ("exponential:gamma=0", ["gamma"]),
    ("inverse:alpha=-1", ["alpha"]),
    ("inverse:alpha=nan", ["alpha"]),
    ("inverse:beta=2", ["parameters", "beta"]),
    ("inverse:alpha", ["key=value"]),
    ("exponential:gamma=abc", ["not a number"]),
    ("", ["empty"]),
    ("no_such_module_xyz:rule", ["cannot import"]),
    ("math:no_such_function", ["no attribute"]),
])
def test_bad_rule_specs_are_user_errors(spec, words):
    with pytest.raises(UserError) as err:
        make_rule(spec)
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text(textwrap.dedent("""
        from ps.server.rules import Decision

        def halve_after(ctx, limit=3.0):
            return 1.0 if ctx.tau <= limit else 0.5

        def gate(ctx, limit=2.0):
            return Decision(1.0) if ctx.tau <= limit else Decision(0.0, accept=False, reason="too stale")

        def broken(ctx):
            return -1.0

        def raises(ctx):
            raise ZeroDivisionError("oops")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rules"
    sys.modules.pop("my_rules", None)


def test_user_rule_with_parameters(plugin_module):
    rule = make_rule(f"{plugin_module}:halve_after:limit=1")
    assert [rule.decide(ctx(t)).scale for t in (0, 1, 2)] == [1.0, 1.0, 0.5]


def test_user_rule_can_gate(plugin_module):
    rule = make_rule(f"{plugin_module}:gate")
    assert rule.decide(ctx(2)) == Decision(1.0)
    assert rule.decide(ctx(3)) == Decision(0.0, accept=False, reason="too stale")


@pytest.mark.parametrize("name, words", [("broken", ["finite number >= 0"]), ("raises", ["oops", "tau=0"])])
def test_broken_user_rules_fail_before_training(plugin_module, name, words):
    with pytest.raises(UserError) as err:
        make_rule(f"{plugin_module}:{name}")
    assert all(w in str(err.value) for w in words), str(err.value)
