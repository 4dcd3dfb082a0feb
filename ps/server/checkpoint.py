"""Shard checkpoints: one shard's state as a checksummed msgpack file that never unpickles, and
numbered sets of them under RUN_DIR/checkpoints (newest loadable set wins). Pure: numpy, msgpack
and the stdlib; no Ray, no torch. Re-sharding saved states is ps.driver.reshard."""

import dataclasses
import hashlib
import json
import os
import shutil
from contextlib import suppress
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Callable, Optional

import msgpack
import numpy as np

MAGIC = "downpour-shard-checkpoint"
FORMAT_VERSION = 1
JOB_FILE = "job.json"
# Plain numeric dtypes only: an "object" array would need pickle to rebuild, which a file must never trigger.
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64")


class CheckpointError(ValueError):
    """A checkpoint file or set that cannot be used; the one-line message names the file or set."""


@dataclass
class ShardState:
    """Everything a shard needs to continue exactly where it was (ParameterShard.export_state)."""
    shard: int
    version: int
    incarnation: int
    planned_updates: int
    values: np.ndarray                    # float32 (size,)
    optim: dict                           # name -> np.ndarray: torch.optim's per-parameter state,
    #                                       (size,) arrays (exp_avg, momentum_buffer...) and 0-d ones (step)
    counters: dict = field(default_factory=dict)  # tau_sum: int, tau_counts: {int: int}, rejected: {str: int}
    meta: dict = field(default_factory=dict)      # optimizer: {"name", "params"}, and what the job adds


FIELDS = tuple(f.name for f in dataclasses.fields(ShardState))
INT_FIELDS = ("shard", "version", "incarnation", "planned_updates")


def empty_counters() -> dict:
    return {"tau_sum": 0, "tau_counts": {}, "rejected": {}}


# ---- one shard, one file -----------------------------------------------------------------------
def encode(state: ShardState) -> bytes:
    """The file's bytes: an envelope {format, version, sha256, body}, body = msgpack of the fields."""
    fields = {name: getattr(state, name) for name in FIELDS}
    fields["values"] = _array_to_msg(state.values, state.shard, "values")
    fields["optim"] = {k: _array_to_msg(a, state.shard, f"optim[{k!r}]") for k, a in state.optim.items()}
    try:
        body = msgpack.packb(fields, use_bin_type=True, default=_numpy_scalar)
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"cannot save shard {state.shard}: {e} (counters and meta must hold only "
                              "dicts, lists, str, int, float, bool and None)") from None
    return msgpack.packb({"format": MAGIC, "version": FORMAT_VERSION,
                          "sha256": hashlib.sha256(body).hexdigest(), "body": body}, use_bin_type=True)


def decode(data: bytes, what: str) -> ShardState:
    """Inverse of encode; `what` (usually the file path) starts every error message."""
    env = _unpack(data, what)
    if not isinstance(env, dict) or env.get("format") != MAGIC:
        raise CheckpointError(f"{what}: not a downpour shard checkpoint (no {MAGIC!r} marker)")
    version = env.get("version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise CheckpointError(f"{what}: format version {version!r} is not supported (this downpour reads "
                              f"version {FORMAT_VERSION}): resume with the downpour that wrote it")
    body, digest = env.get("body"), env.get("sha256")
    if not isinstance(body, bytes) or not isinstance(digest, str):
        raise CheckpointError(f"{what}: the envelope lacks its body or sha256: the file is damaged")
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(f"{what}: checksum mismatch: the file is damaged")
    return _state_from_fields(_unpack(body, what), what)


def write_file(path: Path, state: ShardState) -> None:
    """Save one shard atomically (tmp + fsync + rename): a reader sees the old file or the new one."""
    _write_atomic(Path(path), encode(state))


def read_file(path: Path) -> ShardState:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode(data, str(path))


def _array_to_msg(arr: np.ndarray, shard: int, name: str) -> dict:
    arr = np.asarray(arr)
    if arr.dtype.name not in DTYPES:
        raise CheckpointError(f"cannot save shard {shard}: {name} has dtype {arr.dtype}; checkpoints store "
                              f"only {', '.join(DTYPES)}")
    # Little-endian, C order, whatever the writer's machine: the file means the same everywhere.
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": data}


def _array_from_msg(msg: object, what: str, name: str) -> np.ndarray:
    if not isinstance(msg, dict) or set(msg) != {"dtype", "shape", "data"}:
        raise CheckpointError(f"{what}: {name} is not an array record {{dtype, shape, data}}")
    dtype, shape, data = msg["dtype"], msg["shape"], msg["data"]
    if dtype not in DTYPES:
        raise CheckpointError(f"{what}: {name} has dtype {dtype!r}; checkpoints hold only {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{what}: {name} has shape {shape!r}; expected a list of whole numbers >= 0")
    stored = np.dtype(dtype).newbyteorder("<")
    expected = prod(shape) * stored.itemsize
    if not isinstance(data, bytes) or len(data) != expected:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise CheckpointError(f"{what}: {name} has {got} bytes of data but shape {tuple(shape)} of {dtype} "
                              f"needs {expected}: the file is damaged")
    # astype copies into a writable, native-order array that owns its memory (frombuffer is read-only).
    return np.frombuffer(data, dtype=stored).reshape(shape).astype(np.dtype(dtype))


def _state_from_fields(fields: object, what: str) -> ShardState:
    if not isinstance(fields, dict):
        raise CheckpointError(f"{what}: the body is not a map of fields: the file is damaged")
    missing = [f for f in FIELDS if f not in fields]
    unknown = sorted(map(str, set(fields) - set(FIELDS)))
    if missing or unknown:
        problems = [f"{label} fields {names}" for label, names in (("missing", missing), ("unknown", unknown)) if names]
        raise CheckpointError(f"{what}: {', '.join(problems)}: not written by this downpour's format "
                              f"version {FORMAT_VERSION}")
    for name in INT_FIELDS:
        if not _is_int(fields[name]):
            raise CheckpointError(f"{what}: {name} is {fields[name]!r}, not a whole number")
    for name in ("optim", "counters", "meta"):
        if not isinstance(fields[name], dict):
            raise CheckpointError(f"{what}: {name} is a {type(fields[name]).__name__}, not a map")
    if not all(isinstance(k, str) for k in fields["optim"]):
        raise CheckpointError(f"{what}: optim has non-string names {list(fields['optim'])}")
    fields["values"] = _array_from_msg(fields["values"], what, "values")
    fields["optim"] = {k: _array_from_msg(v, what, f"optim[{k!r}]") for k, v in fields["optim"].items()}
    return ShardState(**fields)


def _unpack(data: bytes, what: str) -> object:
    try:
        # strict_map_key=False: tau_counts has int keys and must come back with int keys.
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        reason = str(e) or type(e).__name__
        raise CheckpointError(f"{what}: not readable as msgpack ({reason}): the file is truncated, damaged "
                              "or not a checkpoint") from None


def _numpy_scalar(obj: object) -> object:
    # export_state may hand us np.int64 counts; store them as the plain numbers they are.
    if isinstance(obj, np.generic) and obj.dtype.name in DTYPES:
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename survives a power cut only once the folder entry is on disk. Not possible on every
    # platform (Windows cannot open a folder), where the rename alone has to do.
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- checkpoint sets: ROOT/NNNNNN/{shard-<s>.ckpt..., job.json} ---------------------------------
def set_dir(root: Path, seq: int) -> Path:
    return Path(root) / f"{seq:06d}"


def shard_file(set_path: Path, shard: int) -> Path:
    return Path(set_path) / f"shard-{shard}.ckpt"


def is_complete(set_path: Path) -> bool:
    return (Path(set_path) / JOB_FILE).is_file()


def save_set(root: Path, seq: int, states: list[ShardState], job: dict, keep: int) -> Path:
    """Write set `seq` (shard files, then job.json, which marks it complete) and prune old sets.

    Keeps the newest `keep` complete sets plus this one; removes incomplete sets older than the
    newest complete one (a crash's leftovers). A set already numbered `seq` is replaced.
    """
    if not _is_int(keep) or keep < 1:
        raise ValueError(f"keep is {keep!r}: keep at least 1 checkpoint")
    if not states or [s.shard for s in states] != list(range(len(states))):
        raise ValueError(f"states are for shards {[s.shard for s in states]}: pass one state per shard, "
                         "in shard order 0..N-1")
    if job.get("shards", len(states)) != len(states):
        raise ValueError(f"job says shards={job['shards']} but {len(states)} states were given")
    job_bytes = (json.dumps({**job, "shards": len(states)}, indent=2, sort_keys=True) + "\n").encode()
    path = set_dir(root, seq)
    if path.exists():
        _remove_set(path)
    path.mkdir(parents=True)
    for state in states:
        write_file(shard_file(path, state.shard), state)
    _write_atomic(path / JOB_FILE, job_bytes)
    _prune(root, keep, protect=seq)
    return path


def list_sets(root: Path) -> list[tuple[int, Path]]:
    """Every set folder (name all ASCII digits) under root, ascending by number, complete or not."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(p.name), p) for p in root.iterdir()
                  if p.is_dir() and p.name.isascii() and p.name.isdigit())


def load_set(path: Path) -> tuple[list[ShardState], dict]:
    """Every shard's state and the job dict of one set; CheckpointError if anything is off."""
    path = Path(path)
    try:
        job = json.loads((path / JOB_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: incomplete (no {JOB_FILE}: its save did not finish)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / JOB_FILE}: unreadable ({e})") from None
    shards = job.get("shards") if isinstance(job, dict) else None
    if not _is_int(shards) or shards < 1:
        raise CheckpointError(f"{path / JOB_FILE}: 'shards' is {shards!r}, expected a whole number >= 1")
    states = [read_file(shard_file(path, s)) for s in range(shards)]
    for s, state in enumerate(states):
        if state.shard != s:
            raise CheckpointError(f"{shard_file(path, s)}: holds shard {state.shard}, not {s}")
    return states, job


def latest_set(root: Path, warn: Callable[[str], None]
               ) -> Optional[tuple[int, Path, list[ShardState], dict]]:
    """The newest set that loads, as (seq, path, states, job); warns once per newer set skipped."""
    skipped = []
    for seq, path in reversed(list_sets(root)):
        try:
            states, job = load_set(path)
        except CheckpointError as e:
            skipped.append((seq, _problem(path, e)))
            continue
        _warn_skipped(warn, skipped, f"using {seq:06d}")
        return seq, path, states, job
    _warn_skipped(warn, skipped, "no older checkpoint loads")
    return None


def latest_shard(root: Path, shard: int, warn: Callable[[str], None]) -> Optional[tuple[int, ShardState]]:
    """The newest (seq, state) of one shard; a set still being written counts (no job.json needed).

    A set without this shard's file is skipped silently if incomplete (not written yet), with a
    warning if complete (the file went missing).
    """
    skipped = []
    for seq, path in reversed(list_sets(root)):
        file = shard_file(path, shard)
        if not file.exists() and not is_complete(path):
            continue
        try:
            state = read_file(file)
            if state.shard != shard:
                raise CheckpointError(f"{file}: holds shard {state.shard}, not {shard}")
        except CheckpointError as e:
            skipped.append((seq, f"is damaged ({e})"))
            continue
        _warn_skipped(warn, skipped, f"using {seq:06d} for shard {shard}")
        return seq, state
    _warn_skipped(warn, skipped, f"no older checkpoint of shard {shard} loads")
    return None


def _problem(path: Path, err: CheckpointError) -> str:
    return "is incomplete (its save did not finish)" if not is_complete(path) else f"is damaged ({err})"


def _warn_skipped(warn: Callable[[str], None], skipped: list[tuple[int, str]], outcome: str) -> None:
    for seq, problem in skipped:
        warn(f"checkpoint {seq:06d} {problem}: {outcome}")


def _prune(root: Path, keep: int, protect: int) -> None:
    sets = list_sets(root)
    complete = [seq for seq, path in sets if is_complete(path)]
    kept = set(complete[-keep:]) | {protect}
    newest = max(complete, default=protect)
    for seq, path in sets:
        if seq not in kept and (seq in complete or seq < newest):
            _remove_set(path)


def _remove_set(path: Path) -> None:
    # job.json goes first, so a crash mid-delete leaves an incomplete set, never a "complete" one
    # with shard files missing.
    (path / JOB_FILE).unlink(missing_ok=True)
    shutil.rmtree(path)
