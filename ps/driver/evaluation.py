"""When a job evaluates: at most one evaluation in flight, one every `eval_every` epochs of progress,
and a final one once training has stopped.

Mid-run evaluations run on the evaluator actor beside training (it asks for no CPU of its own, so
it shares the replicas' cores for a moment) and pull the shards one by one while pushes go on: each
records the version vector it read. The final one runs after every replica has stopped and every
push has landed, so it scores one consistent state, the state saved as model.pt.
"""

import time
from typing import Callable, Optional

import ray

DRY_RUN_TEST_SAMPLES = 500


class EvalScheduler:
    def __init__(self, evaluator, every_epochs: float, timeout_s: float,
                 record: Callable[[dict], None]):
        """`record(result)` gets each finished evaluation, with the epochs at its start and its time."""
        self.evaluator, self.every, self.timeout_s, self.record = evaluator, every_epochs, timeout_s, record
        self._next = every_epochs
        self._pending: Optional[tuple[object, float]] = None  # (ref, epochs when it started)

    def poll(self, epochs: float, more_to_come: bool) -> None:
        if self._pending is not None and ray.wait([self._pending[0]], timeout=0)[0]:
            self._collect()
        if self._pending is None and self.every and epochs >= self._next and more_to_come:
            self._pending = self.evaluator.evaluate.remote(), epochs
            self._next += self.every

    def settle(self) -> None:
        """Waits for the evaluation in flight, if any."""
        if self._pending is not None:
            self._collect()

    def final(self, dry_run: bool) -> dict:
        """The evaluation of the stopped job (call only once every push has landed)."""
        limit = DRY_RUN_TEST_SAMPLES if dry_run else None
        return ray.get(self.evaluator.evaluate.remote(limit), timeout=self.timeout_s)

    def _collect(self) -> None:
        ref, epochs = self._pending
        self._pending = None
        try:
            result = ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.RayActorError:  # a shard died under it: the next one reads its successor
            return
        self.record({**result, "epochs": epochs, "t": time.time()})
