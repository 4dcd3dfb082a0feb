"""Event-log records: the schema version and one builder per record kind (docs/event-log.md).

Shards, replicas and the driver build records here; ps.obs.events writes and reads the log.
"""

import math
import numbers
from typing import Optional

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


# ---- fault tolerance (docs/event-log.md "Faults and checkpoints") ---------------------------------
def checkpoint_record(t: float, seq: int, versions: list[int], path: str) -> dict:
    """Every shard's state was saved: checkpoint number `seq`, at these versions, in `path`
    (relative to the run directory)."""
    return {"kind": "checkpoint", "t": t, "seq": seq, "versions": versions, "path": path}


def fault_record(t: float, role: str, actor: int, cause: str, detail: str,
                 node: Optional[str] = None) -> dict:
    """The job found an actor dead: `role` "replica" or "shard", its id; `cause` "injected" (the
    fault injector killed it) or "died"; `detail` the first line of Ray's error; `node` the Ray
    node it ran on (None if unknown)."""
    return {"kind": "fault", "t": t, "role": role, "id": actor, "cause": cause, "detail": detail,
            "node": node}


def restart_record(t: float, dead: int, new: int, steps_done: int, steps_owed: int,
                   restarts: int) -> dict:
    """Replica `dead` was replaced by replica `new`, on the same data part: `steps_done` of the
    dead one's steps reached every shard and count; the new one owes `steps_owed`."""
    return {"kind": "restart", "t": t, "replica": dead, "new": new, "steps_done": steps_done,
            "steps_owed": steps_owed, "restarts": restarts}


def restore_record(t: float, shard: int, incarnation: int, seq: int, version: int,
                   lost_updates: int) -> dict:
    """Shard `shard` was recreated as `incarnation` from checkpoint `seq` at `version`;
    `lost_updates` applied since then were lost (at least this many)."""
    return {"kind": "restore", "t": t, "shard": shard, "incarnation": incarnation, "seq": seq,
            "version": version, "lost_updates": lost_updates}


def resume_record(t: float, seq: int, versions: list[int], replicas: int, shards: int,
                  shard_sizes: list[int], steps_done: int) -> dict:
    """`downpour train --resume` continued this run from checkpoint `seq`; from here on shards
    and replicas are those of the resumed job (a re-shard changes `shards` and `shard_sizes`)."""
    return {"kind": "resume", "t": t, "seq": seq, "versions": versions, "replicas": replicas,
            "shards": shards, "shard_sizes": shard_sizes, "steps_done": steps_done}
