"""One progress line in the terminal: epoch, elapsed, ETA, samples/s, last accuracy, tau p50; redrawn on a TTY."""

import collections
import sys
import time
from typing import Callable, Optional, TextIO

PLAIN_EVERY_S = 10.0  # without a TTY (CI, a log file) print a line this often instead of redrawing
RATE_WINDOW = 10      # samples/s and the ETA over the last this many updates, not since start-up


def clock_text(seconds: Optional[float]) -> str:
    """12.4 -> '0:12', 3725 -> '1:02:05'; None (not known yet) -> '-'."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLine:
    """`clock` (seconds, monotonic) is injectable so tests control elapsed time and the ETA."""

    def __init__(self, total_epochs: float, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total_epochs
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self.started = clock()
        self._last_plain: Optional[float] = None
        self._text = ""
        self._history = collections.deque(maxlen=RATE_WINDOW)  # (time, samples, epochs)

    def rate(self, samples: int, epochs: float = 0.0) -> float:
        """Samples per second over the window; also records `epochs` for the ETA."""
        self._history.append((self.clock(), samples, epochs))
        (t0, s0, _), (t1, s1, _) = self._history[0], self._history[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self, epochs: float) -> Optional[float]:
        """Seconds left at the epoch rate of the window; None until that rate is known."""
        (t0, _, e0), (t1, _, e1) = self._history[0], self._history[-1]
        if not self.total or t1 <= t0 or e1 <= e0:
            return None
        return max(0.0, self.total - epochs) * (t1 - t0) / (e1 - e0)

    def update(self, epochs: float, samples: int, accuracy: Optional[float],
               tau_p50: Optional[int]) -> None:
        samples_per_s = self.rate(samples, epochs)
        width = 20
        filled = int(width * min(1.0, epochs / self.total)) if self.total else width
        acc = "-" if accuracy is None else f"{accuracy:.4f}"
        tau = "-" if tau_p50 is None else str(tau_p50)
        elapsed = self.clock() - self.started
        text = (f"[{'=' * filled}{' ' * (width - filled)}] epoch {epochs:5.2f}/{self.total:.2f}  "
                f"{clock_text(elapsed)} eta {clock_text(self.eta(epochs))}  "
                f"{samples_per_s:8.0f} samples/s  acc {acc}  tau p50 {tau}")
        self._text = text
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif self._last_plain is None or self.clock() - self._last_plain >= PLAIN_EVERY_S:
            self.stream.write(text + "\n")
            self._last_plain = self.clock()

    def close(self) -> None:
        """Ends the redrawn line; without a TTY, prints the final state the 10 s rhythm skipped."""
        if self.tty:
            self.stream.write("\n")
        elif self._text and self._last_plain is not None:
            self.stream.write(self._text + "\n")
        self.stream.flush()
