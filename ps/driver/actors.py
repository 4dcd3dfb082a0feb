"""The job's actors: placement groups reserved for them, then the controller, shards, replicas and
evaluator created in those groups, named, and waited for.

Placement is checked twice. `placement.plan_resources` does the fast arithmetic before Ray is
asked for anything (cluster totals, and each role on its own against each node), so the common
mistakes get an exact message at once. Then Ray's placement groups reserve every actor's
resources, both roles together, before any actor starts: what Ray cannot place (roles competing
for one node, a resource that is free in total but on no single node) fails here, with nothing
started, instead of leaving an actor waiting forever. Actors that ask for no resources at all
need no reservation (Ray refuses empty bundles).
"""

import time
from typing import Optional

import ray
from ray.util.placement_group import (
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ps.common.config import replica_settings
from ps.common.errors import UserError
from ps.common.shm import ShmError
from ps.common.shm_clocks import ClockBoard
from ps.driver import ray_session as cluster
from ps.driver.controller import NAMESPACE, JobController
from ps.driver.placement import Placement, live_nodes
from ps.driver.prepare import Prepared
from ps.server.pacer import Pacer
from ps.server.shard import ParameterShard
from ps.server.shm_shard import SharedMemoryShard
from replicas.evaluator import Evaluator
from replicas.replica import ModelReplica

PLACE_POLL_S = 0.2  # how often a pending reservation is asked whether Ray finds it infeasible
CLOSE_WAIT_S = 2.0  # at the end, for live shards to remove their shared-memory files
ROUND_THREADS = (32, 4)  # a round mode's shard threads: at least 32, or 4 per replica (waits hold one)


class Reservation:
    """One placement group of identical bundles, or none when the bundles would be empty."""

    def __init__(self, group=None):
        self.group = group

    def options(self, bundle: int) -> dict:
        if self.group is None:
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.group, bundle)}

    def release(self) -> None:
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None


def reserve(role: str, count: int, bundle: dict, strategy: str, timeout_s: float) -> Reservation:
    """Reserves `count` bundles or raises UserError saying why Ray cannot place them."""
    bundle = {k: v for k, v in bundle.items() if v}
    if not count or not bundle:
        return Reservation()
    group = placement_group([bundle] * count, strategy=strategy)
    deadline = time.monotonic() + timeout_s
    while not group.wait(timeout_seconds=PLACE_POLL_S):
        state = (placement_group_table(group).get("stats") or {}).get("scheduling_state")
        if state == "INFEASIBLE" or time.monotonic() >= deadline:
            remove_placement_group(group)
            shown = ", ".join(f"{k}={v:g}" for k, v in sorted(bundle.items()))
            why = "no node can hold them" if state == "INFEASIBLE" else f"not placed within {timeout_s:g} s"
            raise UserError(f"{count} {role}s asking for {{{shown}}} each cannot be placed ({why}); "
                            f"`ray status` shows what is free: ask for less per {role}, use fewer "
                            f"{role}s, or add nodes")
    return Reservation(group)


def replica_bundle(place: Placement) -> dict:
    return {"CPU": place.replica_cpus, "GPU": place.replica_gpus, **place.replica_custom}


def reserve_job(c, place: Placement) -> tuple[Reservation, Reservation]:
    """The shards' group (spread or packed, as --placement says), then the replicas' (spread)."""
    shards = reserve("shard", c.shards, {"CPU": place.shard_cpus, **place.shard_custom},
                     "SPREAD" if place.shard_strategy == "SPREAD" else "PACK", c.timeout_s)
    try:
        return shards, reserve("replica", c.replicas, replica_bundle(place), "SPREAD", c.timeout_s)
    except UserError:
        shards.release()
        raise


class Fleet:
    """Creates and holds the job's actors; replicas are indexed by id and never reused. A dead
    actor's replacement takes the dead one's place in its placement group."""

    def __init__(self, prepared: Prepared, place: Placement, rooms: tuple[Reservation, Reservation],
                 name: str, run_dir: str):
        """`rooms`: from `reserve_job`, for the shards and the replicas."""
        self.p, self.c, self.place = prepared, prepared.config, place
        self.name, self.run_dir = name, run_dir
        self.shards, self.replicas, self.evaluator, self.controller = [], [], None, None
        # ssp: where the replicas' clocks are (what replicas are given): the pacer actor, or the
        # path of the shared clock table, which this driver also holds
        self.pacer, self._clocks = None, None
        self.reservations: list[Reservation] = list(rooms)
        self.nodes = {"shards": [], "replicas": []}  # Ray node id of each actor, for the summary
        self.incarnations = [0] * self.c.shards
        self.homes: dict[int, dict] = {}  # replica id -> its placement options
        self._node_refs: dict = {}  # replacement replica id -> the ref of its node id

    def start(self, states: Optional[list] = None, parts: Optional[list] = None,
              total_steps: Optional[int] = None) -> None:
        """Creates every actor in the reserved groups and waits for it: within timeout_s, or raises.
        A resumed job gives the shards' `states` (their next incarnation) and the replicas' `parts`
        and `total_steps`."""
        c, (shard_room, replica_room) = self.c, self.reservations
        self.name = _free_name(self.name)  # named, so `downpour top/stop/scale` find the job
        self.controller = ray.remote(JobController).options(
            name=self.name, namespace=NAMESPACE, num_cpus=0,
            scheduling_strategy=cluster.on_this_node()).remote(self.name, self.run_dir)
        if states is not None:
            self.incarnations = [st.incarnation + 1 for st in states]
        self.shards = [self._new_shard(s, piece, shard_room.options(s), states and states[s])
                       for s, piece in enumerate(self.p.plan.split(self.p.initial))]
        mode = self.p.consistency
        if mode.mode == "ssp":
            self._start_pacer(mode.bound)
        data = self.p.dataset
        self._train = ray.put(data.train_images), ray.put(data.train_labels)
        self.replicas = [self._new_replica(r, replica_room.options(r), parts and parts[r], total_steps)
                         for r in range(c.replicas)]
        self.evaluator = ray.remote(Evaluator).options(
            num_cpus=0, scheduling_strategy=cluster.on_this_node()).remote(
            c.model, c.seed, self.p.plan, self.shards, data.test_images, data.test_labels, c.timeout_s)
        self._wait_ready(self.shards + self.replicas + [self.evaluator, self.controller] +
                         self._pacer_actor())
        self.nodes = {"driver": ray.get_runtime_context().get_node_id(),
                      "shards": _node_ids(self.shards), "replicas": _node_ids(self.replicas)}

    def add_replicas(self, parts: list[tuple[int, tuple]], total_steps: int, timeout_s: float) -> list:
        """New replicas (id, part), each doing `total_steps`; placed first, so a request the cluster
        cannot meet raises UserError with nothing started."""
        room = reserve("replica", len(parts), replica_bundle(self.place), "SPREAD", timeout_s)
        self.reservations.append(room)
        added = []
        for k, (replica_id, part) in enumerate(parts):
            assert replica_id == len(self.replicas), "replica ids are handed out in order"
            self.replicas.append(self._new_replica(replica_id, room.options(k), part, total_steps))
            added.append(self.replicas[-1])
        self._wait_ready(added)
        self.nodes["replicas"] += _node_ids(added)
        return added

    def replace_replica(self, dead: int, part: tuple, total_steps: int):
        """A new replica, the next id, in the dead one's place, on its part; returns its handle at
        once (it starts while the job goes on: a run called on it waits for it)."""
        new_id = len(self.replicas)
        self.replicas.append(self._new_replica(new_id, self.homes[dead], part, total_steps))
        self.nodes["replicas"].append(None)
        self._node_refs[new_id] = _node_id_ref(self.replicas[-1])
        return self.replicas[-1]

    def resolve_nodes(self, timeout_s: float = 1.0) -> None:
        """Fills in the nodes of replacement replicas that have answered (None for the others)."""
        for replica_id, ref in self._node_refs.items():
            ready, _ = ray.wait([ref], timeout=timeout_s)
            if ready:
                try:
                    self.nodes["replicas"][replica_id] = ray.get(ref)
                except ray.exceptions.RayError:
                    pass  # it died before it answered: it ran nowhere
        self._node_refs.clear()

    def replace_shard(self, shard: int, state) -> None:
        """Recreates `shard` from `state` as its next incarnation, in the dead one's place, and
        tells the replicas (through the controller) and the evaluator where it is."""
        self.incarnations[shard] += 1
        ray.kill(self.shards[shard], no_restart=True)  # dead already, or not quite: it must not answer
        if self.p.shm is not None:  # a killed shard leaves its board and doorbell behind
            self.p.shm.remove_shard(shard, self.incarnations[shard] - 1)
        self.shards[shard] = self._new_shard(shard, state.values, self.reservations[0].options(shard),
                                             state)
        self._wait_ready(self.shards[shard:shard + 1])
        ray.get([self.controller.set_shard.remote(shard, self.incarnations[shard], self.shards[shard]),
                 self.evaluator.use_shards.remote(self.shards)], timeout=self.c.timeout_s)
        self.nodes["shards"][shard] = _node_ids(self.shards[shard:shard + 1])[0]

    def kill(self) -> None:
        if self.p.shm is not None:  # live shards remove their own files, wherever they run
            ray.wait([s.close.remote() for s in self.shards], num_returns=len(self.shards),
                     timeout=CLOSE_WAIT_S)
        for actor in self.shards + self.replicas + [
                a for a in (self.evaluator, self.controller) if a] + self._pacer_actor():
            ray.kill(actor)
        for room in self.reservations:
            room.release()
        if self._clocks is not None:  # its file goes with the run's others (ps.driver.train)
            self._clocks.close()

    def _start_pacer(self, bound: int) -> None:
        """SSP's clocks: in shared memory when the job has it and the cluster is one machine (a
        report is then a store, not a Ray call), else in the pacer actor."""
        if self.p.shm is not None and len(live_nodes()) == 1:
            try:
                self._clocks = ClockBoard.create(self.p.shm.clocks(), bound, self.c.replicas)
                self.pacer = self._clocks.segment.path
                return
            except ShmError:
                pass  # no room for a few hundred KB: the actor keeps the clocks instead
        self.pacer = ray.remote(Pacer).options(
            num_cpus=0, scheduling_strategy=cluster.on_this_node()).remote(bound, self.c.replicas)

    def _pacer_actor(self) -> list:
        return [self.pacer] if self.pacer is not None and self._clocks is None else []

    def pacer_stats(self) -> Optional[dict]:
        """SSP: the bound, waits, violations and max_gap over the job's replicas, and where the
        clocks were kept (clock_table: shm or actor); None otherwise (or when the actor cannot
        answer)."""
        if self._clocks is not None:
            return {**self._clocks.stats(), "clock_table": "shm"}
        if self.pacer is None:
            return None
        try:
            return {**ray.get(self.pacer.stats.remote(), timeout=self.c.timeout_s), "clock_table": "actor"}
        except ray.exceptions.RayError:
            return None

    def retire_clock(self, replica: int) -> None:
        """SSP: a dead replica holds no one back."""
        if self._clocks is not None:
            self._clocks.retire(replica)
        elif self.pacer is not None:
            self.pacer.retire.remote(replica)

    def _new_shard(self, shard_id, piece, options, state=None):
        c = self.c
        opts = {**self.place.shard_options(), **options}
        mode = self.p.consistency
        if mode.rounds or mode.mode == "hogwild":  # waits for rounds / concurrent pushes: threads
            opts["max_concurrency"] = max(ROUND_THREADS[0], ROUND_THREADS[1] * c.replicas)
        shm = {} if self.p.shm is None else {"shm": self.p.shm, "required": c.transport == "shm"}
        return ray.remote(SharedMemoryShard if shm else ParameterShard).options(**opts).remote(
            shard_id, piece, self.p.optimizer, c.lr, c.lr_rule, c.lr_schedule,
            self.p.budget.planned_updates, self.name if c.metrics else None, c.event_log,
            clip_norm=c.clip_norm, incarnation=self.incarnations[shard_id], state=state,
            consistency=mode, replicas=c.replicas, transform=c.gradient_transform, **shm)

    def _new_replica(self, replica_id, options, part=None, total_steps=None):
        self.homes[replica_id] = options
        cls = ray.remote(ModelReplica).options(**self.place.replica_options(), **options,
                                               max_concurrency=2)
        mode = self.p.consistency
        settings = replica_settings(self.c, mode.rounds, mode.bound if mode.mode == "ssp" else None)
        return cls.remote(replica_id, settings, self.p.plan, self.shards, *self._train,
                          self.place.threads, part, total_steps, directory=self.controller,
                          incarnations=list(self.incarnations), shm=self.p.shm, pacer=self.pacer)

    def _wait_ready(self, actors: list) -> None:
        """Reserved actors start at once unless a constructor raises (it fails here, with its
        error) or a node is too slow; timeout_s bounds the wait."""
        ready, _ = ray.wait([a.__ray_ready__.remote() for a in actors], num_returns=len(actors),
                            timeout=self.c.timeout_s)
        ray.get(ready)
        if len(ready) < len(actors):
            raise TimeoutError(f"{len(actors) - len(ready)} of {len(actors)} actors did not start "
                               f"within {self.c.timeout_s:g} s")


def _node_ids(actors: list) -> list[Optional[str]]:
    """The Ray node each actor runs on, asked of the actor itself."""
    return ray.get([_node_id_ref(a) for a in actors])


def _node_id_ref(actor):
    return actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())


def _free_name(name: str) -> str:
    """The run directory's name, or name-2, name-3...: two live jobs (in folders of the same name)
    must not share a controller name or a metrics tag."""
    candidate, n = name, 1
    while True:
        try:
            ray.get_actor(candidate, namespace=NAMESPACE)
        except ValueError:
            return candidate
        n += 1
        candidate = f"{name}-{n}"
