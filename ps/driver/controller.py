"""JobController: a running job's named actor, so other processes can find and steer it.

The driver publishes a small live snapshot to it about once a second and takes back the commands
queued since (stop, scale); `downpour top --address` reads the snapshot and `downpour scale`
queues a request and waits here for the driver's answer. It is also the directory of the shards'
incarnations: a replica that finds a shard dead asks it for the recreated one. It holds no training
state. Named `<run name>` in the `downpour` namespace.
"""

import time
from typing import Optional

NAMESPACE = "downpour"


class JobController:
    def __init__(self, run: str, run_dir: str):
        self.info = {"run": run, "run_dir": run_dir, "started": time.time()}
        self._snapshot: Optional[dict] = None
        self._stop_reason: Optional[str] = None
        self._scale_requests: list[tuple[int, int]] = []  # (request id, replicas), not yet taken
        self._scale_answers: dict[int, dict] = {}
        self._next_id = 0
        self._shards: dict[int, tuple[int, object]] = {}  # shard -> (incarnation, actor handle)
        self._given_up: set[int] = set()

    def publish(self, snapshot: dict) -> dict:
        """From the driver: the newest snapshot in; the pending commands out (each given once)."""
        self._snapshot = snapshot
        scale, self._scale_requests = self._scale_requests, []
        return {"stop": self._stop_reason, "scale": scale}

    def snapshot(self) -> dict:
        return {**self.info, "live": self._snapshot}

    def request_stop(self, reason: str = "stop requested") -> None:
        """The job finishes its current round, evaluates, saves model.pt and ends with status 'stopped'."""
        self._stop_reason = reason

    def request_scale(self, replicas: int) -> int:
        """Queues a change of the number of replicas; returns the id to ask `scale_answer` about."""
        self._next_id += 1
        self._scale_requests.append((self._next_id, replicas))
        return self._next_id

    def answer_scale(self, request: int, ok: bool, message: str) -> None:
        self._scale_answers[request] = {"ok": ok, "message": message}

    def scale_answer(self, request: int) -> Optional[dict]:
        """None until the driver has acted on the request (it looks about once a second)."""
        return self._scale_answers.get(request)

    def set_shard(self, shard: int, incarnation: int, handle) -> None:
        """From the driver, once a recreated shard is ready."""
        self._shards[shard] = (incarnation, handle)

    def give_up(self, shard: int) -> None:
        """From the driver: `shard` stays dead; replicas waiting for it stop waiting."""
        self._given_up.add(shard)

    def shard(self, shard: int, min_incarnation: int) -> Optional[tuple[int, object]]:
        """(incarnation, handle) of `shard` if it is at least `min_incarnation`, else None (yet);
        (-1, None) if the job gave it up."""
        if shard in self._given_up:
            return -1, None
        found = self._shards.get(shard)
        return found if found is not None and found[0] >= min_incarnation else None
