"""The staleness event log: record builders, an appending msgpack writer, and a tolerant reader.

The log is a stream of msgpack maps (schema in docs/event-log.md). The first record is a header
with the schema version; a torn last record (a crash mid-write) is skipped with a warning.
"""

import math
import numbers
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional

import msgpack

SCHEMA_VERSION = 1
LOG_NAME = "events.msgpack"


def header_record(t: float, replicas: int, shards: int, shard_sizes: list[int], *,
                  model: Optional[str] = None, batch_size: Optional[int] = None,
                  n_fetch: Optional[int] = None, n_push: Optional[int] = None) -> dict:
    """The sizes let readers turn pushes into samples (one push to a shard = n_push x batch_size)."""
    return {"kind": "header", "schema": SCHEMA_VERSION, "t": t, "replicas": replicas,
            "shards": shards, "shard_sizes": shard_sizes, "model": model, "batch_size": batch_size,
            "n_fetch": n_fetch, "n_push": n_push}


def push_record(shard: int, t: float, replica: int, fetched: int, applied: int, tau: int,
                scale: float, accepted: bool, reason: Optional[str], grad_norm: float) -> dict:
    """One push as seen by `shard`: `applied` is the shard version the push met (before it applied)."""
    return {"kind": "push", "t": t, "shard": shard, "replica": replica,
            "fetched": int(fetched) if isinstance(fetched, numbers.Integral) else -1, "applied": applied,
            "tau": tau, "scale": scale, "accepted": accepted, "reason": reason,
            "grad_norm": None if math.isnan(grad_norm) else grad_norm}


def fetch_record(t: float, replica: int, versions: list[int], reply_spread_s: float) -> dict:
    """One fetch by `replica`: the version vector over shards and how far apart in time replies came."""
    return {"kind": "fetch", "t": t, "replica": replica, "versions": versions,
            "spread": max(versions) - min(versions), "reply_spread_s": reply_spread_s}


def eval_record(t: float, accuracy: float, loss: float, versions: list[int], samples: int) -> dict:
    return {"kind": "eval", "t": t, "accuracy": accuracy, "loss": loss, "versions": versions,
            "samples": samples}


def scale_record(t: float, replicas: int, active: list[int], generation: int) -> dict:
    """The job was scaled: `active` are the replica ids training from now on, on parts of a fresh
    partition of the data numbered `generation`."""
    return {"kind": "scale", "t": t, "replicas": replicas, "active": active, "generation": generation}


class EventLog:
    """Appends batches of records to RUN_DIR/events.msgpack; one write and flush per batch."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "ab")
        self._packer = msgpack.Packer()

    def append(self, records: Iterable[dict]) -> None:
        data = b"".join(self._packer.pack(r) for r in records)
        if data:
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class LogError(Exception):
    """The log is missing or of another schema; the CLI turns this into a status-2 message."""


def read_events(path: Path) -> Iterator[dict]:
    """Yields every complete record; stops with a warning at a torn or corrupt tail."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"no event log at {path}: is this a downpour run directory?")
    unpacker = msgpack.Unpacker(raw=False)
    with open(path, "rb") as f:
        unpacker.feed(f.read())
    first = True
    try:
        for record in unpacker:
            if first:
                _check_header(record, path)
                first = False
            yield record
    except (msgpack.UnpackException, ValueError) as exc:
        if first:
            raise LogError(f"{path} is not a downpour event log: its first record is unreadable") from None
        warnings.warn(f"{path}: skipped a corrupt record at the end ({exc})")
    if first:
        raise LogError(f"{path} holds no records: the run stopped before its actors started")
    if unpacker.tell() < path.stat().st_size:
        warnings.warn(f"{path}: skipped a torn last record ({path.stat().st_size - unpacker.tell()} bytes)")


class LogTail:
    """Follows a log that is still being written: each `read_new` returns the records appended
    since the last call. A record half-written at the end waits in the unpacker for its remaining bytes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.header: Optional[dict] = None
        self._unpacker = msgpack.Unpacker(raw=False)
        self._offset = 0

    def read_new(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError as exc:
            raise LogError(f"cannot read {self.path}: {exc.strerror}") from None
        self._offset += len(data)
        self._unpacker.feed(data)
        try:
            records = list(self._unpacker)
        except (msgpack.UnpackException, ValueError) as exc:
            raise LogError(f"{self.path}: a corrupt record at byte {self._unpacker.tell()} ({exc})") from None
        if self.header is None and records:
            _check_header(records[0], self.path)
            self.header = records[0]
        return records


def _check_header(record: dict, path: Path) -> None:
    if not isinstance(record, dict) or record.get("kind") != "header":
        raise LogError(f"{path} does not start with a downpour header record")
    if record.get("schema") != SCHEMA_VERSION:
        raise LogError(f"{path} has event-log schema {record.get('schema')}; this downpour reads "
                       f"schema {SCHEMA_VERSION}: use the downpour version that wrote it")
