"""Learning-rate schedules over a run: pure functions of progress in [0, 1] (updates applied / planned)."""

import math
from typing import Callable

from ps.common.errors import UserError


def constant(progress: float) -> float:
    return 1.0


def cosine(progress: float) -> float:
    """Half a cosine from 1 down to 0 at the end of the planned updates."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def linear(progress: float) -> float:
    return 1.0 - min(1.0, progress)


SCHEDULES: dict[str, Callable[[float], float]] = {"constant": constant, "cosine": cosine, "linear": linear}


def get_schedule(name: str) -> Callable[[float], float]:
    if name not in SCHEDULES:
        raise UserError(f"lr_schedule is '{name}': choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]
