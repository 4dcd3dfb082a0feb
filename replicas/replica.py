"""ModelReplica: one asynchronous Downpour client (a plain class; the job wraps it with ray.remote).

It trains a full copy of the model on its own partition of the data, fetching parameters from every
shard every n_fetch steps and pushing accumulated gradients every n_push steps, without waiting.
How it talks to the shards is a ShardClient's job (replicas/client.py); this module is the schedule.
"""

import collections
import threading
import time
from typing import Optional, Sequence

import numpy as np
import torch

from ps.common import schema
from ps.common.delays import parse_delay
from ps.common.protocol import ReplicaSettings
from ps.common.shm import ShmError, ShmNames
from replicas.client import Fetch, Installed, RayShardClient, ShardClient
from replicas.data import epoch_batches, partition
from replicas.flat import FlatParams
from replicas.gradient import backward
from replicas.local_steps import LocalSteps
from replicas.models import build_model
from replicas.pacing import make_pacing
from replicas.prefetch import JustInTime, ScheduledFetch
from replicas.shm_client import ShmShardClient
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
    `progress`, `reassign`, `stop` and `drain_events` on the other. `_lock` makes the loop's end
    check and `reassign` atomic with respect to each other; the rest only reads counters or pops
    a deque."""

    def __init__(self, replica_id: int, config: ReplicaSettings, plan: ShardPlan, shards: Sequence,
                 train_images: np.ndarray, train_labels: np.ndarray, threads: int,
                 part: Optional[tuple[int, int, int]] = None, total_steps: Optional[int] = None,
                 *, client: Optional[ShardClient] = None, directory=None,
                 incarnations: Optional[Sequence[int]] = None, shm: Optional[ShmNames] = None,
                 pacer=None):
        """`directory`: the job's controller, where a recreated shard is found (and `incarnations`
        of the `shards` given); `shm`: the run's shared-memory segments, when it has them;
        `client` replaces both transports (tests); `pacer`: for SSP, the pacer actor's handle or the
        path of the job's shared clock table (replicas.pacing)."""
        self.id = replica_id
        self.c = config
        self.plan = plan
        # the client is made when `run` starts: by then every shard's board exists
        self.client, self._reach = client, (shards, directory, incarnations, shm)
        self.transport, self.transport_note = ("given" if client else None), None
        self.images, self.labels = train_images, train_labels  # read-only views of the object store
        # (parts, index, generation): part `index` of `parts`, drawn afresh for each generation of
        # a scaled job, so the replicas of one generation hold disjoint data
        self.part = part or (config.replicas, replica_id, 0)
        self.indices = self._partition(self.part)
        self._next_part: Optional[tuple[int, int, int]] = None  # from `reassign`, taken at a batch
        self.steps_per_epoch = len(self.indices) // config.batch_size
        self.total_steps = total_steps or config.total_steps or config.epochs * self.steps_per_epoch
        self.threads = threads
        self.device = choose_device(config.device)
        self.model = build_model(config.model, config.seed).to(self.device)
        self.flat = FlatParams(self.model, self.device)
        self.acc = torch.zeros_like(self.flat.grads) if config.n_push > 1 else self.flat.grads
        self._events = collections.deque()  # fetch records, popped by drain_events on the other thread
        self._lock = threading.Lock()
        self.step = 0
        self.stopping = False  # set by `stop` from the job's thread; checked once a step
        self._started = self._ended = False  # the loop began / decided to end (under _lock)
        self.t_first: Optional[float] = None  # first compute
        self.t_end: Optional[float] = None    # `run` returned
        self.jit, self._last_compute_s = JustInTime(), 0.0
        self._loss: Optional[torch.Tensor] = None  # of the last step
        self.timers = collections.Counter()  # seconds: compute, fetch_wait, push_wait, pace_wait
        self._pacer, self.pacing = pacer, None  # ssp: where the clocks are; how it is paced
        self._outer = LocalSteps(self.flat, config.local_lr, config.local_optimizer) \
            if config.local_steps else None  # async local SGD
        # an injected step time (stragglers on demand): drawn per replica, slept after each compute
        self._delays = parse_delay(config.inject_delay, "inject_delay").stream(
            config.seed, replica_id) if config.inject_delay else None

    # ---- the Downpour loop -------------------------------------------------------------------
    def run(self) -> dict:
        """Blocks until this replica has done its steps; returns its counters and timings."""
        torch.set_num_threads(self.threads)  # here, on the thread that computes (OpenMP is per thread)
        self._started = True
        try:
            self.client = self.client or self._connect()
            if self._pacer is not None:
                self.pacing = make_pacing(self._pacer, self.id, self.c.ssp_bound, self.c.timeout_s)
            self._loop()
            self._settle_all()
        finally:
            with self._lock:
                self._ended, self.t_end = True, time.time()
            if isinstance(self.client, ShmShardClient):
                self.client.close()
            if self.pacing is not None:  # a finished replica holds no one back
                self.pacing.retire()
        return {"replica": self.id, "steps": self.step, "samples": self.step * self.c.batch_size,
                "part": list(self.part), "t_first": self.t_first, "t_last": self.t_end,
                "loss": None if self._loss is None else float(self._loss),
                "transport": self.transport, "transport_note": self.transport_note,
                **self.client.counts, **{f"{k}_s": v for k, v in self.timers.items()}}

    def _connect(self) -> ShardClient:
        """Shared memory when the run has it and every shard's board is on this machine; Ray
        calls otherwise (refused when --transport shm was asked for)."""
        shards, directory, incarnations, shm = self._reach
        if shm is not None and self.c.transport != "ray":
            try:
                client = ShmShardClient(self.plan, shm, self.id, shards, self.c.max_inflight + 1,
                                        self.c.timeout_s, directory, incarnations)
                self.transport = "shm"
                return client
            except ShmError as e:
                if self.c.transport == "shm":
                    raise RuntimeError(f"replica {self.id}: --transport shm, but {e}: run "
                                       "replicas on the shards' node or use --transport auto") from e
                self.transport_note = str(e)
        self.transport = "ray"
        return RayShardClient(shards, self.plan, self.c.timeout_s, directory, incarnations,
                              replica_id=self.id)

    def _loop(self) -> None:
        c, batches, client = self.c, self._batches(), self.client
        fetch, pushed_from, pushed_on, got = client.start_fetch(), None, None, None
        while (total := self._steps_to_run()) is not None:  # `reassign` may move the end
            step = self.step
            if self.pacing is not None and self._pace():
                fetch = None  # fetched before the wait: it may lack updates the bound promises
            if step % c.n_fetch == 0:
                got = self._install(fetch or client.start_fetch(), newer_than=pushed_on)
            fetch_next = (step + 1) % c.n_fetch == 0 and step + 1 < total
            # Prefetch: the next fetch goes out during this compute, timed to land as it ends.
            scheduled = ScheduledFetch(client.start_fetch, self.jit.delay()) if (
                fetch_next and self._prefetch) else None
            pushed_from, pushed_on = pushed_from or got, None  # staleness counts from the oldest fetch
            self._compute(next(batches), local_step=c.n_fetch > 1)
            fetch = scheduled.take() if scheduled else None
            if (step + 1) % c.n_push == 0 or step + 1 >= total:
                # A fetch due now goes with the push, as its reply, so it includes our own update.
                exchanged = self._push(pushed_from, and_pull=fetch_next and fetch is None
                                       and not self._pipelined and not c.rounds)
                fetch, pushed_from, pushed_on = fetch or exchanged, None, pushed_from
            if fetch_next and fetch is None:
                # after our own push, so it includes it (in the round modes: its whole round)
                fetch = client.start_fetch_newer(pushed_on.versions) if c.rounds and pushed_on \
                    else client.start_fetch()
            self.step = step + 1
        if pushed_from is not None:  # stopped inside an n_push round: its gradient still counts
            self._push(pushed_from, and_pull=False)

    @property
    def _prefetch(self) -> bool:
        """Timed prefetch is for calls that take a round trip; a shared-memory fetch is a copy made
        when it is installed (prefetching it would only leave out the replica's own push)."""
        return self.c.prefetch and not isinstance(self.client, ShmShardClient)

    @property
    def _pipelined(self) -> bool:
        """The next fetch copies the boards at once instead of waiting for this push's result:
        the step after a push computes without that push (only shared memory makes it cheaper)."""
        return self.c.pipeline and isinstance(self.client, ShmShardClient)

    def _steps_to_run(self) -> Optional[int]:
        """The end check: this step's total_steps, or None (and the loop has ended) when it ends."""
        with self._lock:
            if self.stopping or self.step >= self.total_steps:
                self._ended = True
                return None
            return self.total_steps

    def _batches(self):
        """Epoch after epoch over this replica's part; a new part from `reassign` takes effect at
        the next batch."""
        epoch = 0
        while True:
            for batch in epoch_batches(self.indices, self.c.batch_size, epoch, self.c.seed, self.id):
                with self._lock:  # take and clear at once, or a part set in between is lost
                    part, self._next_part = self._next_part, None
                if part is not None:
                    self.part, self.indices, epoch = part, self._partition(part), 0
                    break
                yield batch
            else:
                epoch += 1

    def _partition(self, part: tuple[int, int, int]) -> np.ndarray:
        parts, index, generation = part
        return partition(len(self.labels), parts, index, self.c.seed + generation)

    def _install(self, fetch: Fetch, newer_than: Optional[Installed] = None) -> Installed:
        """Waits for every shard's reply, copying each into the flat parameters as it lands. In
        the round modes (`newer_than`: what the last push was computed on) every version must
        have moved past it: the round closed."""
        t0 = time.time()
        try:  # only timed prefetch learns from whether the fetch had landed: spare the probe otherwise
            got = self.client.install(fetch, self.flat.host_values(), probe=self._prefetch)
        except TimeoutError as e:
            raise TimeoutError(f"replica {self.id}: {e}") from e
        if self.c.rounds and newer_than is not None and self._round_open(got, newer_than):
            raise TimeoutError(f"replica {self.id}: a round did not close within "
                               f"{self.c.timeout_s:g} s (versions {got.versions} after pushing on "
                               f"{newer_than.versions}): a replica stopped pushing")
        self.flat.upload()
        if self._outer is not None:
            self._outer.anchor()
        self.timers["fetch_wait"] += time.time() - t0
        if self._prefetch and self.step:  # the first fetch has no compute to time it against
            self.jit.observe(self._last_compute_s, None if got.landed else got.rtt_s)
        if self.c.event_log:
            self._events.append(schema.fetch_record(t0, self.id, got.versions, got.spread_s))
        return got

    @staticmethod
    def _round_open(got: Installed, pushed_on: Installed) -> bool:
        """Some shard's version is not past the one the last push was computed on, on the same
        incarnation (a restored shard's versions start again from its checkpoint's)."""
        unknown = (0,) * len(got.versions)
        return any(v <= old and inc == old_inc for v, old, inc, old_inc in zip(
            got.versions, pushed_on.versions, got.incarnations or unknown,
            pushed_on.incarnations or unknown))

    def _compute(self, batch: np.ndarray, local_step: bool) -> None:
        t0 = time.time()
        self.t_first = self.t_first or t0
        # read by `progress` (no device sync here)
        self._loss = backward(self.model, self.flat, self.images, self.labels, batch, self.device)
        with torch.no_grad():
            if self.acc is not self.flat.grads:
                self.acc.add_(self.flat.grads)
            if self._outer is not None:
                self._outer.step()
            elif local_step:  # Dean's client also steps its own copy between fetches
                self.flat.values.add_(self.flat.grads, alpha=-self.c.local_lr)
        self.flat.sync.synchronize()  # a GPU only queued the kernels: time their completion
        if self._delays is not None:
            time.sleep(self._delays.draw())  # part of the compute, as a slower machine's would be
        self._last_compute_s = time.time() - t0
        self.timers["compute"] += self._last_compute_s

    def _push(self, computed_on: Installed, and_pull: bool) -> Optional[Fetch]:
        """Sends the accumulated gradient and returns without waiting, unless max_inflight rounds
        are already unacknowledged. With `and_pull`, returns the fetch the push replies with."""
        t0 = time.time()
        pushed = self._outer.delta() if self._outer is not None else self.acc
        fetch = self.client.push(self.flat.host_grads(pushed), computed_on, self.id, and_pull)
        self.timers["push"] += time.time() - t0
        if self.acc is not self.flat.grads:
            self.acc.zero_()
        while self.client.inflight > self.c.max_inflight:
            self._settle()
        return fetch

    def _pace(self) -> bool:
        """SSP, before each step: waits while this step would start more than the bound ahead of
        the slowest replica (replicas.pacing); True if the caller must fetch anew."""
        t0 = time.time()
        refetch = self.pacing.pace(self.step, self._settle_all, self.client.reads_at_install)
        if refetch:
            self.timers["pace_wait"] += time.time() - t0
        return refetch

    def _settle_all(self) -> None:
        while self.client.inflight:
            self._settle()

    def _settle(self) -> None:
        t0 = time.time()
        self.client.settle_oldest()
        self.timers["push_wait"] += time.time() - t0

    # ---- called by the job on the actor's second thread -----------------------------------------
    def progress(self) -> dict:
        return {"replica": self.id, "step": self.step, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                "samples": self.step * self.c.batch_size, "t_first": self.t_first,
                "t_last": self.t_end or time.time(), "running": self._started and not self._ended,
                "part": list(self._next_part or self.part),  # a reassigned part counts from now
                "loss": None if self._loss is None else float(self._loss)}

    def reassign(self, part: tuple[int, int, int], total_steps: int) -> bool:
        """When the job is scaled: train on `part` from the next batch on, and end after
        `total_steps` steps in all. Returns False, changing nothing, if the loop has ended or is
        ending (stopped, or at its last step's end): the caller must then give `part` to another."""
        with self._lock:
            if self._ending():
                return False
            self.total_steps, self._next_part = total_steps, part
            return True

    def retarget(self, total_steps: int) -> tuple[bool, int]:
        """--budget job: end after `total_steps` steps in all (after the current step, if it has
        done that many already). Returns (True, the end) or, when the loop has ended or is ending,
        (False, the steps it ends with)."""
        with self._lock:
            if self._ending():
                return False, self.step
            self.total_steps = max(total_steps, self.step)
            return True, self.total_steps

    def _ending(self) -> bool:
        """The loop has ended, or ends at its next check (under _lock): its end can no longer move."""
        return self._ended or self.stopping or self.step >= self.total_steps

    def stop(self) -> None:
        """Ends `run` after the current step; a partial n_push round is still pushed, and pushes
        in flight still land."""
        self.stopping = True

    def drain_events(self) -> list[dict]:
        return [self._events.popleft() for _ in range(len(self._events))]
