"""ShardClient: how a replica fetches parameters from and pushes gradients to every shard.

The replica loop decides *when* (the Downpour schedule); a client decides *how*. Ray actor calls are
one transport (RayShardClient); an in-process one (LocalShardClient) serves tests, and a
shared-memory data plane can be another. A client is used by one replica's loop thread, except
`start_fetch`, which the prefetch timer thread may call while the loop computes.

Shard death: every fetch remembers the incarnation of each shard it read, and every push carries
the incarnations its gradient was computed on, so a recreated shard fences gradients of parameters
it never held. When a shard's actor has died, the Ray client asks the job's directory (the
controller) for its next incarnation, waits for it, and re-reads that shard; pushes that died with
the old actor are counted as lost.
"""

import abc
import collections
import threading
import time
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import ray

from ps.common.protocol import PushPullReply, PushResult
from sharding import ShardPlan

LOST = PushResult(False, -1, 0.0, "lost: the shard died before it answered")
RECONNECT_POLL_S = (0.05, 0.5)  # first and longest pause between asks for a recreated shard
ROUND_WAIT_SHARE = 0.9  # of timeout_s, that a shard waits for a round to close before answering


class Fetch(NamedTuple):
    """A fetch in flight: one transport handle per shard, in shard order, when it was issued, and
    the incarnation of the shard each handle was sent to."""
    handles: list
    t_issued: float
    incarnations: tuple = ()


class Installed(NamedTuple):
    """What `install` saw: the version vector over shards and how the replies came."""
    versions: list[int]
    landed: Optional[bool]  # every reply was there before `install` began; None: not probed
    rtt_s: float            # from issue to the last reply
    spread_s: float         # from the first reply to the last
    incarnations: tuple = ()  # of the shard each version belongs to


class ShardClient(abc.ABC):
    """Fetch, install, push and settle over S shards. Subclasses supply the transport primitives
    (`start_fetch`, `_landed`, `_replies`, `_send_push`, `_results`); the bookkeeping of push
    rounds and their counts lives here, so every transport counts the same way."""

    reads_at_install = False  # True: a fetch copies the values when installed, not when started

    def __init__(self, plan: ShardPlan):
        self.plan = plan
        self.counts = collections.Counter()  # pushes, rejected: over settled rounds, per shard
        self._rounds = collections.deque()   # unsettled push rounds, oldest first

    @property
    def inflight(self) -> int:
        """Push rounds sent and not yet settled."""
        return len(self._rounds)

    @abc.abstractmethod
    def start_fetch(self) -> Fetch:
        """Asks every shard for its parameters; does not block."""

    def start_fetch_newer(self, versions: list[int]) -> Fetch:
        """Asks every shard for its parameters once its version is past `versions[shard]` (the
        round modes: sync, backup); does not block. `install` returns what the shards had after
        their wait ran out, so the caller checks the versions."""
        raise NotImplementedError(f"{type(self).__name__} cannot wait for a round to close")

    def install(self, fetch: Fetch, host: np.ndarray, probe: bool = False) -> Installed:
        """Blocks until every shard has replied, copying each reply into `host` (the flat
        parameters, float32 (P,)) as it lands. `probe` first checks whether all had landed."""
        landed = self._landed(fetch.handles) if probe else None
        versions, arrivals = [0] * len(fetch.handles), []
        incarnations = list(fetch.incarnations or [0] * len(fetch.handles))
        for shard, reply, incarnation in self._replies(fetch):
            versions[shard], values = reply[:2]  # a pull's (version, values) or a PushPullReply
            incarnations[shard] = incarnation
            self.plan.assemble_shard(shard, values, host)
            arrivals.append(time.time())
        return Installed(versions, landed, arrivals[-1] - fetch.t_issued, arrivals[-1] - arrivals[0],
                         tuple(incarnations))

    def push(self, flat_grad: np.ndarray, computed_on: Installed, replica_id: int,
             and_pull: bool) -> Optional[Fetch]:
        """Sends each shard its slice of `flat_grad` (float32 (P,)), computed on the parameters
        `computed_on` installed, without waiting; the caller may overwrite `flat_grad` once this
        returns. With `and_pull` each shard replies with its parameters after the push: returns
        that fetch."""
        t_issued = time.time()
        stamps = list(zip(computed_on.versions, computed_on.incarnations or
                          [0] * len(computed_on.versions)))
        handles, incarnations = self._send_push(self.plan.split(flat_grad), stamps, replica_id,
                                                and_pull)
        self._rounds.append(Fetch(handles, t_issued, incarnations))
        return self._rounds[-1] if and_pull else None

    def settle_oldest(self) -> None:
        """Blocks until the oldest push round is acknowledged (or lost) by every shard; counts it."""
        results = self._results(self._rounds.popleft())
        self.counts["pushes"] += len(results)
        self.counts["rejected"] += sum(not r.accepted for r in results)
        self.counts["lost"] += sum(r is LOST for r in results)
        self.counts["fenced"] += sum(bool(r.reason) and r.reason.startswith("fenced") for r in results)

    # ---- transport primitives --------------------------------------------------------------------
    @abc.abstractmethod
    def _landed(self, handles: list) -> bool:
        """True when every reply can be read without waiting."""

    @abc.abstractmethod
    def _replies(self, fetch: Fetch) -> Iterator[tuple[int, tuple, int]]:
        """(shard, reply, its incarnation) for every handle, in the order they land; blocks."""

    @abc.abstractmethod
    def _send_push(self, pieces: list[np.ndarray], stamps: list[tuple[int, int]], replica_id: int,
                   and_pull: bool) -> tuple[list, tuple]:
        """One push (or push_pull) per shard, each with its (version, incarnation) stamp; must
        have copied or sent `pieces` when it returns. Returns the handles and the incarnation
        each was sent to."""

    @abc.abstractmethod
    def _results(self, round_: Fetch) -> list[PushResult]:
        """The PushResult of every handle of one push round; blocks."""


class RayShardClient(ShardClient):
    """Over ParameterShard actor handles: every call is a Ray actor task, every handle an ObjectRef.
    With a `directory` (the job's controller) a dead shard is waited for and re-read; without one
    its death is an error."""

    def __init__(self, shards: Sequence, plan: ShardPlan, timeout_s: float, directory=None,
                 incarnations: Optional[Sequence[int]] = None, replica_id: Optional[int] = None):
        """`replica_id`: sent with every pull, for shards that keep what each replica fetched
        (a DC-ASGD transform's backup copy)."""
        super().__init__(plan)
        self.shards, self.timeout_s, self.directory = list(shards), timeout_s, directory
        self.replica_id = replica_id
        self.incarnations = list(incarnations or [0] * len(self.shards))  # of each handle in `shards`
        # push results already read by `install` from push_pull replies: settling them again
        # would deserialise every reply's values a second time just to read `.push`
        self._known: dict = {}

    def start_fetch(self) -> Fetch:
        return Fetch([shard.pull.remote(self.replica_id) for shard in self.shards], time.time(),
                     tuple(self.incarnations))

    def start_fetch_newer(self, versions: list[int]) -> Fetch:
        wait_s = ROUND_WAIT_SHARE * self.timeout_s  # the shard answers before our own wait ends
        return Fetch([shard.pull_newer.remote(v, wait_s, self.replica_id, incarnation)
                      for shard, v, incarnation in zip(self.shards, versions, self.incarnations)],
                     time.time(), tuple(self.incarnations))

    def _landed(self, handles: list) -> bool:
        return len(ray.wait(handles, num_returns=len(handles), timeout=0)[0]) == len(handles)

    def _replies(self, fetch: Fetch) -> Iterator[tuple[int, tuple, int]]:
        pending, index = list(fetch.handles), {ref: s for s, ref in enumerate(fetch.handles)}
        incarnation = dict(zip(fetch.handles, fetch.incarnations or self.incarnations))
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=self.timeout_s)
            if not ready:
                raise TimeoutError(f"no reply from a shard in {self.timeout_s:g} s")
            ref, shard = ready[0], index[ready[0]]
            try:
                reply = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:  # unreachable for now: ask it again
                self._mark_lost(ref)
                retry = self.shards[shard].pull.remote(self.replica_id)
                index[retry], incarnation[retry] = shard, incarnation[ref]
                pending.append(retry)
                continue
            except ray.exceptions.RayActorError:  # that shard died: read its next incarnation
                self._mark_lost(ref)
                retry = self._reconnect(shard, incarnation[ref]).pull.remote(self.replica_id)
                index[retry], incarnation[retry] = shard, self.incarnations[shard]
                pending.append(retry)
                continue
            if isinstance(reply, PushPullReply):
                self._known[ref] = reply.push
            yield shard, reply, incarnation[ref]

    def _mark_lost(self, ref) -> None:
        """A push_pull whose reply died: its round settles as LOST (a plain pull has no round)."""
        if any(ref in round_.handles for round_ in self._rounds):
            self._known[ref] = LOST

    def _send_push(self, pieces, stamps, replica_id, and_pull) -> tuple[list, tuple]:
        # .remote() serialises each piece now, so the gradient buffer can be reused at once
        handles = [(shard.push_pull if and_pull else shard.push).remote(piece, version, replica_id,
                                                                         incarnation)
                   for shard, piece, (version, incarnation) in zip(self.shards, pieces, stamps)]
        return handles, tuple(self.incarnations)

    def _results(self, round_: Fetch) -> list[PushResult]:
        return [self._result(shard, ref, incarnation) for shard, (ref, incarnation)
                in enumerate(zip(round_.handles, round_.incarnations))]

    def _result(self, shard: int, ref, incarnation: int) -> PushResult:
        if ref in self._known:
            return self._known.pop(ref)
        try:
            reply = ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.ActorUnavailableError:
            return LOST  # perhaps applied, perhaps not: the shard is still this incarnation
        except ray.exceptions.RayActorError:
            self._reconnect(shard, incarnation)
            return LOST
        return reply.push if isinstance(reply, PushPullReply) else reply

    def _reconnect(self, shard: int, dead: int):
        """The handle of an incarnation of `shard` newer than `dead`, from the directory, once the
        job has recreated it; raises if it does not within timeout_s or the job gave it up."""
        if self.incarnations[shard] > dead:  # another call already found the new one
            return self.shards[shard]
        if self.directory is None:
            raise RuntimeError(f"shard {shard} died and this job recreates no shards")
        deadline, pause = time.monotonic() + self.timeout_s, RECONNECT_POLL_S[0]
        while (found := ray.get(self.directory.shard.remote(shard, dead + 1),
                                timeout=self.timeout_s)) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"shard {shard} died and was not recreated within "
                                   f"{self.timeout_s:g} s")
            time.sleep(pause)  # waiting for the job to restore the shard: nothing to do meanwhile
            pause = min(2 * pause, RECONNECT_POLL_S[1])
        if found[0] < 0:
            raise RuntimeError(f"shard {shard} died and the job gave it up")
        self.shards[shard], self.incarnations[shard] = found[1], found[0]
        return self.shards[shard]


class LocalShardClient(ShardClient):
    """Over ParameterShard objects in this process (tests, single-process tools): each call runs
    at once, so a handle is the reply itself, and a fetch is a snapshot copy of the values."""

    def __init__(self, shards: Sequence, plan: ShardPlan):
        super().__init__(plan)
        self.shards = list(shards)
        self._lock = threading.Lock()  # the prefetch timer thread may pull while the loop pushes

    def _landed(self, handles: list) -> bool:
        return True

    def start_fetch(self) -> Fetch:
        with self._lock:
            return Fetch([_snapshot(shard.pull()) for shard in self.shards], time.time(),
                         tuple(shard.incarnation for shard in self.shards))

    def start_fetch_newer(self, versions: list[int]) -> Fetch:
        """In one thread nothing can close a round meanwhile: the shards' versions as they are."""
        with self._lock:
            return Fetch([_snapshot(shard.pull_newer(v, 0.0)) for shard, v in zip(self.shards, versions)],
                         time.time(), tuple(shard.incarnation for shard in self.shards))

    def _replies(self, fetch: Fetch) -> Iterator[tuple[int, tuple, int]]:
        return ((s, reply, fetch.incarnations[s]) for s, reply in enumerate(fetch.handles))

    def _send_push(self, pieces, stamps, replica_id, and_pull) -> tuple[list, tuple]:
        with self._lock:  # a shard applies the piece before returning: no copy needed
            handles = [_snapshot(shard.push_pull(piece, version, replica_id, incarnation)) if and_pull
                       else shard.push(piece, version, replica_id, incarnation)
                       for shard, piece, (version, incarnation) in zip(self.shards, pieces, stamps)]
            return handles, tuple(shard.incarnation for shard in self.shards)

    def _results(self, round_: Fetch) -> list[PushResult]:
        return [r.push if isinstance(r, PushPullReply) else r for r in round_.handles]


def _snapshot(reply: tuple) -> tuple:
    """In-process pulls return the shard's live buffer: copy it, as Ray's serialisation would."""
    return reply._replace(values=reply.values.copy()) if isinstance(reply, PushPullReply) \
        else (reply[0], reply[1].copy())
