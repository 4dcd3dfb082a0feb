"""Helpers shared by the tests that watch a real job while it runs."""

import io
import threading


class ProgressWatch(io.StringIO):
    """The job's output stream; `started` is set at the first progress line, when the actors run."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()

    def write(self, text: str) -> int:
        if "samples/s" in text:
            self.started.set()
        return super().write(text)
