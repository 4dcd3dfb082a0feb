"""ShmShardClient: the shard client for replicas on the same machine as every shard.

A fetch is a lock-free copy of each shard's board (ps/common/shm.py) made when the replica
installs it, so it is as fresh as it can be and costs no call. A push copies each slice into this
replica's slot for that shard and rings the shard's doorbell with one small datagram; the shard's
result comes back in the slot. `push(..., and_pull=True)` (the fetch that includes the replica's
own update) waits for those results before it copies the boards; a plain `start_fetch` after a push
does not wait (the pipelined step).

A dead shard shows as a doorbell nobody answers (the socket refuses) or, while waiting, as a probe
refused: the client then asks the job's directory for the next incarnation, as the Ray client does,
and attaches that incarnation's board. Pushes that died with the shard count as lost.
"""

import socket
import time
from typing import Iterator, Optional, Sequence

import numpy as np

from ps.common.protocol import PushResult
from ps.common.shm import (
    DOORBELL,
    GradSlots,
    ShmError,
    ShmNames,
    ValueBoard,
    datagram_socket,
)
from replicas.client import LOST, Fetch, RayShardClient, ShardClient
from sharding import ShardPlan

PROBE_EVERY_S = 0.5  # while waiting for a result: how often to check that the shard is alive
BACKSTOP_S = 0.005   # longest sleep without a wake-up (see ps.common.shm on the race it covers)


class ShmShardClient(ShardClient):
    reads_at_install = True

    def __init__(self, plan: ShardPlan, names: ShmNames, replica_id: int, shards: Sequence,
                 depth: int, timeout_s: float, directory=None,
                 incarnations: Optional[Sequence[int]] = None):
        """`shards`: the shards' Ray handles (the directory's reconnect keeps them current);
        `depth`: slots per shard, at least max_inflight + 1. Raises ShmError when a shard's board
        is not on this machine or this replica's slots cannot be made."""
        super().__init__(plan)
        self.names, self.replica_id, self.depth, self.timeout_s = names, replica_id, depth, timeout_s
        self.control = RayShardClient(shards, plan, timeout_s, directory, incarnations)
        self.boards = [self._attach(s) for s in range(plan.num_shards)]
        sizes = [plan.shard_numel(s) for s in range(plan.num_shards)]
        names.remove_replica(replica_id)  # left by an earlier process of this id (a retried actor)
        self.slots = GradSlots.create(names.slots(replica_id), sizes, depth)
        try:
            self.mailbox = datagram_socket(names.mailbox(replica_id))
        except ShmError:
            self.close()
            raise
        self.mailbox.setblocking(False)
        self.scratch = [np.empty(n, np.float32) for n in sizes]
        self._ticket = 0
        self._lost: set = set()  # (shard, ticket) of pushes that never reached a live shard

    @property
    def incarnations(self) -> list[int]:
        return self.control.incarnations

    def _attach(self, shard: int) -> ValueBoard:
        board = ValueBoard.attach(self.names.board(shard, self.incarnations[shard]))
        if board.size != self.plan.shard_numel(shard):
            raise ShmError(0, f"{board.segment.path} holds {board.size} values, shard {shard} "
                              f"has {self.plan.shard_numel(shard)}")
        return board

    # ---- fetch ---------------------------------------------------------------------------------
    def start_fetch(self) -> Fetch:
        return Fetch([None] * len(self.boards), time.time(), tuple(self.incarnations))

    def _landed(self, handles: list) -> bool:
        return all(h is None or self._done(s, *h[:2]) for s, h in enumerate(handles))

    def _replies(self, fetch: Fetch) -> Iterator[tuple[int, tuple, int]]:
        for shard, handle in enumerate(fetch.handles):
            if handle is not None:  # a push's own fetch: its result first, so the board has it
                self._wait(shard, *handle)
            version = self.boards[shard].read_into(self.scratch[shard], self.timeout_s)
            yield shard, (version, self.scratch[shard]), self.incarnations[shard]

    # ---- push ----------------------------------------------------------------------------------
    def _send_push(self, pieces, stamps, replica_id, and_pull) -> tuple[list, tuple]:
        self._ticket += 1
        ticket, slot = self._ticket, self._ticket % self.depth
        sent_to = tuple(self.incarnations)
        for shard, (piece, (version, incarnation)) in enumerate(zip(pieces, stamps)):
            self.slots.results[shard, slot]["ticket"] = ticket
            np.copyto(self.slots.gradient(shard, slot), piece)
            try:
                self.mailbox.sendto(DOORBELL.pack(replica_id, slot, ticket, version, incarnation),
                                    self.names.doorbell(shard, sent_to[shard]))
            except (ConnectionRefusedError, FileNotFoundError):  # that shard is dead
                self._lost.add((shard, ticket))
            except BlockingIOError:  # its doorbell is full: wait for room, as a blocking send would
                self._send_blocking(DOORBELL.pack(replica_id, slot, ticket, version, incarnation),
                                    shard, sent_to[shard], ticket)
        return [(slot, ticket, incarnation) for incarnation in sent_to], sent_to

    def _send_blocking(self, message: bytes, shard: int, incarnation: int, ticket: int) -> None:
        self.mailbox.settimeout(self.timeout_s)
        try:
            self.mailbox.sendto(message, self.names.doorbell(shard, incarnation))
        except (ConnectionRefusedError, FileNotFoundError):
            self._lost.add((shard, ticket))
        except socket.timeout:
            raise TimeoutError(f"shard {shard} took no push for {self.timeout_s:g} s") from None
        finally:
            self.mailbox.setblocking(False)

    def _results(self, round_: Fetch) -> list[PushResult]:
        results = []
        for shard, handle in enumerate(round_.handles):
            slot, ticket, _ = handle
            if not self._wait(shard, *handle):
                results.append(LOST)
                continue
            results.append(PushResult(*self.slots.read_result(shard, slot)))
        return results

    # ---- waiting for a result ------------------------------------------------------------------
    def _done(self, shard: int, slot: int, ticket: int) -> bool:
        return int(self.slots.results[shard, slot]["done"]) == ticket

    def _wait(self, shard: int, slot: int, ticket: int, incarnation: int) -> bool:
        """Blocks until the shard (the `incarnation` the push went to) has written this push's
        result: True; False if the push was lost (that incarnation died first; this client then
        follows the shard to its next one)."""
        now = time.monotonic()
        deadline, probe_at = now + self.timeout_s, now + PROBE_EVERY_S
        while not self._done(shard, slot, ticket):
            if (shard, ticket) in self._lost or incarnation < self.incarnations[shard]:
                return self._lose(shard, ticket, incarnation)
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"no result from shard {shard} in {self.timeout_s:g} s")
            if now >= probe_at:  # no result for a while: is that shard still there?
                if not self._alive(shard, incarnation) and not self._done(shard, slot, ticket):
                    return self._lose(shard, ticket, incarnation)
                probe_at = now + PROBE_EVERY_S
            self._sleep(shard, slot, ticket)
        return True

    def _sleep(self, shard: int, slot: int, ticket: int) -> None:
        """Until a shard's wake-up, or BACKSTOP_S. The waiting flag goes up before the last look
        at the result, so a result written after that look comes with a wake-up."""
        self._drain()
        self.slots.waiting[0] = 1
        try:
            if self._done(shard, slot, ticket):
                return
            self.mailbox.settimeout(BACKSTOP_S)
            try:
                self.mailbox.recv(16)
            except socket.timeout:
                pass
        finally:
            self.slots.waiting[0] = 0
            self.mailbox.setblocking(False)

    def _lose(self, shard: int, ticket: int, incarnation: int) -> bool:
        self._lost.discard((shard, ticket))
        self._follow(shard, incarnation)  # returns at once if a newer one is known already
        return False

    def _drain(self) -> None:
        """Old wake-ups (for results already read) would end the next wait at once: drop them."""
        try:
            while True:
                self.mailbox.recv(16)
        except BlockingIOError:
            pass

    def _alive(self, shard: int, incarnation: int) -> bool:
        try:
            self.mailbox.sendto(b"", self.names.doorbell(shard, incarnation))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except BlockingIOError:
            pass  # full of doorbells: someone is behind on reading, not dead
        return True

    def _follow(self, shard: int, dead: int) -> None:
        """Incarnation `dead` of the shard died: wait for a newer one (the job's directory) and use
        its board."""
        known = self.incarnations[shard]
        self.control._reconnect(shard, dead)
        if self.incarnations[shard] != known:
            self.boards[shard].close()
            self.boards[shard] = self._attach(shard)

    def close(self) -> None:
        """Removes this replica's files; the job calls it at the end (and removes them itself
        for a replica that died)."""
        self.names.remove_replica(self.replica_id)
