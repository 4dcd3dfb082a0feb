"""The staleness event log: an appending msgpack writer and a tolerant reader (records: ps.common.schema).

The log is a stream of msgpack maps (schema in docs/event-log.md). The first record is a header
with the schema version; a torn last record (a crash mid-write) is skipped with a warning.
"""

import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional

import msgpack

from ps.common.schema import SCHEMA_VERSION


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
    first = True
    with open(path, "rb") as f:  # streamed: a long run's log need not fit in memory
        unpacker = msgpack.Unpacker(f, raw=False)
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
        read = unpacker.tell()
    if first:
        raise LogError(f"{path} holds no records: the run stopped before its actors started")
    if read < path.stat().st_size:
        warnings.warn(f"{path}: skipped a torn last record ({path.stat().st_size - read} bytes)")


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
