"""Bounds on what a server optimizer's step can reach, carried from step to step, pure.

A shard must never let a step make its parameters or optimizer state non-finite, and the plain
way to be sure is a guard: copy every tensor before the step, check every one after it, put the
copies back if one went non-finite. That is two more passes over each tensor for every push. A
step whose result provably stays far inside float32's range needs none of it: with an upper bound
B[k] >= max |x| of each tensor k (the parameters "" and each state tensor) and the gradient's
L2 norm (>= its largest element), the update formulas give bounds after the step. While those
stay below SAFE the shard steps unguarded; when they would not, it measures them afresh (one
read of each tensor) and, if they still would not, guards the step.

The bounds, with G >= max |g| (and wd the L2 weight decay, g' = g + wd * p, G' = G + wd * B[""]):

    SGD:      buffer  b = mu * b + (1 - dampening) * g'     <= mu * B[b] + G'
              update  b, or g' + mu * b (Nesterov), or g' (no momentum)
    Adam:     m = b1 * m + (1 - b1) * g'                   <= b1 * B[m] + (1 - b1) * G'
              v = b2 * v + (1 - b2) * g'^2                 <= b2 * B[v] + (1 - b2) * G'^2
              update = lr / (1 - b1^t) * m / (sqrt(v_hat) + eps) <= lr * B[m] / ((1 - b1) * eps)
    Adagrad:  s = s + g'^2                                 <= B[s] + G'^2
              update = clr * g' / (sqrt(s) + eps), |g'| <= sqrt(s), so <= lr * (1 + TINY / eps)
              (TINY: the largest |g'| whose square underflows to 0 in float32)

and the parameters' bound grows by lr times the update's. Adam and Adagrad need eps > 0.
"""

from typing import Optional

SAFE = 1e37     # far under float32's 3.4e38: float32 rounding of any of the above cannot reach it
TINY = 1.1e-19  # float32 squares below 1.2e-38 (its smallest normal) lose their precision


def next_bounds(family: str, group: dict, bounds: dict, lr: float, grad_max: float) -> Optional[dict]:
    """The bounds after one step at rate `lr` on a gradient whose largest element is at most
    `grad_max`, from `bounds` before it (a state tensor not made yet: 0); or None when they do
    not stay below SAFE (or the family has no bound here)."""
    p = bounds.get("", 0.0)
    g = grad_max + group.get("weight_decay", 0.0) * p
    after = _STEPS[family](group, bounds, g, lr) if family in _STEPS else None
    if after is None:
        return None
    update, state = after
    after = {"": p + lr * update, **state}
    return after if all(b < SAFE for b in after.values()) and g < SAFE else None


def _sgd(group: dict, bounds: dict, g: float, lr: float):
    mu = group.get("momentum", 0.0)
    if not mu:
        return g, {}
    buffer = mu * bounds.get("momentum_buffer", 0.0) + g
    return (g + mu * buffer if group.get("nesterov") else buffer), {"momentum_buffer": buffer}


def _adam(group: dict, bounds: dict, g: float, lr: float):
    b1, b2 = group["betas"]
    if not group["eps"] > 0 or group.get("amsgrad") or g * g >= SAFE:
        return None
    m = b1 * bounds.get("exp_avg", 0.0) + (1 - b1) * g
    v = b2 * bounds.get("exp_avg_sq", 0.0) + (1 - b2) * g * g
    return m / ((1 - b1) * group["eps"]), {"exp_avg": m, "exp_avg_sq": v}


def _adagrad(group: dict, bounds: dict, g: float, lr: float):
    if not group["eps"] > 0 or g * g >= SAFE:
        return None
    return 1.0 + TINY / group["eps"], {"sum": bounds.get("sum", 0.0) + g * g}


_STEPS = {"sgd": _sgd, "adam": _adam, "adagrad": _adagrad}
