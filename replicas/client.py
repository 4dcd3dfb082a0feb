"""ShardClient: how a replica fetches parameters from and pushes gradients to every shard.

The replica loop decides *when* (the Downpour schedule); a client decides *how*. Ray actor calls are
one transport (RayShardClient); an in-process one (LocalShardClient) serves tests, and a
shared-memory data plane can be another. A client is used by one replica's loop thread, except
`start_fetch`, which the prefetch timer thread may call while the loop computes.
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


class Fetch(NamedTuple):
    """A fetch in flight: one transport handle per shard, in shard order, and when it was issued."""
    handles: list
    t_issued: float


class Installed(NamedTuple):
    """What `install` saw: the version vector over shards and how the replies came."""
    versions: list[int]
    landed: Optional[bool]  # every reply was there before `install` began; None: not probed
    rtt_s: float            # from issue to the last reply
    spread_s: float         # from the first reply to the last


class ShardClient(abc.ABC):
    """Fetch, install, push and settle over S shards. Subclasses supply the transport primitives
    (`start_fetch`, `_landed`, `_replies`, `_send_push`, `_results`); the bookkeeping of push
    rounds and their counts lives here, so every transport counts the same way."""

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

    def install(self, fetch: Fetch, host: np.ndarray, probe: bool = False) -> Installed:
        """Blocks until every shard has replied, copying each reply into `host` (the flat
        parameters, float32 (P,)) as it lands. `probe` first checks whether all had landed."""
        landed = self._landed(fetch.handles) if probe else None
        versions, arrivals = [0] * len(fetch.handles), []
        for shard, reply in self._replies(fetch.handles):
            versions[shard], values = reply[:2]  # a pull's (version, values) or a PushPullReply
            self.plan.assemble_shard(shard, values, host)
            arrivals.append(time.time())
        return Installed(versions, landed, arrivals[-1] - fetch.t_issued, arrivals[-1] - arrivals[0])

    def push(self, flat_grad: np.ndarray, versions: Sequence[int], replica_id: int,
             and_pull: bool) -> Optional[Fetch]:
        """Sends each shard its slice of `flat_grad` (float32 (P,)), computed on parameters of
        `versions`, without waiting; the caller may overwrite `flat_grad` once this returns. With
        `and_pull` each shard replies with its parameters after the push: returns that fetch."""
        t_issued = time.time()
        handles = self._send_push(self.plan.split(flat_grad), versions, replica_id, and_pull)
        self._rounds.append(handles)
        return Fetch(handles, t_issued) if and_pull else None

    def settle_oldest(self) -> None:
        """Blocks until the oldest push round is acknowledged by every shard and counts it."""
        results = self._results(self._rounds.popleft())
        self.counts["pushes"] += len(results)
        self.counts["rejected"] += sum(not r.accepted for r in results)

    # ---- transport primitives --------------------------------------------------------------------
    @abc.abstractmethod
    def _landed(self, handles: list) -> bool:
        """True when every reply can be read without waiting."""

    @abc.abstractmethod
    def _replies(self, handles: list) -> Iterator[tuple[int, tuple]]:
        """(shard, reply) for every handle, in the order they land; blocks."""

    @abc.abstractmethod
    def _send_push(self, pieces: list[np.ndarray], versions: Sequence[int], replica_id: int,
                   and_pull: bool) -> list:
        """One push (or push_pull) per shard; must have copied or sent `pieces` when it returns."""

    @abc.abstractmethod
    def _results(self, handles: list) -> list[PushResult]:
        """The PushResult of every handle of one round; blocks."""


class RayShardClient(ShardClient):
    """Over ParameterShard actor handles: every call is a Ray actor task, every handle an ObjectRef."""

    def __init__(self, shards: Sequence, plan: ShardPlan, timeout_s: float):
        super().__init__(plan)
        self.shards, self.timeout_s = list(shards), timeout_s
        # push results already read by `install` from push_pull replies: settling them again
        # would deserialise every reply's values a second time just to read `.push`
        self._known: dict = {}

    def start_fetch(self) -> Fetch:
        return Fetch([shard.pull.remote() for shard in self.shards], time.time())

    def _landed(self, handles: list) -> bool:
        return len(ray.wait(handles, num_returns=len(handles), timeout=0)[0]) == len(handles)

    def _replies(self, handles: list) -> Iterator[tuple[int, tuple]]:
        pending, index = list(handles), {ref: s for s, ref in enumerate(handles)}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=self.timeout_s)
            if not ready:
                raise TimeoutError(f"no reply from a shard in {self.timeout_s:g} s")
            reply = ray.get(ready[0])
            if isinstance(reply, PushPullReply):
                self._known[ready[0]] = reply.push
            yield index[ready[0]], reply

    def _send_push(self, pieces, versions, replica_id, and_pull) -> list:
        # .remote() serialises each piece now, so the gradient buffer can be reused at once
        return [(shard.push_pull if and_pull else shard.push).remote(piece, versions[s], replica_id)
                for s, (shard, piece) in enumerate(zip(self.shards, pieces))]

    def _results(self, handles: list) -> list[PushResult]:
        unknown = [ref for ref in handles if ref not in self._known]
        got = dict(zip(unknown, ray.get(unknown, timeout=self.timeout_s))) if unknown else {}
        replies = [self._known.pop(ref) if ref in self._known else got[ref] for ref in handles]
        return [r.push if isinstance(r, PushPullReply) else r for r in replies]


class LocalShardClient(ShardClient):
    """Over ParameterShard objects in this process (tests, single-process tools): each call runs
    at once, so a handle is the reply itself, and a fetch is a snapshot copy of the values."""

    def __init__(self, shards: Sequence, plan: ShardPlan):
        super().__init__(plan)
        self.shards = list(shards)
        self._lock = threading.Lock()  # the prefetch timer thread may pull while the loop pushes

    def start_fetch(self) -> Fetch:
        with self._lock:
            return Fetch([_snapshot(shard.pull()) for shard in self.shards], time.time())

    def _landed(self, handles: list) -> bool:
        return True

    def _replies(self, handles: list) -> Iterator[tuple[int, tuple]]:
        return iter(enumerate(handles))

    def _send_push(self, pieces, versions, replica_id, and_pull) -> list:
        with self._lock:  # a shard applies the piece before returning: no copy needed
            return [_snapshot(shard.push_pull(piece, versions[s], replica_id)) if and_pull
                    else shard.push(piece, versions[s], replica_id)
                    for s, (shard, piece) in enumerate(zip(self.shards, pieces))]

    def _results(self, handles: list) -> list[PushResult]:
        return [r.push if isinstance(r, PushPullReply) else r for r in handles]


def _snapshot(reply: tuple) -> tuple:
    """In-process pulls return the shard's live buffer: copy it, as Ray's serialisation would."""
    return reply._replace(values=reply.values.copy()) if isinstance(reply, PushPullReply) \
        else (reply[0], reply[1].copy())
