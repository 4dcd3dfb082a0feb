"""Staleness-aware learning-rate rules: pure functions of a push's staleness, and their registry.

A rule is `fn(ctx: StalenessContext, **params) -> float | Decision`. A float is the factor the
shard multiplies its learning rate by. A `Decision` can also reject the push (gating, e.g.
`threshold`); transforms that compensate the gradient itself (DC-ASGD) are ps.server.transforms.
"""

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ps.common.errors import UserError
from ps.common.specs import is_plugin_path, load_plugin, parse_spec


@dataclass(frozen=True)
class StalenessContext:
    """What a shard knows when a push arrives. `tau` = shard version now - version the gradient used."""
    tau: int
    mean_tau: float  # running mean of tau over this shard's accepted pushes, this one included
    version: int     # the shard's version before this push is applied


@dataclass(frozen=True)
class Decision:
    scale: float
    accept: bool = True
    reason: Optional[str] = None  # why a push was rejected, for the event log


RuleFn = Callable[..., Union[float, Decision]]


class RuleError(ValueError):
    """A rule returned something a shard cannot use."""


def constant(ctx: StalenessContext, alpha: float = 1.0) -> float:
    """Dean et al. 2012: staleness is ignored."""
    return alpha


def inverse(ctx: StalenessContext, alpha: float = 1.0) -> float:
    """Zhang, Gupta, Lian, Liu 2016: alpha / tau, with tau 0 treated as 1."""
    return alpha / max(1, ctx.tau)


def inverse_mean(ctx: StalenessContext, alpha: float = 1.0) -> float:
    """Rudra (Gupta et al.): alpha over the running mean staleness, floored at 1."""
    return alpha / max(1.0, ctx.mean_tau)


def exponential(ctx: StalenessContext, alpha: float = 1.0, gamma: float = 0.9) -> float:
    """alpha * gamma**tau: halves the step every log(2)/-log(gamma) versions of staleness."""
    return alpha * gamma ** ctx.tau


def delay_adaptive(ctx: StalenessContext, alpha: float = 1.0, tau_c: float = 1.0) -> float:
    """alpha * min(1, tau_c / max(tau, 1)): the full step up to a delay of tau_c, then alpha*tau_c/tau.

    The shape of the delay-adaptive stepsizes of Mishchenko, Bach, Even, Woodworth 2022
    ("Asynchronous SGD Beats Minibatch SGD Under Arbitrary Delays") and Koloskova, Stich, Jaggi
    2022 ("Sharper Convergence Guarantees for Asynchronous SGD..."): a step that is constant for
    small delays and falls as 1/tau for large ones, min(eta, c/tau). Not checked against the papers
    (their text was not reachable from here): their constants, which involve the smoothness L and
    the number of workers, are folded into alpha and tau_c. tau_c near the number of replicas (the
    typical delay) keeps ordinary pushes at the full step; tau_c=1 is `inverse`.
    """
    return alpha * min(1.0, tau_c / max(1, ctx.tau))


def threshold(ctx: StalenessContext, alpha: float = 1.0, max_tau: float = math.inf) -> Union[float, Decision]:
    """alpha up to a delay of max_tau; a staler push is rejected (counted, its step not taken).

    The thresholded variant of the delay-adaptive stepsizes above (a gradient staler than a
    threshold gets stepsize 0, i.e. is dropped), attributed to Koloskova, Stich, Jaggi 2022 and
    Mishchenko et al. 2022; like `delay_adaptive`, the form is not checked against the papers.
    Without max_tau nothing is too stale (the rule is `constant`): give e.g. threshold:max_tau=8.
    """
    if ctx.tau <= max_tau:
        return alpha
    return Decision(scale=0.0, accept=False, reason=f"stale: tau {ctx.tau} > max_tau {max_tau:g}")


RULES: dict[str, RuleFn] = {
    "constant": constant,
    "inverse": inverse,
    "inverse_mean": inverse_mean,
    "exponential": exponential,
    "delay_adaptive": delay_adaptive,
    "threshold": threshold,
}

# Allowed range of each built-in parameter: (low, high, low inclusive). tau_c 0 would make every
# step 0 (a run that silently learns nothing); max_tau 0 accepts only fresh pushes.
_BOUNDS = {"alpha": (0.0, math.inf, False), "gamma": (0.0, 1.0, False),
           "tau_c": (0.0, math.inf, False), "max_tau": (0.0, math.inf, True)}


@dataclass(frozen=True)
class Rule:
    """A rule bound to its parameters; `decide` is what the shard calls per push."""
    name: str
    fn: RuleFn
    params: dict

    def decide(self, ctx: StalenessContext) -> Decision:
        out = self.fn(ctx, **self.params)
        decision = out if isinstance(out, Decision) else Decision(scale=float(out))
        if not (math.isfinite(decision.scale) and decision.scale >= 0):
            raise RuleError(f"lr rule '{self.name}' returned scale {decision.scale} at tau={ctx.tau}; "
                             "a rule must return a finite number >= 0")
        return decision


def make_rule(spec: str) -> Rule:
    """Build a rule from '--lr-rule' text; every problem is a UserError raised before training."""
    name, params = parse_spec(spec, "lr_rule")
    if name in RULES:
        fn = RULES[name]
        _check_builtin_params(name, fn, params)
    elif name.partition(":")[0] in RULES:
        raise UserError(f"lr_rule '{spec}': parameters are key=value, e.g. {name.partition(':')[0]}:alpha=0.5")
    elif is_plugin_path(name):
        fn = load_plugin(name, "lr_rule")
        if not callable(fn):
            raise UserError(f"lr_rule '{name}' is not callable; it must be fn(ctx, **params) -> float")
        _check_signature(name, fn, params)
    else:
        raise UserError(f"lr_rule is '{name}': choose one of {', '.join(RULES)} "
                        "or give your own as package.module:function")
    rule = Rule(name, fn, params)
    _smoke_test(rule)
    return rule


def _check_builtin_params(name: str, fn: RuleFn, params: dict) -> None:
    _check_signature(name, fn, params)
    for key, value in params.items():
        low, high, low_ok = _BOUNDS[key]
        if not ((value >= low if low_ok else value > low) and value <= high):
            raise UserError(f"lr_rule '{name}': {key}={value} is out of range; "
                            f"allowed {low} {'<=' if low_ok else '<'} {key} <= {high}")


def _check_signature(name: str, fn: RuleFn, params: dict) -> None:
    try:
        inspect.signature(fn).bind(StalenessContext(0, 0.0, 0), **params)
    except TypeError as exc:
        raise UserError(f"lr_rule '{name}' does not take these parameters {sorted(params)}: {exc}") from None
    except ValueError:
        pass  # builtins without a signature: the smoke test below calls them anyway


def _smoke_test(rule: Rule) -> None:
    """Call the rule on a few staleness values now, so a broken plug-in fails before any actor starts."""
    for tau in (0, 1, 4, 64):
        try:
            rule.decide(StalenessContext(tau=tau, mean_tau=float(tau), version=tau))
        except RuleError as exc:
            raise UserError(str(exc)) from None
        except Exception as exc:  # a user's plug-in may raise anything: report it at the boundary
            raise UserError(f"lr_rule '{rule.name}' failed at tau={tau}: {exc}") from None
