"""The divergence alarm, pure: a NaN or Inf training loss, or a test loss `factor` times its best,
means the run is diverging (the job then stops it and keeps its last good checkpoint)."""

import math
from typing import Optional


class DivergenceAlarm:
    def __init__(self, factor: float):
        """`factor` 0: only non-finite losses raise the alarm."""
        self.factor = factor
        self.best: Optional[float] = None  # the lowest finite test loss so far

    def training(self, replica: int, loss: Optional[float]) -> Optional[str]:
        """Why the run diverges, from a replica's last training loss, or None."""
        if loss is not None and not math.isfinite(loss):
            return f"replica {replica}'s training loss is {loss}"
        return None

    def evaluation(self, loss: Optional[float]) -> Optional[str]:
        """Why the run diverges, from a test loss (None: it was not finite), or None; remembers
        the best."""
        if loss is None or not math.isfinite(loss):
            return f"the test loss is {'not finite' if loss is None else loss}"
        if self.factor and self.best is not None and loss > self.factor * self.best:
            return f"the test loss {loss:.4g} is over {self.factor:g}x its best {self.best:.4g}"
        self.best = loss if self.best is None else min(self.best, loss)
        return None
