"""`downpour simulate`: a job's learners as logical learners in one process, on simulated time.

The shards are the real ParameterShard objects with the job's optimizer, rule, consistency mode
and gradient transform; the learners compute with the Ray replica's gradient code; only the
clock is simulated (ps.sim.engine). The run directory is a train run's (config.yaml, events.msgpack,
summary.json, model.pt), so `downpour staleness` and `report` read it unchanged; its summary adds
a "simulation" block.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ps.common import rundir, schema
from ps.common.config import TrainConfig, to_dict
from ps.common.delays import DelayModel, parse_delay
from ps.common.errors import UserError
from ps.driver.divergence import DivergenceAlarm
from ps.driver.evaluation import DRY_RUN_TEST_SAMPLES
from ps.driver.prepare import Prepared, prepare
from ps.driver.summary import RunStats, consistency_summary
from ps.obs import events
from ps.obs.replay import step_times
from ps.server.shard import ParameterShard
from ps.sim.engine import ORDERS, Engine
from ps.sim.learner import Learner, Quota
from replicas.evaluator import score, write_model
from replicas.flat import FlatParams
from replicas.models import build_model

LOSS_POINTS = 100  # points of the summary's training-loss curve
# what a simulated job cannot do, and why (the field, its fix)
UNSUPPORTED = {"inject_faults": "faults are injected into Ray actors: drop --inject-faults",
               "tensorboard": "the simulator writes no TensorBoard scalars: drop --tensorboard",
               "inject_delay": "give step times with --delay (simulated seconds) instead"}


@dataclass(frozen=True)
class SimSettings:
    delay: str = "constant"  # ps.common.delays: the learners' step times, in simulated seconds
    order: str = "delay"     # how pushes at the same simulated time are ordered (ps.sim.engine)
    threads: int = 1         # torch threads for the learners' computes
    warmstart: float = 0.0   # epochs learner 0 trains alone before the others start (Dean et al.);
                             # they add to its steps


class Stop(Exception):
    """The divergence alarm rang at an evaluation."""


def check_settings(settings: SimSettings) -> DelayModel:
    if settings.order not in ORDERS:
        raise UserError(f"order is '{settings.order}': choose one of {', '.join(ORDERS)}")
    if not 1 <= settings.threads <= 64:
        raise UserError(f"threads is {settings.threads}: give --threads 1..64")
    if not 0 <= settings.warmstart < 1e6:
        raise UserError(f"warmstart is {settings.warmstart:g}: give --warmstart 0 or more epochs")
    return parse_delay(settings.delay, "delay", step_times)


def simulate(c: TrainConfig, settings: SimSettings = SimSettings(), out=None) -> tuple[Path, dict]:
    """Runs the job in simulation to its end; returns its run directory and summary. Bad input
    raises UserError (and the data and plan errors) before anything runs."""
    out = out or sys.stderr
    delay = check_settings(settings)
    for name, fix in UNSUPPORTED.items():
        if getattr(c, name, None):
            raise UserError(f"{name} is set, but a simulated job cannot use it: {fix}")
    prepared = prepare(c)
    pc = prepared.config
    if pc.n_fetch != pc.n_push:
        raise UserError(f"the simulator runs rounds of n_push steps between fetches: give n_fetch = "
                        f"n_push (they are {pc.n_fetch} and {pc.n_push})")
    path = rundir.create(c.run_dir, f"sim-{c.model}-r{c.replicas}s{c.shards}")
    with rundir.driver_lock(path):
        rundir.write_config(path, to_dict(c))
        summary = Simulation(prepared, delay, settings, path).run()
    print(f"downpour: {summary['status']}: test accuracy {summary['test_accuracy']} after "
          f"{summary['simulation']['simulated_s']:.4g} simulated s; run directory {path}", file=out)
    return path, summary


class Simulation:
    def __init__(self, prepared: Prepared, delay: DelayModel, settings: SimSettings, path: Path):
        self.p, self.c, self.delay, self.settings = prepared, prepared.config, delay, settings
        self.path = path
        c, plan, mode = self.c, prepared.plan, prepared.consistency
        self.shards = [ParameterShard(
            s, piece, prepared.optimizer, c.lr, c.lr_rule, c.lr_schedule,
            prepared.budget.planned_updates, None, c.event_log, clip_norm=c.clip_norm,
            consistency=mode, replicas=c.replicas, transform=c.gradient_transform)
            for s, piece in enumerate(plan.split(prepared.initial))]
        data, budget = prepared.dataset, prepared.budget
        # warmstart: learner 0's first steps, alone, on top of its share of the budget
        warm = round(settings.warmstart * budget.steps_per_epoch)
        shared = Quota(budget.total_steps + warm) if c.budget == "job" else None
        quotas = [shared or Quota(budget.steps_per_replica + (warm if i == 0 else 0))
                  for i in range(c.replicas)]
        self.learners = [Learner(i, c, plan, data.train_images, data.train_labels, quotas[i],
                                 delay.stream(c.seed, i)) for i in range(c.replicas)]
        self.engine = Engine(self.learners, self.shards, mode, settings.order, c.seed, warm)
        # the learners' mean training loss in each 1 % of the run's steps: the summary's curve
        self._loss_bin = max(1, prepared.budget.total_steps // LOSS_POINTS)
        self._losses: list = []
        self.train_loss: list = []  # [epochs, mean training loss] per bin
        self.log = events.EventLog(path / schema.LOG_NAME)
        self.stats = RunStats(c.shards)
        self.alarm = DivergenceAlarm(c.divergence_factor)
        self.scorer = build_model(c.model, c.seed)
        self.scorer_flat = FlatParams(self.scorer, torch.device("cpu"))
        self.t0 = time.time()
        self._next_eval, self._steps = c.eval_every, 0

    def run(self) -> dict:
        c, started = self.c, time.time()
        torch.set_num_threads(self.settings.threads)
        plan = self.p.plan
        self.log.append([schema.header_record(
            self.t0, c.replicas, c.shards, [plan.shard_numel(s) for s in range(c.shards)],
            model=c.model, batch_size=c.batch_size, n_fetch=c.n_fetch, n_push=c.n_push)])
        status, error = "completed", None
        try:
            self.engine.run(self._fetched, self._pushed)
        except Stop as why:
            status, error = "diverged", str(why)
        except KeyboardInterrupt:
            status = "interrupted"
        final = self._evaluate(DRY_RUN_TEST_SAMPLES if c.dry_run else None)
        self.log.append([schema.eval_record(self._t(), final["accuracy"], final["loss"],
                                            final["versions"], -1)])
        write_model(self.scorer, c.model, c.seed, final["versions"], str(self.path / rundir.MODEL_NAME))
        summary = self._summary(final, status, error, time.time() - started)
        rundir.write_summary(self.path, summary)
        self.log.close()
        return summary

    def _t(self) -> float:
        return self.t0 + self.engine.now

    def _fetched(self, record: dict) -> None:
        if self.c.event_log:
            record["t"] = self.t0 + record["t"]
            self.log.append([record])
            self.stats.ingest([record])

    def _pushed(self, learner: Learner) -> None:
        if self.c.event_log:
            t = self._t()
            records = [r for s in self.shards for r in s.drain_events()]
            for r in records:
                r["t"] = t
            self.log.append(records)
        self._steps += learner.computed
        self._losses.append(learner.loss)
        if self._steps // self._loss_bin > len(self.train_loss):
            self.train_loss.append([round(self.p.budget.epochs_of(self._steps), 5),
                                    float(np.mean(self._losses))])
            self._losses = []
        epochs = self.p.budget.epochs_of(self._steps)
        if self.c.eval_every and epochs >= self._next_eval and self._steps < self.p.budget.total_steps:
            self._next_eval += self.c.eval_every
            result = self._evaluate(None)
            self.log.append([schema.eval_record(self._t(), result["accuracy"], result["loss"],
                                                result["versions"], self._steps * self.c.batch_size)])
            self.stats.evals.append({**result, "epochs": epochs})
            why = self.alarm.evaluation(result["loss"])
            if why:
                raise Stop(why)

    def _evaluate(self, limit: Optional[int]) -> dict:
        versions = [s.version for s in self.shards]
        self.p.plan.assemble([s.optimizer.values for s in self.shards], self.scorer_flat.host_values())
        data = self.p.dataset
        n = len(data.test_labels) if limit is None else min(limit, len(data.test_labels))
        accuracy, loss = score(self.scorer, data.test_images[:n], data.test_labels[:n])
        return {"accuracy": accuracy, "loss": loss, "versions": versions, "test_samples": n,
                "pulled_at": self._t()}

    def _summary(self, final: dict, status: str, error: Optional[str], wall_s: float) -> dict:
        c = self.c
        self.stats.shard_stats = [s.stats() for s in self.shards]
        for learner in self.learners:
            self.stats.update_replica({
                "replica": learner.id, "steps": learner.steps,
                "samples": learner.steps * c.batch_size, "t_first": self.t0, "t_last": self._t(),
                "loss": learner.loss, "transport": "simulated"}, final=True)
        head = {"run": self.path.name, "status": status, "error": error, "stop_reason": None,
                "nodes": None, "data_source": self.p.dataset.source or None}
        summary = self.stats.summary(c, head, final, wall_s, c.event_log)
        summary["consistency"] = consistency_summary(self.p.consistency.text, self.stats.shard_stats,
                                                     self.engine.ssp_stats(), c)
        summary["simulation"] = {"delay": self.delay.text, "order": self.settings.order,
                                 "mean_step_s": self.delay.mean_s,
                                 "simulated_s": round(self.engine.now, 6),
                                 "wall_s": round(wall_s, 3), "warmstart": self.settings.warmstart,
                                 "train_loss": self.train_loss}
        return summary

