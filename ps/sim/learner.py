"""A logical learner of the simulator: what a Ray replica does in one step-round, without Ray.

It fetches from the real shard objects, computes n_push steps with the Ray replica's own gradient
code (replicas.gradient), and pushes the accumulated gradient (or, with --local-steps, the
parameter delta) to every shard. When these happen is the engine's business (ps.sim.engine).
"""

from typing import Iterator, Sequence

import numpy as np
import torch

from ps.common import schema
from ps.common.delays import DelayStream
from ps.common.protocol import PushResult
from replicas.data import epoch_batches, partition
from replicas.flat import FlatParams
from replicas.gradient import backward
from replicas.local_steps import LocalSteps
from replicas.models import build_model
from sharding import ShardPlan

CPU = torch.device("cpu")


class Quota:
    """Steps still to be computed: one per learner (--budget replica), or one the learners share
    (--budget job: whoever computes next claims them, so every learner ends within a step-round of
    the others)."""

    def __init__(self, steps: int):
        self.left = steps

    def claim(self, steps: int) -> int:
        taken = min(steps, self.left)
        self.left -= taken
        return taken


class Learner:
    def __init__(self, learner_id: int, c, plan: ShardPlan, images: np.ndarray, labels: np.ndarray,
                 quota: Quota, delays: DelayStream):
        """`c`: the job's TrainConfig (n_fetch = n_push, checked by the simulator)."""
        self.id, self.c, self.plan = learner_id, c, plan
        self.images, self.labels = images, labels
        self.quota, self.delays = quota, delays
        self.model = build_model(c.model, c.seed)
        self.flat = FlatParams(self.model, CPU)
        self.per_push = c.n_push
        self.acc = torch.zeros_like(self.flat.grads) if self.per_push > 1 else self.flat.grads
        local_lr = c.lr if c.local_lr is None else c.local_lr
        self.outer = LocalSteps(self.flat, local_lr, c.local_optimizer) if c.local_steps else None
        self.local_lr = local_lr
        self.batches = self._batches(partition(len(labels), c.replicas, learner_id, c.seed))
        self.versions: list[int] = []
        self.steps = 0
        self.loss = float("nan")

    @property
    def done(self) -> bool:
        """Nothing left to claim (asked between its push and its next fetch)."""
        return self.quota.left == 0

    def fetch(self, shards: Sequence, t: float) -> dict:
        """Installs every shard's values; returns the fetch record (at simulated time `t`)."""
        replies = [s.pull(self.id) for s in shards]
        self.versions = [v for v, _ in replies]
        self.plan.assemble([values for _, values in replies], self.flat.host_values())
        self.flat.upload()
        if self.outer is not None:
            self.outer.anchor()
        return schema.fetch_record(t, self.id, self.versions, 0.0)

    def compute(self) -> float:
        """The steps up to the next push, on the installed parameters; returns how long they take
        in simulated seconds."""
        steps = self.quota.claim(self.per_push)
        took = 0.0
        for _ in range(steps):
            loss = backward(self.model, self.flat, self.images, self.labels, next(self.batches), CPU)
            with torch.no_grad():
                if self.acc is not self.flat.grads:
                    self.acc.add_(self.flat.grads)
                if self.outer is not None:
                    self.outer.step()
                elif self.per_push > 1 and self.local_lr:  # Dean's client steps its own copy too
                    self.flat.values.add_(self.flat.grads, alpha=-self.local_lr)
            took += self.delays.draw()
        self.loss = float(loss)
        self.computed = steps  # steps the next push carries
        return took

    def push(self, shards: Sequence, incarnations: Sequence[int]) -> list[PushResult]:
        """Sends what the last `compute` made to every shard, each with the version it came from."""
        pushed = self.outer.delta() if self.outer is not None else self.acc
        pieces = self.plan.split(pushed.numpy())
        results = [s.push(piece, v, self.id, inc)
                   for s, piece, v, inc in zip(shards, pieces, self.versions, incarnations)]
        if self.acc is not self.flat.grads:
            self.acc.zero_()
        self.steps += self.computed
        return results

    def _batches(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        epoch = 0
        while True:
            yield from epoch_batches(indices, self.c.batch_size, epoch, self.c.seed, self.id)
            epoch += 1
