"""Scaling a running job to n replicas: place the new ones first, then reassign, stop and start.

Every replica of the new generation trains on part k of n of a fresh partition from its next step,
and the steps left in the run are shared out anew (`budget.rescale_plan`). The new replicas'
resources are reserved before anything changes, so a request the cluster cannot meet fails only
that request. The shards' schedules are told how many updates are left, so a cosine schedule still
ends where the run ends.
"""

import time
from typing import Callable

import ray

from ps.common import schema
from ps.common.errors import UserError
from ps.driver.actors import Fleet
from ps.driver.budget import RescalePlan, replace_refused, rescale_plan
from ps.obs.events import EventLog

SCALE_PLACE_S = 10.0  # at most this long the job waits to place new replicas (it is not polling meanwhile)


class Rescaler:
    def __init__(self, fleet: Fleet, n_push: int, log: EventLog, timeout_s: float,
                 retire: Callable[[list[int]], None]):
        """`retire(ids)`: waits for those replicas' runs to return and frees their resources."""
        self.fleet, self.n_push, self.log, self.timeout_s, self.retire = fleet, n_push, log, timeout_s, retire
        self.generation = 0

    def apply(self, n: int, training: list[int], steps_left: int) -> tuple[bool, str, list[int], list[int]]:
        """(ok, message, ids of replicas started, ids of the new generation)."""
        plan = rescale_plan(training, steps_left, n, len(self.fleet.replicas))
        if isinstance(plan, str):
            return False, plan, [], training
        generation = self.generation + 1
        parts = self._parts(plan, plan.new, generation)
        try:
            self.fleet.add_replicas(parts, plan.share, min(self.timeout_s, SCALE_PLACE_S))
        except UserError as exc:
            return False, str(exc), [], training
        self.generation = generation
        refused = self._reassign(plan)
        for i in plan.drop:
            self.fleet.replicas[i].stop.remote()
        started = list(plan.new)
        if refused:  # their loops had just ended: new replicas take their parts, in their resources
            self.retire(refused)
            plan = replace_refused(plan, refused, len(self.fleet.replicas))
            substitutes = plan.new[len(started):]
            self.fleet.add_replicas(self._parts(plan, substitutes, generation), plan.share, self.timeout_s)
            started += substitutes
        ray.get([s.replan.remote(plan.updates_left(self.n_push)) for s in self.fleet.shards] +
                [s.resize.remote(n) for s in self.fleet.shards],  # rounds of n gradients from now
                timeout=self.timeout_s)
        self.log.append([schema.scale_record(time.time(), n, plan.members, self.generation)])
        message = (f"{len(training)} -> {n} replicas (generation {self.generation}; each does "
                   f"{plan.share} more steps on part k of {n})")
        return True, message, started, plan.members

    @staticmethod
    def _parts(plan: RescalePlan, ids: list[int], generation: int) -> list[tuple[int, tuple]]:
        """(id, part) of each of `ids`: part k of the new generation's n."""
        n = len(plan.members)
        return [(i, (n, plan.members.index(i), generation)) for i in ids]

    def _reassign(self, plan: RescalePlan) -> list[int]:
        """Gives each kept replica its part and share; returns those that refused (already ending)."""
        keep, n = plan.keep, len(plan.members)
        progress = ray.get([self.fleet.replicas[i].progress.remote() for i in keep], timeout=self.timeout_s)
        answers = ray.get([self.fleet.replicas[i].reassign.remote(
            (n, plan.members.index(i), self.generation), p["step"] + plan.share)
            for i, p in zip(keep, progress)], timeout=self.timeout_s)
        return [i for i, ok in zip(keep, answers) if ok is False]
