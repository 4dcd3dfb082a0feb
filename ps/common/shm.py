"""The shared-memory data plane's segments, for a shard and the replicas on its machine (no Ray).

Every file of one run lives in SHM_DIR (/dev/shm, or DOWNPOUR_SHM_DIR) under the run's prefix
`downpour-<driver pid>-<host tag>-<token>`, so the driver removes them all when the run ends, however its
actors ended, and a driver that starts removes those of drivers no longer alive:

- `<prefix>-s<S>i<I>.board`: shard S, incarnation I, publishes its values and version after
  updates; a reader copies them without a lock (ValueBoard).
- `<prefix>-s<S>i<I>.sock`: the shard's doorbell, a datagram socket; one datagram per push says
  which replica, which slot, which ticket, the fetched version and the incarnation.
- `<prefix>-r<R>.slots`: replica R's gradient slots, `depth` per shard, each with a result the
  shard fills in (GradSlots); `<prefix>-r<R>.sock` is where shards say a result is in.
- `<prefix>-ssp.clocks`: the SSP replicas' clocks, when the whole job is on one machine
  (ps/common/shm_clocks.py).

Ordering: the boards' sequence words and the slots' done words rely on stores (and loads) not being
reordered across numpy calls, which the x86-64 memory model guarantees; `--transport auto` uses
shared memory only there. A datagram's send and receive are system calls, which order everything. A shard sends a wake-up
only to a replica that says it is waiting; the one store-then-load race that this allows (both
sides' stores still in their store buffers) costs the replica a short backstop timeout, never a
result.
"""

import dataclasses
import hashlib
import mmap
import os
import platform
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ps.common.rundir import pid_alive

ENV_DIR = "DOWNPOUR_SHM_DIR"
DEFAULT_DIR = "/dev/shm"
PREFIX = "downpour-"
ALIGN = 64                     # bytes: every array starts on a cache line
MAGIC_BOARD, MAGIC_SLOTS, MAGIC_CLOCKS = 0x64705F626F617264, 0x64705F736C6F7473, 0x64705F636C6F636B
MAX_SOCKET_PATH = 107          # bytes in sockaddr_un.sun_path, less the terminating NUL
DOORBELL = struct.Struct("<qqqqq")  # replica, slot, ticket, fetched version, incarnation
REASON_BYTES = 192
RAISED = -1                    # a result's `accepted` when the push raised on the shard
RESULT = np.dtype([("ticket", "<i8"), ("done", "<i8"), ("accepted", "<i8"), ("tau", "<i8"),
                   ("scale", "<f8"), ("reason_len", "<i8"), ("pad", "<i8", (2,)),
                   ("reason", f"S{REASON_BYTES}")])  # 256 bytes


class ShmError(OSError):
    """A segment that cannot be made or found; the message says which and why."""


class ShardFailed(RuntimeError):
    """A push raised on the shard (a user's rule, say): the replica that pushed it fails with it."""


def shm_dir() -> str:
    return os.environ.get(ENV_DIR) or DEFAULT_DIR


def supported() -> Optional[str]:
    """None where this machine can run the data plane, else why not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"its lock-free reads need x86-64's memory ordering, this is {platform.machine()}"
    if not hasattr(socket, "AF_UNIX"):
        return "no Unix sockets here"
    return None


@dataclasses.dataclass(frozen=True)
class ShmNames:
    """Where one run's segments are: every actor derives its paths from this."""
    directory: str
    prefix: str

    @classmethod
    def new(cls, directory: Optional[str] = None) -> "ShmNames":
        return cls(directory or shm_dir(), f"{PREFIX}{os.getpid()}-{host_tag()}-{secrets.token_hex(4)}")

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, f"{self.prefix}-{name}")

    def board(self, shard: int, incarnation: int) -> str:
        return self._path(f"s{shard}i{incarnation}.board")

    def doorbell(self, shard: int, incarnation: int) -> str:
        return self._path(f"s{shard}i{incarnation}.sock")

    def slots(self, replica: int) -> str:
        return self._path(f"r{replica}.slots")

    def mailbox(self, replica: int) -> str:
        return self._path(f"r{replica}.sock")

    def clocks(self) -> str:
        return self._path("ssp.clocks")

    def files(self) -> list[str]:
        """Every file of this run that exists now."""
        return sorted(str(p) for p in Path(self.directory).glob(f"{self.prefix}-*"))

    def remove(self, paths: Optional[list[str]] = None) -> int:
        """Unlinks `paths` (default: all of this run's files); returns how many went."""
        return sum(_unlink(p) for p in (self.files() if paths is None else paths))

    def remove_shard(self, shard: int, incarnation: int) -> int:
        return self.remove([self.board(shard, incarnation), self.doorbell(shard, incarnation)])

    def remove_replica(self, replica: int) -> int:
        return self.remove([self.slots(replica), self.mailbox(replica)])


def host_tag() -> str:
    """Names this host and PID namespace: a pid means something only where it was taken, and a
    /dev/shm may be shared with containers or hold files of a driver on another node."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha1(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:8]


def sweep_stale(directory: Optional[str] = None) -> int:
    """Removes this user's segments of drivers of this host and namespace that are no longer
    alive (a driver killed outright cannot clean up); returns how many files went."""
    removed, tag, uid = 0, host_tag(), os.getuid()
    for path in Path(directory or shm_dir()).glob(f"{PREFIX}*-{tag}-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        try:
            mine = path.lstat().st_uid == uid
        except OSError:
            continue
        if mine and pid.isdigit() and not pid_alive(int(pid)):
            removed += _unlink(str(path))
    return removed


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:  # gone already, or not ours to remove
        return False


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class Segment:
    """A file in shared memory mapped into this process. `create` reserves every page at once,
    so a full /dev/shm is an error here and never a SIGBUS later."""

    def __init__(self, path: str, fd: int, size: int):
        self.path, self.size = path, size
        try:
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, path: str, size: int) -> "Segment":
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as e:
            raise ShmError(e.errno, f"cannot create {path}: {e.strerror}") from e
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            os.close(fd)
            _unlink(path)
            raise ShmError(e.errno, f"cannot reserve {size / 2**20:.1f} MiB for {path}: "
                                    f"{e.strerror}") from e
        return cls(path, fd, size)

    @classmethod
    def attach(cls, path: str) -> "Segment":
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise ShmError(e.errno, f"cannot open {path}: {e.strerror}") from e
        return cls(path, fd, os.fstat(fd).st_size)

    def array(self, dtype, count: int, offset: int) -> np.ndarray:
        return np.frombuffer(self.map, dtype=dtype, count=count, offset=offset)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a numpy view still holds it: the mapping goes with the process
            pass


# ---- a shard's values -------------------------------------------------------------------------
# header int64 words: magic, size, published buffer, then (sequence, version) of buffers 0 and 1
_H_MAGIC, _H_SIZE, _H_PUB, _H_SEQ = 0, 1, 2, 3
_BOARD_HEADER = ALIGN


class ValueBoard:
    """Two buffers of a shard's values, each under a sequence word that is odd while it is being
    written. The writer fills the buffer readers are not told about, then publishes it; a reader
    copies the published one and keeps the copy only if its sequence word did not move, so a torn
    copy is never used: it is taken again."""

    def __init__(self, segment: Segment):
        self.segment = segment
        self.header = segment.array(np.int64, 8, 0)
        if int(self.header[_H_MAGIC]) != MAGIC_BOARD:
            raise ShmError(0, f"{segment.path} is not a downpour board")
        self.size = int(self.header[_H_SIZE])
        self.buffers = [segment.array(np.float32, self.size, _BOARD_HEADER + b * _aligned(4 * self.size))
                        for b in (0, 1)]

    @classmethod
    def create(cls, path: str, size: int) -> "ValueBoard":
        segment = Segment.create(path, _BOARD_HEADER + 2 * _aligned(4 * size))
        header = segment.array(np.int64, 8, 0)
        header[_H_SIZE], header[_H_MAGIC] = size, MAGIC_BOARD
        return cls(segment)

    @classmethod
    def attach(cls, path: str) -> "ValueBoard":
        return cls(Segment.attach(path))

    def publish(self, values: np.ndarray, version: int) -> None:
        h, target = self.header, 1 - int(self.header[_H_PUB])
        seq = _H_SEQ + 2 * target
        h[seq] += 1                      # odd: being written
        np.copyto(self.buffers[target], values)
        h[seq + 1] = version
        h[seq] += 1                      # even again: whole
        h[_H_PUB] = target

    def read_into(self, out: np.ndarray, timeout_s: float = 60.0) -> int:
        """Copies the newest whole values into `out` (float32, size) and returns their version."""
        h, deadline, tries = self.header, None, 0
        while True:
            buffer = int(h[_H_PUB])
            seq = _H_SEQ + 2 * buffer
            before = int(h[seq])
            if before % 2 == 0:
                np.copyto(out, self.buffers[buffer])
                version = int(h[seq + 1])
                if int(h[seq]) == before:
                    return version
            tries += 1
            if tries % 64 == 0:  # a writer twice as fast as our copy: give it the core for a moment
                deadline = deadline or time.monotonic() + timeout_s
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no whole copy of {self.segment.path} in {timeout_s:g} s")
                os.sched_yield()

    def close(self) -> None:
        self.header, self.buffers = None, []
        self.segment.close()


# ---- a replica's gradient slots ---------------------------------------------------------------
# header int64 words: magic, shards, depth, waiting, then each shard's data offset and size
_SLOTS_FIXED, _WAITING = 4, 3


class GradSlots:
    """`depth` gradient slots per shard for one replica, each with the result of the push it
    carried. The replica writes a slot's ticket and gradient, then rings the shard; the shard
    reads the gradient, writes the result and sets `done` to the ticket last. A slot is written
    again only after its result was read, so `depth` bounds the pushes in flight."""

    def __init__(self, segment: Segment):
        self.segment = segment
        fixed = segment.array(np.int64, _SLOTS_FIXED, 0)
        if int(fixed[0]) != MAGIC_SLOTS:
            raise ShmError(0, f"{segment.path} is not a downpour slot file")
        self.shards, self.depth = int(fixed[1]), int(fixed[2])
        self.waiting = fixed[_WAITING:_WAITING + 1]  # nonzero while the replica sleeps on its mailbox
        offsets = segment.array(np.int64, _SLOTS_FIXED + 2 * self.shards, 0)[_SLOTS_FIXED:]
        self.results = segment.array(RESULT, self.shards * self.depth,
                                     _header_bytes(self.shards)).reshape(self.shards, self.depth)
        self._data = [(int(offsets[2 * s]), int(offsets[2 * s + 1])) for s in range(self.shards)]

    @classmethod
    def create(cls, path: str, sizes: list[int], depth: int) -> "GradSlots":
        offset, table = _header_bytes(len(sizes)) + _aligned(RESULT.itemsize * len(sizes) * depth), []
        for size in sizes:
            table += [offset, size]
            offset += depth * _aligned(4 * size)
        segment = Segment.create(path, offset)
        header = segment.array(np.int64, _SLOTS_FIXED + len(table), 0)
        header[1:] = [len(sizes), depth, 0, *table]
        header[0] = MAGIC_SLOTS
        return cls(segment)

    @classmethod
    def attach(cls, path: str) -> "GradSlots":
        return cls(Segment.attach(path))

    def gradient(self, shard: int, slot: int) -> np.ndarray:
        offset, size = self._data[shard]
        return self.segment.array(np.float32, size, offset + slot * _aligned(4 * size))

    def write_result(self, shard: int, slot: int, ticket: int, accepted: bool, tau: int,
                     scale: float, reason: Optional[str]) -> None:
        r = self.results[shard, slot]
        text = (reason or "").encode("utf-8", "replace")[:REASON_BYTES]
        r["accepted"], r["tau"], r["scale"] = int(accepted), tau, scale  # or RAISED
        r["reason"], r["reason_len"] = text, len(text) if reason is not None else -1
        r["done"] = ticket               # last: the replica reads the rest only after it sees this

    def write_error(self, shard: int, slot: int, ticket: int, error: str) -> None:
        """The push raised on the shard: `read_result` raises ShardFailed with `error`."""
        self.write_result(shard, slot, ticket, RAISED, -1, 0.0, error)

    def read_result(self, shard: int, slot: int) -> tuple[bool, int, float, Optional[str]]:
        r = self.results[shard, slot]
        length = int(r["reason_len"])
        reason = None if length < 0 else bytes(r["reason"])[:length].decode("utf-8", "replace")
        if int(r["accepted"]) == RAISED:
            raise ShardFailed(reason)
        return bool(r["accepted"]), int(r["tau"]), float(r["scale"]), reason

    def close(self) -> None:
        self.results, self._data = None, []
        self.segment.close()


def _header_bytes(shards: int) -> int:
    return _aligned(8 * (_SLOTS_FIXED + 2 * shards))


def datagram_socket(bind_to: Optional[str] = None) -> socket.socket:
    """A Unix datagram socket, bound to `bind_to` when given (its path must be short enough)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if bind_to is not None:
        if len(os.fsencode(bind_to)) > MAX_SOCKET_PATH:
            sock.close()
            raise ShmError(0, f"socket path {bind_to} is longer than {MAX_SOCKET_PATH} bytes: "
                              f"set {ENV_DIR} to a shorter folder")
        try:
            sock.bind(bind_to)
        except OSError as e:
            sock.close()
            raise ShmError(e.errno, f"cannot bind {bind_to}: {e.strerror}") from e
    return sock


def segment_bytes(shard_sizes: list[int], replicas: int, depth: int) -> int:
    """Shared memory one job needs: every board and every replica's slots."""
    boards = sum(_BOARD_HEADER + 2 * _aligned(4 * n) for n in shard_sizes)
    slots = _header_bytes(len(shard_sizes)) + _aligned(RESULT.itemsize * len(shard_sizes) * depth) \
        + sum(depth * _aligned(4 * n) for n in shard_sizes)
    return boards + replicas * slots
