"""SharedMemoryShard: a ParameterShard that also serves the replicas on its machine through shared
memory (ps/common/shm.py): it publishes its values on a board after updates, so a fetch is a copy
and no call, and it takes pushes from a doorbell socket, reading each gradient from the
replica's slot and writing the result back there.

The doorbell is served on a thread of its own while Ray calls (pull, stats, checkpoints, event
drains) go on arriving on the actor's thread: one lock keeps the shard to one method at a time, as
a plain actor is. Every push goes through `ParameterShard.push`, so staleness, rules, rejections
and the event log are the same whichever way a gradient came.
"""

import threading

import numpy as np

from ps.common.protocol import PushPullReply, PushResult
from ps.common.shm import (
    DOORBELL,
    GradSlots,
    ShmError,
    ShmNames,
    ValueBoard,
    datagram_socket,
)
from ps.server.checkpoint import ShardState
from ps.server.shard import ParameterShard

MAX_BATCH = 64  # doorbells applied before the board is published again


class SharedMemoryShard(ParameterShard):
    def __init__(self, *args, shm: ShmNames, **kwargs):
        """The arguments of ParameterShard, and where this run's segments go. Raises ShmError
        when the board or the doorbell cannot be made."""
        super().__init__(*args, **kwargs)
        self.names, self._lock = shm, threading.RLock()
        if self.incarnation:  # the dead incarnation cannot clean up after itself
            shm.remove_shard(self.shard_id, self.incarnation - 1)
        self.board = ValueBoard.create(shm.board(self.shard_id, self.incarnation), self.size)
        try:
            self.doorbell = datagram_socket(shm.doorbell(self.shard_id, self.incarnation))
        except ShmError:
            shm.remove_shard(self.shard_id, self.incarnation)
            raise
        self.board.publish(self.optimizer.values, self.version)
        self._slots: dict[int, GradSlots] = {}  # replica id -> its slots, attached on first push
        self._reply = datagram_socket()
        self._reply.setblocking(False)
        threading.Thread(target=self._serve, name=f"shard-{self.shard_id}-doorbell", daemon=True).start()

    # ---- the doorbell ------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            batch = [self.doorbell.recv(DOORBELL.size)]
            self.doorbell.setblocking(False)
            try:
                while len(batch) < MAX_BATCH:
                    batch.append(self.doorbell.recv(DOORBELL.size))
            except BlockingIOError:
                pass
            finally:
                self.doorbell.setblocking(True)
            with self._lock:
                served = [self._serve_one(message) for message in batch
                          if len(message) == DOORBELL.size]  # an empty datagram is a liveness probe
                if served:
                    self.board.publish(self.optimizer.values, self.version)
            for replica in {r for r in served if r is not None}:  # after the board has the update
                if self._slots[replica].waiting[0]:  # a replica busy computing needs no wake-up
                    self._wake(replica)

    def _serve_one(self, message: bytes):
        """Applies one push; returns the replica to tell, or None for a doorbell to ignore."""
        replica, slot, ticket, version, incarnation = DOORBELL.unpack(message)
        slots = self._replica_slots(replica)
        if slots is None or not 0 <= slot < slots.depth or \
                int(slots.results[self.shard_id, slot]["ticket"]) != ticket:
            return None  # a replica whose slots are gone (it died), or a garbled doorbell
        try:
            result = ParameterShard.push(self, slots.gradient(self.shard_id, slot), version, replica,
                                         incarnation)
        except Exception as e:  # a user's rule raised: the pushing replica fails with it, as over Ray
            slots.write_error(self.shard_id, slot, ticket, f"shard {self.shard_id}: "
                                                           f"{type(e).__name__}: {e}")
            return replica
        slots.write_result(self.shard_id, slot, ticket, *result)
        return replica

    def _replica_slots(self, replica: int):
        if replica not in self._slots:
            try:
                self._slots[replica] = GradSlots.attach(self.names.slots(replica))
            except (ShmError, ValueError):
                return None
        return self._slots[replica]

    def _wake(self, replica: int) -> None:
        try:
            self._reply.sendto(b"", self.names.mailbox(replica))
        except (BlockingIOError, FileNotFoundError, ConnectionRefusedError):
            pass  # a full mailbox is already a wake-up; a missing one belongs to a dead replica

    # ---- Ray calls, one at a time with the doorbell --------------------------------------------
    def pull(self) -> tuple[int, np.ndarray]:
        with self._lock:
            return self.version, self.optimizer.values.copy()  # the doorbell may step it next

    def push(self, grad, fetched_version, replica_id, incarnation=0) -> PushResult:
        with self._lock:
            result = super().push(grad, fetched_version, replica_id, incarnation)
            self.board.publish(self.optimizer.values, self.version)
            return result

    def push_pull(self, grad, fetched_version, replica_id, incarnation=0) -> PushPullReply:
        with self._lock:
            return super().push_pull(grad, fetched_version, replica_id, incarnation)

    def stats(self) -> dict:
        with self._lock:
            return {**super().stats(), "transport": "shm"}

    def export_state(self) -> ShardState:
        with self._lock:
            return super().export_state()

    def replan(self, updates_left: int) -> int:
        with self._lock:
            return super().replan(updates_left)

    def drain_events(self) -> list[dict]:
        with self._lock:
            return super().drain_events()

    def close(self) -> None:
        """Admin verb at a job's end: removes this incarnation's files (the driver removes those
        of actors that died)."""
        with self._lock:
            self.names.remove_shard(self.shard_id, self.incarnation)
            for slots in self._slots.values():
                slots.close()
            self._slots.clear()
