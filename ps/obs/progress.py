"""One progress line in the terminal: epoch, samples/s, last accuracy, tau p50; redrawn in place on a TTY."""

import collections
import sys
import time
from typing import Optional, TextIO

PLAIN_EVERY_S = 10.0  # without a TTY (CI, a log file) print a line this often instead of redrawing
RATE_WINDOW = 10      # samples/s over the last this many updates, not since start-up


class ProgressLine:
    def __init__(self, total_epochs: float, stream: Optional[TextIO] = None):
        self.total = total_epochs
        self.stream = stream or sys.stderr
        self.tty = stream.isatty()
        self._last_plain = 0.0
        self._text = ""
        self._history = collections.deque(maxlen=RATE_WINDOW)  # (time, samples)

    def rate(self, samples: int) -> float:
        self._history.append((time.time(), samples))
        (t0, s0), (t1, s1) = self._history[0], self._history[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def update(self, epochs: float, samples: int, accuracy: Optional[float],
               tau_p50: Optional[int]) -> None:
        samples_per_s = self.rate(samples)
        width = 20
        filled = int(width * min(1.0, epochs / self.total)) if self.total else width
        acc = "-" if accuracy is None else f"{accuracy:.4f}"
        tau = "-" if tau_p50 is None else str(tau_p50)
        text = (f"[{'=' * filled}{' ' * (width - filled)}] epoch {epochs:5.2f}/{self.total:.2f}  "
                f"{samples_per_s:8.0f} samples/s  acc {acc}  tau p50 {tau}")
        self._text = text
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif time.time() - self._last_plain >= PLAIN_EVERY_S:
            self.stream.write(text + "\n")
            self._last_plain = time.time()

    def close(self) -> None:
        """Ends the redrawn line; without a TTY, prints the final state the 10 s rhythm skipped."""
        if self.tty:
            self.stream.write("\n")
        elif self._text and self._last_plain:
            self.stream.write(self._text + "\n")
        self.stream.flush()
