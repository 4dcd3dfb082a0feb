"""ModelReplica: one asynchronous Downpour client (a plain class; the job wraps it with ray.remote).

It trains a full copy of the model on its own partition of the data, fetching parameters from every
shard every n_fetch steps and pushing accumulated gradients every n_push steps, without waiting.
"""

import collections
import time
from typing import Optional, Sequence

import numpy as np
import ray
import torch
import torch.nn.functional as F

from ps.common import schema
from ps.common.protocol import PushPullReply, ReplicaSettings
from replicas.data import epoch_batches, normalise, partition
from replicas.flat import FlatParams
from replicas.models import build_model
from replicas.prefetch import JustInTime, ScheduledFetch
from sharding import ShardPlan


def choose_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but this replica sees no GPU: "
                           "give replicas GPUs (num_gpus) or use --device cpu")
    return torch.device(name)


class ModelReplica:
    """Run in an actor with max_concurrency=2: `run` trains on one thread while the job calls
    `progress` and `drain_events` on the other (both only read counters or pop a deque)."""

    def __init__(self, replica_id: int, config: ReplicaSettings, plan: ShardPlan, shards: Sequence,
                 train_images: np.ndarray, train_labels: np.ndarray, threads: int,
                 part: Optional[tuple[int, int, int]] = None, total_steps: Optional[int] = None):
        self.id = replica_id
        self.c = config
        self.plan = plan
        self.shards = list(shards)
        self.images, self.labels = train_images, train_labels  # read-only views of the object store
        # (parts, index, generation): part `index` of `parts`, drawn afresh for each generation of
        # a scaled job, so the replicas of one generation hold disjoint data
        self.part = part or (config.replicas, replica_id, 0)
        self.indices = self._partition(self.part)
        self._next_part: Optional[tuple[int, int, int]] = None  # from `reassign`, taken at a step
        self.steps_per_epoch = len(self.indices) // config.batch_size
        self.total_steps = total_steps or config.total_steps or config.epochs * self.steps_per_epoch
        self.threads = threads
        self.device = choose_device(config.device)
        self.model = build_model(config.model, config.seed).to(self.device)
        self.flat = FlatParams(self.model, self.device)
        self.acc = torch.zeros_like(self.flat.grads) if config.n_push > 1 else self.flat.grads
        self._events = collections.deque()  # fetch records, popped by drain_events on the other thread
        self._inflight = collections.deque()  # one list of push refs per push round
        self.step = 0
        self.stopping = False  # set by `stop` from the job's thread; checked once a step
        self.jit, self._last_compute_s = JustInTime(), 0.0
        self.counts = collections.Counter()  # pushes, rejected
        self.timers = collections.Counter()  # seconds: compute, fetch_wait, push_wait

    # ---- the Downpour loop -------------------------------------------------------------------
    def run(self) -> dict:
        """Blocks until this replica has done its steps; returns its counters and timings."""
        torch.set_num_threads(self.threads)  # here, on the thread that computes (OpenMP is per thread)
        batches, fetch, pushed_from, t_first = self._batches(), self._start_fetch(), None, None
        step = 0
        while step < self.total_steps and not self.stopping:  # `reassign` may move the end
            if step % self.c.n_fetch == 0:
                versions = self._install(fetch or self._start_fetch())
            t_first = t_first or time.time()
            fetch_next = (step + 1) % self.c.n_fetch == 0 and step + 1 < self.total_steps
            # Prefetch: the next fetch goes out during this compute, timed to land as it ends.
            scheduled = ScheduledFetch(self._start_fetch, self.jit.delay()) if (
                fetch_next and self.c.prefetch) else None
            pushed_from = pushed_from or versions  # staleness counts from the oldest gradient's fetch
            self._compute(next(batches), local_step=self.c.n_fetch > 1)
            fetch = scheduled.take() if scheduled else None
            if (step + 1) % self.c.n_push == 0 or step + 1 >= self.total_steps:
                # A fetch due now goes with the push, as its reply, so it includes our own update.
                exchanged = self._push(pushed_from, and_pull=fetch_next and fetch is None)
                fetch, pushed_from = fetch or exchanged, None
            if fetch_next and fetch is None:
                fetch = self._start_fetch()  # after our own push, so it includes it
            self.step = step = step + 1
        while self._inflight:
            self._settle_oldest_push()
        return {"replica": self.id, "steps": self.step, "samples": self.step * self.c.batch_size,
                "part": list(self.part),
                "t_first": t_first, "t_last": time.time(), **self.counts,
                **{f"{k}_s": v for k, v in self.timers.items()}}

    def _batches(self):
        """Epoch after epoch over this replica's part; a new part from `reassign` takes effect at
        the next batch."""
        epoch = 0
        while True:
            for batch in epoch_batches(self.indices, self.c.batch_size, epoch, self.c.seed, self.id):
                if self._next_part is not None:
                    break
                yield batch
            if self._next_part is not None:
                self.part, self._next_part = self._next_part, None
                self.indices, epoch = self._partition(self.part), 0
                continue
            epoch += 1

    def _partition(self, part: tuple[int, int, int]) -> np.ndarray:
        parts, index, generation = part
        return partition(len(self.labels), parts, index, self.c.seed + generation)

    def _start_fetch(self) -> tuple[list, float]:
        return [shard.pull.remote() for shard in self.shards], time.time()

    def _install(self, fetch: tuple[list, float]) -> list[int]:
        """Waits for every shard's reply, copying each into the flat parameters as it lands."""
        refs, t_issued = fetch
        t0 = time.time()
        # Only timed prefetch learns from whether the fetch had landed: spare the extra wait otherwise.
        landed = self.c.prefetch and len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs)
        pending, index = list(refs), {ref: s for s, ref in enumerate(refs)}
        versions, arrivals, host = [0] * len(refs), [], self.flat.host_values()
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=self.c.timeout_s)
            if not ready:
                raise TimeoutError(f"replica {self.id}: no reply from a shard in {self.c.timeout_s:g} s")
            shard = index[ready[0]]
            versions[shard], values = ray.get(ready[0])[:2]  # a pull's or a push_pull's reply
            self.plan.assemble_shard(shard, values, host)
            arrivals.append(time.time())
        self.flat.upload()
        self.timers["fetch_wait"] += time.time() - t0
        if self.c.prefetch and self.step:  # the first fetch has no compute to time it against
            self.jit.observe(self._last_compute_s, None if landed else arrivals[-1] - t_issued)
        if self.c.event_log:
            self._events.append(schema.fetch_record(t0, self.id, versions, arrivals[-1] - arrivals[0]))
        return versions

    def _compute(self, batch: np.ndarray, local_step: bool) -> None:
        t0 = time.time()
        x = torch.from_numpy(normalise(self.images[batch])).to(self.device, non_blocking=True)
        y = torch.from_numpy(self.labels[batch]).to(self.device, non_blocking=True)
        self.flat.grads.zero_()
        F.cross_entropy(self.model(x), y).backward()
        with torch.no_grad():
            if self.acc is not self.flat.grads:
                self.acc.add_(self.flat.grads)
            if local_step:  # Dean's client also steps its own copy between fetches
                self.flat.values.add_(self.flat.grads, alpha=-self.c.local_lr)
        self._last_compute_s = time.time() - t0
        self.timers["compute"] += self._last_compute_s

    def _push(self, versions: list[int], and_pull: bool) -> Optional[tuple[list, float]]:
        """Sends each shard its slice of the accumulated gradient and returns without waiting,
        unless max_inflight rounds are already unacknowledged. With `and_pull` the shards reply
        with their parameters after the push: returns that fetch, for `_install`."""
        pieces = self.plan.split(self.flat.host_grads(self.acc))
        t_issued = time.time()
        # .remote() serialises each piece now, so the gradient buffer can be reused at once.
        refs = [(shard.push_pull if and_pull else shard.push).remote(piece, versions[s], self.id)
                for s, (shard, piece) in enumerate(zip(self.shards, pieces))]
        self._inflight.append(refs)
        if self.acc is not self.flat.grads:
            self.acc.zero_()
        while len(self._inflight) > self.c.max_inflight:
            self._settle_oldest_push()
        return (refs, t_issued) if and_pull else None

    def _settle_oldest_push(self) -> None:
        t0 = time.time()
        replies = ray.get(self._inflight.popleft(), timeout=self.c.timeout_s)
        results = [r.push if isinstance(r, PushPullReply) else r for r in replies]
        self.counts["pushes"] += len(results)
        self.counts["rejected"] += sum(not r.accepted for r in results)
        self.timers["push_wait"] += time.time() - t0

    # ---- called by the job on the actor's second thread -----------------------------------------
    def progress(self) -> dict:
        return {"replica": self.id, "step": self.step, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch}

    def reassign(self, part: tuple[int, int, int], total_steps: int) -> None:
        """From the job's thread, when the job is scaled: train on `part` from the next batch on,
        and end after `total_steps` steps in all."""
        self.total_steps = total_steps
        self._next_part = part

    def stop(self) -> None:
        """Ends `run` after the current step; its pushes in flight still land."""
        self.stopping = True

    def drain_events(self) -> list[dict]:
        return [self._events.popleft() for _ in range(len(self._events))]
