"""JobController: a running job's named actor, so other processes can find and steer it.

The driver publishes a small live snapshot to it about once a second and takes back the commands
queued since (stop); `downpour top --address` reads the snapshot. It holds no training state, so
losing it loses nothing but the live view. Named `<run name>` in the `downpour` namespace.
"""

import time
from typing import Optional

NAMESPACE = "downpour"


class JobController:
    def __init__(self, run: str, run_dir: str):
        self.info = {"run": run, "run_dir": run_dir, "started": time.time()}
        self._snapshot: Optional[dict] = None
        self._stop_reason: Optional[str] = None

    def publish(self, snapshot: dict) -> dict:
        """From the driver: the newest snapshot in; the pending commands out."""
        self._snapshot = snapshot
        return {"stop": self._stop_reason}

    def snapshot(self) -> dict:
        return {**self.info, "live": self._snapshot}

    def request_stop(self, reason: str = "stop requested") -> None:
        """The job finishes its current round, evaluates, saves model.pt and ends with status 'stopped'."""
        self._stop_reason = reason
