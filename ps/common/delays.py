"""Step-time models: how long a learner's compute takes, drawn per step from a seeded generator.

One language serves two places: `downpour simulate --delay` (simulated seconds per step of a
logical learner) and `downpour train --inject-delay` (real seconds a replica sleeps after each
compute, to reproduce stragglers on a machine whose replicas all run alike). Pure numpy.

    constant[:mean=S]                      every step takes S
    uniform[:mean=S,jitter=J]              S * U(1 - J, 1 + J)
    exp[:mean=S]                           exponential with mean S
    lognormal[:mean=S,sigma=G]             lognormal with mean S (heavy tail for G near 1)
    straggler[:mean=S,jitter=J,p=P,factor=F]  uniform, and F times longer with probability P
    slow[:mean=S,jitter=J,count=K,factor=F]   uniform, and learners 0..K-1 F times longer at
                                           every step (slower machines)
    replay:RUN_DIR                         each replica's step times in that run's event log
                                           (simulate only: ps.obs.replay reads the log)
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ps.common.errors import UserError
from ps.common.specs import parse_spec

DEFAULT_MEAN_S = 0.01  # about one MLP step on this kind of machine; only ratios matter in simulation
KINDS = {"constant": {"mean": DEFAULT_MEAN_S},
         "uniform": {"mean": DEFAULT_MEAN_S, "jitter": 0.1},
         "exp": {"mean": DEFAULT_MEAN_S},
         "lognormal": {"mean": DEFAULT_MEAN_S, "sigma": 1.0},
         "straggler": {"mean": DEFAULT_MEAN_S, "jitter": 0.1, "p": 0.1, "factor": 5.0},
         "slow": {"mean": DEFAULT_MEAN_S, "jitter": 0.1, "count": 1, "factor": 3.0}}
REPLAY = "replay"


@dataclass(frozen=True)
class DelayModel:
    kind: str
    params: dict = field(default_factory=dict)
    replayed: Optional[tuple] = None  # replay: per replica of the source run, its step times (s)
    text: str = ""

    def stream(self, seed: int, learner: int) -> "DelayStream":
        """The step times of one learner: its own generator, so adding learners changes no
        other learner's draws."""
        return DelayStream(self, np.random.default_rng([seed, learner, 0xDE1A]), learner)

    @property
    def mean_s(self) -> float:
        """The mean step time (for `slow`, of the learners that are not slowed)."""
        if self.replayed is not None:
            return float(np.mean(np.concatenate(self.replayed)))
        p = self.params
        return p["mean"] * (1 + p["p"] * (p["factor"] - 1) if self.kind == "straggler" else 1)


class DelayStream:
    def __init__(self, model: DelayModel, rng: np.random.Generator, learner: int):
        self.model, self.rng = model, rng
        self._replay = model.replayed[learner % len(model.replayed)] if model.replayed else None
        self._next = 0
        self._slowed = model.kind == "slow" and learner < model.params["count"]

    def draw(self) -> float:
        m, p = self.model, self.model.params
        if self._replay is not None:  # in the recorded order, round and round
            value = self._replay[self._next % len(self._replay)]
            self._next += 1
            return float(value)
        if m.kind == "constant":
            return p["mean"]
        if m.kind == "exp":
            return float(self.rng.exponential(p["mean"]))
        if m.kind == "lognormal":
            sigma = p["sigma"]
            return float(self.rng.lognormal(math.log(p["mean"]) - sigma * sigma / 2, sigma))
        base = p["mean"] * float(self.rng.uniform(1 - p["jitter"], 1 + p["jitter"]))
        if m.kind == "straggler" and self.rng.random() < p["p"] or self._slowed:
            return base * p["factor"]
        return base


def parse_delay(spec: str, field_name: str = "delay",
                step_times: Optional[Callable[[str, str], list]] = None) -> DelayModel:
    """`spec` as the module docstring writes it; every problem is a UserError naming the field.
    `step_times(run_dir, field_name)` reads a run's step times for `replay:` (ps.obs.replay:
    the event log is an upper layer's); without it, `replay:` is refused."""
    if isinstance(spec, str) and spec.strip().startswith(REPLAY + ":"):
        if step_times is None:
            raise UserError(f"{field_name} {spec.strip()!r}: replay:RUN_DIR is for `downpour "
                            "simulate --delay`; give a distribution here, e.g. uniform:mean=0.005")
        source = spec.strip()[len(REPLAY) + 1:]
        return DelayModel(REPLAY, {}, tuple(step_times(source, field_name)), spec.strip())
    name, params = parse_spec(spec, field_name)
    if name not in KINDS:
        raise UserError(f"{field_name} is '{name}': choose one of {', '.join(KINDS)} or "
                        f"replay:RUN_DIR (e.g. uniform:mean=0.005,jitter=0.1)")
    unknown = sorted(set(params) - set(KINDS[name]))
    if unknown:
        raise UserError(f"{field_name} '{name}' has no parameter '{unknown[0]}' (its parameters: "
                        f"{', '.join(KINDS[name])})")
    full = {**KINDS[name], **params}
    _check(name, full, field_name)
    return DelayModel(name, full, None, spec.strip())


def _check(name: str, p: dict, field_name: str) -> None:
    if not p["mean"] > 0:
        raise UserError(f"{field_name} '{name}': mean={p['mean']:g} must be > 0 (seconds per step)")
    if "jitter" in p and not 0 <= p["jitter"] < 1:
        raise UserError(f"{field_name} '{name}': jitter={p['jitter']:g} must be in [0, 1)")
    if "sigma" in p and not 0 < p["sigma"] <= 3:
        raise UserError(f"{field_name} '{name}': sigma={p['sigma']:g} must be in (0, 3]")
    if "p" in p and not 0 <= p["p"] <= 1:
        raise UserError(f"{field_name} '{name}': p={p['p']:g} must be in [0, 1]")
    if "count" in p and not (p["count"] >= 0 and float(p["count"]).is_integer()):
        raise UserError(f"{field_name} '{name}': count={p['count']:g} must be a whole number of "
                        "learners, 0 or more")
    if "factor" in p and not p["factor"] >= 1:
        raise UserError(f"{field_name} '{name}': factor={p['factor']:g} must be >= 1")


def step_times_from(push_times: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Per replica, the gaps between its consecutive pushes (its step times), dropping replicas
    with fewer than two pushes."""
    gaps = [np.diff(np.sort(np.asarray(t, dtype=np.float64))) for t in push_times]
    return [g[g > 0] for g in gaps if (g > 0).any()]
