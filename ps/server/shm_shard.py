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
from typing import Optional

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
    def __init__(self, *args, shm: ShmNames, required: bool = False, **kwargs):
        """The arguments of ParameterShard, and where this run's segments go. When the board or
        the doorbell cannot be made (another node's /dev/shm full, say) it raises ShmError if
        shared memory is `required`, else it serves Ray calls only: replicas find no board and
        use them too."""
        super().__init__(*args, **kwargs)
        self.names = shm  # self._lock: the base class's, which every verb takes
        self._slots: dict[int, GradSlots] = {}  # replica id -> its slots, attached on first push
        self._failure: Optional[str] = None
        self.board = None
        if self.incarnation:  # the dead incarnation cannot clean up after itself
            shm.remove_shard(self.shard_id, self.incarnation - 1)
        try:
            self._open()
        except ShmError as e:
            shm.remove_shard(self.shard_id, self.incarnation)
            if required:
                raise
            self.board, self.shm_note = None, str(e)

    def _open(self) -> None:
        shm = self.names
        self.board = ValueBoard.create(shm.board(self.shard_id, self.incarnation), self.size)
        self.doorbell = datagram_socket(shm.doorbell(self.shard_id, self.incarnation))
        self.board.publish(self.optimizer.values, self.version)
        self._reply = datagram_socket()
        self._reply.setblocking(False)
        threading.Thread(target=self._serve, name=f"shard-{self.shard_id}-doorbell", daemon=True).start()

    # ---- the doorbell ------------------------------------------------------------------------
    def _serve(self) -> None:
        """Applies doorbells in batches until the process ends. If it ever raises, the shard
        stops answering (its socket closes, so replicas see it as dead) and `stats` raises the
        error, which fails the job with it."""
        try:
            while True:
                self._serve_batch(self._ring())
        except Exception as e:  # noqa: BLE001 (the thread must not die silently)
            self._failure = f"shard {self.shard_id}: doorbell thread: {type(e).__name__}: {e}"
            self.doorbell.close()

    def _ring(self) -> list[bytes]:
        """The next doorbell, and every one already waiting behind it (up to MAX_BATCH)."""
        batch = [self.doorbell.recv(DOORBELL.size)]
        self.doorbell.setblocking(False)
        try:
            while len(batch) < MAX_BATCH:
                batch.append(self.doorbell.recv(DOORBELL.size))
        except BlockingIOError:
            pass
        finally:
            self.doorbell.setblocking(True)
        return batch

    def _serve_batch(self, batch: list[bytes]) -> None:
        """Applies the pushes, publishes the board once, and only then writes their results: a
        replica that sees its result done finds its update on the board."""
        with self._lock:
            served = [done for message in batch if len(message) == DOORBELL.size  # empty: a probe
                      and (done := self._serve_one(message)) is not None]
            if not served:
                return
            self.board.publish(self.optimizer.values, self.version)
            for slots, slot, ticket, result in served:
                if isinstance(result, str):
                    slots.write_error(self.shard_id, slot, ticket, result)
                else:
                    slots.write_result(self.shard_id, slot, ticket, *result)
        for replica, slots in {s.replica: s for s, *_ in served}.items():
            if slots.waiting[0]:  # a replica busy computing needs no wake-up
                self._wake(replica)

    def _serve_one(self, message: bytes) -> Optional[tuple]:
        """Applies one push: (its slots, slot, ticket, PushResult or the error it raised), or None
        for a doorbell to ignore."""
        replica, slot, ticket, version, incarnation = DOORBELL.unpack(message)
        slots = self._replica_slots(replica)
        if slots is None or not 0 <= slot < slots.depth or \
                int(slots.results[self.shard_id, slot]["ticket"]) != ticket:
            return None  # a replica whose slots are gone (it died), or a garbled doorbell
        try:
            result = ParameterShard.push(self, slots.gradient(self.shard_id, slot), version, replica,
                                         incarnation)
        except Exception as e:  # a user's rule raised: the pushing replica fails with it, as over Ray
            result = f"shard {self.shard_id}: {type(e).__name__}: {e}"
        finally:
            self.optimizer.release_grad()  # the slot is the replica's again
        return slots, slot, ticket, result

    def _replica_slots(self, replica: int):
        if replica not in self._slots:
            try:
                self._slots[replica] = GradSlots.attach(self.names.slots(replica))
            except (ShmError, ValueError):
                return None
            self._slots[replica].replica = replica
        return self._slots[replica]

    def _wake(self, replica: int) -> None:
        try:
            self._reply.sendto(b"", self.names.mailbox(replica))
        except BlockingIOError:
            pass  # a full mailbox is already a wake-up
        except (FileNotFoundError, ConnectionRefusedError):  # a dead or finished replica's:
            with self._lock:  # unmapped, or its pages stay allocated after the file is gone
                slots = self._slots.pop(replica, None)
            if slots is not None:
                slots.close()

    # ---- Ray calls, one at a time with the doorbell --------------------------------------------
    def pull(self) -> tuple[int, np.ndarray]:
        with self._lock:
            return self.version, self.optimizer.values.copy()  # the doorbell may step it next

    def push(self, grad, fetched_version, replica_id, incarnation=0) -> PushResult:
        with self._lock:
            result = super().push(grad, fetched_version, replica_id, incarnation)
            if self.board is not None:
                self.board.publish(self.optimizer.values, self.version)
            return result

    def push_pull(self, grad, fetched_version, replica_id, incarnation=0) -> PushPullReply:
        with self._lock:
            return super().push_pull(grad, fetched_version, replica_id, incarnation)

    def stats(self) -> dict:
        with self._lock:
            if self._failure:
                raise RuntimeError(self._failure)
            return {**super().stats(), "transport": "ray" if self.board is None else "shm"}

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
