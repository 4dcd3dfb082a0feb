"""The staleness event log: an appending msgpack writer and a tolerant reader (records: ps.common.schema).

The log is a stream of msgpack maps (schema in docs/event-log.md). The first record is a header
with the schema version; a torn or corrupt tail (a crash mid-write, a damaged file) is skipped and
reported as a `LogDamage`, which the CLI prints as one warning line.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import msgpack

from ps.common.schema import SCHEMA_VERSION

_UNREADABLE = (msgpack.UnpackException, ValueError)  # FormatError, StackError, BufferFull, ...


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
    """The log is missing, unreadable, empty or of another schema; the CLI turns this into a
    status-2 message."""


@dataclass(frozen=True)
class LogDamage:
    """A log that ends early: `records` complete records were read (the header included), then
    `skipped` bytes were left: cut short by a crash (`corrupt` False) or not a record at all."""
    path: Path
    records: int
    skipped: int
    corrupt: bool

    def __str__(self) -> str:
        why = "not a valid record: the file is corrupt" if self.corrupt else \
            "a torn record, as a crash mid-write leaves"
        return (f"{self.path} ends early: read {self.records} records, then skipped the last "
                f"{self.skipped} bytes ({why}); the results cover those {self.records} records only")


def read_events(path: Path, on_damage: Optional[Callable[[LogDamage], None]] = None) -> Iterator[dict]:
    """Yields every complete record. At a torn or corrupt tail it stops and calls on_damage with a
    LogDamage (once the records are exhausted); without on_damage it warns (warnings.warn)."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"no event log at {path}: is this a downpour run directory?")
    count, end, corrupt = 0, 0, False
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise LogError(f"cannot read {path} ({exc.strerror})") from None
    with f:  # streamed: a long run's log need not fit in memory
        unpacker = msgpack.Unpacker(f, raw=False)
        try:
            for record in unpacker:
                if count == 0:
                    _check_header(record, path)
                elif not isinstance(record, dict):
                    corrupt = True  # bytes that decode, but not to a record
                    break
                count, end = count + 1, unpacker.tell()
                yield record
        except _UNREADABLE:
            if count == 0:
                raise LogError(f"{path} is not a downpour event log: its first record is unreadable") from None
            corrupt = True
        except OSError as exc:
            raise LogError(f"cannot read {path} ({exc.strerror})") from None
    size = path.stat().st_size
    if count == 0:
        raise no_records(path, size)
    if end < size:
        damage = LogDamage(path, count, size - end, corrupt)
        if on_damage is None:
            warnings.warn(str(damage))
        else:
            on_damage(damage)


def no_records(path: Path, size: int) -> LogError:
    """The error for a log without a complete header: empty, or cut inside its first record."""
    if size == 0:
        return LogError(f"{path} is empty: the run stopped before its actors started")
    return LogError(f"{path} holds no complete record ({size} bytes, a torn header): the run "
                    "stopped before its actors started")


class LogTail:
    """Follows a log that is still being written: each `read_new` returns the records appended
    since the last call. A record half-written at the end waits in the unpacker for its remaining
    bytes; a corrupt one ends the reading (`damage` says where) and later calls return nothing."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.header: Optional[dict] = None
        self.records = 0
        self.damage: Optional[LogDamage] = None
        self._unpacker = msgpack.Unpacker(raw=False)
        self._offset = 0  # bytes fed to the unpacker
        self._end = 0  # offset just after the last complete record

    def read_new(self) -> list[dict]:
        if self.damage:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError as exc:
            raise LogError(f"cannot read {self.path} ({exc.strerror})") from None
        self._offset += len(data)
        self._unpacker.feed(data)
        records = []
        try:
            for record in self._unpacker:
                if self.header is None:
                    _check_header(record, self.path)
                    self.header = record
                elif not isinstance(record, dict):
                    raise ValueError("not a map")
                records.append(record)
                self.records, self._end = self.records + 1, self._unpacker.tell()
        except _UNREADABLE:
            if self.header is None:  # the same words as read_events
                raise LogError(f"{self.path} is not a downpour event log: its first record is "
                               "unreadable") from None
            self._damaged(corrupt=True)
        return records

    def ended(self) -> Optional[LogDamage]:
        """Called once the writer is done: the damage if the log ends early (bytes of a record
        that will never be completed), None if it is whole; a log without a header is a LogError."""
        if self.header is None:
            raise no_records(self.path, self._offset)
        if self.damage is None and self._end < self._offset:
            self._damaged(corrupt=False)
        return self.damage

    def _damaged(self, corrupt: bool) -> None:
        size = max(self._offset, self.path.stat().st_size if self.path.is_file() else 0)
        self.damage = LogDamage(self.path, self.records, size - self._end, corrupt)


def _check_header(record: dict, path: Path) -> None:
    if not isinstance(record, dict) or record.get("kind") != "header":
        raise LogError(f"{path} does not start with a downpour header record")
    if record.get("schema") != SCHEMA_VERSION:
        raise LogError(f"{path} has event-log schema {record.get('schema')}; this downpour reads "
                       f"schema {SCHEMA_VERSION}: use the downpour version that wrote it")


def header_and_end(path: Path) -> tuple[dict, int]:
    """The log's header (checked) and the byte offset just after its last complete record: where
    a resumed run appends, cutting off a record torn by a crash. Streams the file: a long run's
    log need not fit in memory (nor in msgpack's default buffer)."""
    header, end = None, 0
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False)
        try:
            for record in unpacker:
                if header is None:
                    _check_header(record, path)
                    header = record
                end = unpacker.tell()
        except (msgpack.UnpackException, ValueError):
            pass  # a corrupt tail: it ends at the last good record
    if header is None:
        raise LogError(f"{path} holds no readable header: is this a downpour run directory?")
    return header, end
