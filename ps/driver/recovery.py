"""What a job does when one of its actors dies: a replica is replaced on the same data part, a
shard is recreated from its newest good checkpoint as its next incarnation.

Replica steps: a dead replica's steps count as done only as far as its pushes reached every
shard (the shards count pushes per replica); the rest are owed, and its replacement does exactly
those. So the run's step total is the budget, neither short nor counted twice; steps whose
pushes reached only some shards are trained again.

Shard updates: a recreated shard goes back to its checkpoint's version; the updates applied since
are lost (at least the difference to the version last polled) and reported. Its schedule is
shortened by as many, so it still ends where the run ends.
"""

import sys
import time
from pathlib import Path
from typing import Optional

import ray

from ps.common import schema
from ps.common.faults import Fault, FaultInjector
from ps.driver.actors import Fleet
from ps.driver.checkpoints import DIR_NAME
from ps.driver.summary import RunStats
from ps.obs.events import EventLog
from ps.server import checkpoint


class ActorLost(RuntimeError):
    """An actor died or failed and the job may not (or cannot) replace it: the run fails with
    this message, which says which actor, where and why."""


def died(exc: BaseException) -> bool:
    """The actor itself is gone (killed, crashed, its node lost), as opposed to a method that
    raised, or an actor Ray only could not reach for a moment."""
    return isinstance(exc, ray.exceptions.RayActorError) and not isinstance(
        exc, (ray.exceptions.RayTaskError, ray.exceptions.ActorUnavailableError))


class Recovery:
    def __init__(self, fleet: Fleet, stats: RunStats, log: EventLog, run_path: Path,
                 max_replica_restarts: int, max_shard_restarts: int, n_push: int, batch_size: int,
                 out=None):
        self.fleet, self.stats, self.log, self.root = fleet, stats, log, run_path / DIR_NAME
        self.limits = {"replica": max_replica_restarts, "shard": max_shard_restarts}
        self.n_push, self.batch_size, self.out = n_push, batch_size, out or sys.stderr
        self.used = {"replica": 0, "shard": 0}
        self.injected: set[tuple[str, int]] = set()  # (role, id) killed by the fault injector
        self.lost_updates = 0
        self.given_up: set[int] = set()  # shards that stay dead
        self.timeout_s = fleet.c.timeout_s
        self.records: list[dict] = []  # every fault, restart and restore record, for the summary

    def record_fault(self, role: str, actor: int, exc: BaseException) -> str:
        """Logs the death (every one, replaced or not); returns Ray's reason, one line."""
        cause = "injected" if (role, actor) in self.injected else "died"
        self.injected.discard((role, actor))  # a shard's next incarnation may die on its own
        text = str(exc).strip().splitlines()
        node = self.node(role, actor)
        detail = (text[0][:200] if text else type(exc).__name__) + (f" (node {node})" if node else "")
        self._log(schema.fault_record(time.time(), role, actor, cause, detail, node))
        return detail

    def node(self, role: str, actor: int) -> Optional[str]:
        """The Ray node the actor ran on, if known."""
        nodes = self.fleet.nodes.get(f"{role}s", [])
        return nodes[actor] if actor < len(nodes) else None

    def charge(self, role: str, actor: int, detail: str) -> None:
        """Counts one more replacement, or raises ActorLost when --max-ROLE-restarts is spent (a
        shard given up is never restored: replicas waiting for it are told so)."""
        if self.used[role] >= self.limits[role]:
            if role == "shard":
                self.given_up.add(actor)
                ray.get(self.fleet.controller.give_up.remote(actor), timeout=self.timeout_s)
            raise ActorLost(f"{role} {actor} died ({detail}) and the job has replaced "
                            f"{self.used[role]} {role}s already: raise --max-{role}-restarts to allow more")
        self.used[role] += 1

    def replace_replica(self, dead: int, shard_stats: list[dict]) -> Optional[tuple[int, dict]]:
        """Counts the dead replica's steps that every shard received, then starts a replacement for
        the steps it owed; returns (new id, its first progress row) or None when it owed none."""
        row = self.stats.replicas[dead]
        if self.fleet.p.shm is not None:  # a killed replica leaves its slots behind
            self.fleet.p.shm.remove_replica(dead)
        self.fleet.retire_clock(dead)  # ssp: a dead replica holds no one back
        received = min(s["pushes_from"].get(dead, 0) for s in shard_stats)
        done = min(row["total_steps"], received * self.n_push)
        owed = row["total_steps"] - done
        self.stats.update_replica({**row, "step": done, "steps": done, "samples": done * self.batch_size,
                                   "running": False, "died": True}, final=True)
        new = None
        if owed > 0:
            self.fleet.replace_replica(dead, tuple(row["part"]), owed)
            new_id = len(self.fleet.replicas) - 1
            new = new_id, {
                "replica": new_id, "step": 0, "total_steps": owed,
                "part": row["part"], "samples": 0, "t_first": None, "t_last": time.time(),
                "running": False}
        self._log(schema.restart_record(time.time(), dead, new[0] if new else -1, done, owed,
                                        self.used["replica"]))
        print(f"\ndownpour: replica {dead} died: {done} of its steps count, replica "
              f"{new[0] if new else '-'} does the {owed} it owed", file=self.out)
        return new

    def restore_shard(self, shard: int) -> None:
        """Recreates `shard` from its newest good checkpoint (the initial one at worst)."""
        warnings: list[str] = []
        found = checkpoint.latest_shard(self.root, shard, warnings.append)
        for line in warnings:
            print(f"\ndownpour: warning: {line}", file=self.out)
        if found is None:
            self.given_up.add(shard)
            ray.get(self.fleet.controller.give_up.remote(shard), timeout=self.timeout_s)
            raise ActorLost(f"shard {shard} died and no checkpoint of it could be read")
        seq, state = found
        last = self.stats.shard_stats[shard] or {"version": state.version,
                                                 "planned_updates": state.planned_updates}
        lost = max(0, last["version"] - state.version)
        state.planned_updates = max(state.version + 1, last["planned_updates"] - lost)
        self.fleet.replace_shard(shard, state)
        self.lost_updates += lost
        incarnation = self.fleet.incarnations[shard]
        self._log(schema.restore_record(time.time(), shard, incarnation, seq, state.version, lost))
        print(f"\ndownpour: shard {shard} died: recreated from checkpoint {seq} at version "
              f"{state.version} (incarnation {incarnation}; {lost} updates lost)", file=self.out)

    def inject(self, fault: Fault, injector: FaultInjector, training: list[int]) -> None:
        """Kills the actor a due fault names (a replica only while it trains), as a crash would."""
        replica = fault.role == "replica"
        alive = [i for i in (training if replica else range(len(self.fleet.shards)))
                 if (fault.role, i) not in self.injected]
        who = injector.pick(fault, alive)
        if who is None:
            print(f"\ndownpour: fault {fault} skipped: no such {fault.role} is running", file=self.out)
            return
        self.injected.add((fault.role, who))  # until its death is found: not killed twice
        print(f"\ndownpour: injecting fault {fault}: killing {fault.role} {who}", file=self.out)
        ray.kill((self.fleet.replicas if replica else self.fleet.shards)[who], no_restart=True)

    def summary(self) -> dict:
        return {"replica_restarts": self.used["replica"], "shard_restores": self.used["shard"],
                "lost_updates": self.lost_updates,
                "events": list(self.records)}

    def _log(self, record: dict) -> None:
        self.records.append(record)
        self.log.append([record])


def gather(refs: list, timeout_s: float) -> list:
    """Each ref's value, or the RayActorError its actor died with (or was unreachable with, for
    now); anything else raises, and so does a reply that does not come within timeout_s."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if len(ready) < len(refs):
        raise TimeoutError(f"{len(refs) - len(ready)} actors did not answer within {timeout_s:g} s")
    out = []
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayActorError as exc:
            if not died(exc) and not isinstance(exc, ray.exceptions.ActorUnavailableError):
                raise
            out.append(exc)
    return out
