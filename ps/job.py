"""The training job: check every input, create shards and replicas, watch them, write the run directory.

The driver only creates actors, polls counters, evaluates through the evaluator actor and writes
files: gradients and parameters go between replicas and shards directly.
"""

import array
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import ray
import torch

from ps import cluster, events, rundir
from ps.config import TrainConfig, to_dict
from ps.controller import NAMESPACE, JobController
from ps.errors import UserError
from ps.live import LiveStats
from ps.optimizers import OptimizerSpec, parse_optimizer
from ps.progress import ProgressLine
from ps.rules import make_rule
from ps.schedules import get_schedule
from ps.shard import ParameterShard
from ps.staleness import summarize
from ps.tensorboard import Scalars, require_tensorboard
from replicas.data import Dataset, load_dataset
from replicas.evaluator import Evaluator
from replicas.models import build_model, named_shapes
from replicas.replica import ModelReplica
from sharding import ShardPlan, make_plan

POLL_S = 1.0          # how often the driver drains events and redraws progress
DRY_RUN_STEPS = 3
DRY_RUN_TEST_SAMPLES = 500


@dataclass
class Prepared:
    """Everything checked before any actor starts."""
    config: TrainConfig
    plan: ShardPlan
    optimizer: OptimizerSpec
    dataset: Dataset
    initial: np.ndarray  # the flat initial parameters, drawn from the seed


def prepare(c: TrainConfig) -> Prepared:
    """Checks every name, file and size; raises UserError/PlanError/DataError, starts nothing."""
    if c.dry_run:
        c = dataclasses.replace(c, steps=min(c.steps or DRY_RUN_STEPS, DRY_RUN_STEPS), eval_every=0.0)
    model = build_model(c.model, c.seed)
    plan = make_plan(named_shapes(model), c.shards, c.sharding)
    optimizer = parse_optimizer(c.optimizer)
    make_rule(c.lr_rule)
    get_schedule(c.lr_schedule)
    if c.tensorboard:
        require_tensorboard()
    dataset = load_dataset(c.dataset, c.data_dir, c.seed)
    smallest = len(dataset.train_labels) // c.replicas
    if c.batch_size > smallest:
        raise UserError(f"batch_size {c.batch_size} is larger than a replica's partition "
                        f"({smallest} samples with {c.replicas} replicas): lower --batch-size "
                        "or --replicas")
    with torch.no_grad():
        initial = torch.cat([p.reshape(-1) for p in model.parameters() if p.requires_grad]).numpy()
    return Prepared(c, plan, optimizer, dataset, initial)


class TrainingJob:
    def __init__(self, prepared: Prepared, placement: cluster.Placement, run_path: Path, out=None):
        self.p, self.c, self.place, self.path = prepared, prepared.config, placement, run_path
        self.out = out or sys.stderr
        self.shards, self.replicas, self.evaluator, self.controller = [], [], None, None
        self.log = events.EventLog(run_path / events.LOG_NAME)
        self.live: Optional[LiveStats] = None  # from the header on, in _start_actors
        self.scalars = Scalars(run_path) if self.c.tensorboard else None
        self.stop_reason, self.samples_done = None, 0
        self.name = run_path.name  # made unique among live jobs when the controller starts
        # accepted tau per shard, from drained events; 8 bytes a push, for long runs
        self.taus = [array.array("q") for _ in range(self.c.shards)]
        self.fetch_spreads: list[int] = []
        self.rejected = 0
        self.evals: list[dict] = []

    def run(self) -> dict:
        """Blocks until the run ends (completed, failed or interrupted); returns the summary."""
        t0, status, error, results = time.time(), "completed", None, []
        try:
            self._start_actors()
            results = self._supervise()
            if self.stop_reason:
                status = "stopped"
        except KeyboardInterrupt:
            status = "interrupted"
        except (ray.exceptions.RayError, TimeoutError) as exc:
            status, error = "failed", _short(exc)
        try:
            final = self._finish()
        except (ray.exceptions.RayError, TimeoutError) as exc:
            final = {}
            print(f"downpour: no final evaluation: {_short(exc)}", file=self.out)
            if status == "completed":
                status, error = "failed", f"final evaluation: {_short(exc)}"
        summary = self._summary(status, error, results, final, time.time() - t0)
        rundir.write_summary(self.path, summary)
        self.log.close()
        if self.scalars:
            self.scalars.close()
        for actor in self.shards + self.replicas + [a for a in (self.evaluator, self.controller) if a]:
            ray.kill(actor)
        return summary

    def _start_actors(self) -> None:
        c, place = self.c, self.place
        header = events.header_record(
            time.time(), c.replicas, c.shards, [self.p.plan.shard_numel(s) for s in range(c.shards)],
            model=c.model, batch_size=c.batch_size, n_fetch=c.n_fetch, n_push=c.n_push)
        self.log.append([header])
        self.live = LiveStats(header)
        # Named, so `downpour top --address` and `downpour stop` find the job; no CPU of its own.
        self.name = _free_name(self.path.name)
        self.controller = ray.remote(JobController).options(
            name=self.name, namespace=NAMESPACE, num_cpus=0,
            scheduling_strategy=cluster.on_this_node()).remote(self.name, str(self.path.resolve()))
        shard_cls = ray.remote(ParameterShard).options(**place.shard_options())
        self.shards = [shard_cls.remote(s, piece, self.p.optimizer, c.lr, c.lr_rule, c.lr_schedule,
                                        self._planned_updates(), self.name if c.metrics else None,
                                        c.event_log)
                       for s, piece in enumerate(self.p.plan.split(self.p.initial))]
        data = self.p.dataset
        train = ray.put(data.train_images), ray.put(data.train_labels)
        replica_cls = ray.remote(ModelReplica).options(**place.replica_options(), max_concurrency=2)
        self.replicas = [replica_cls.remote(r, c, self.p.plan, self.shards, *train, place.threads)
                         for r in range(c.replicas)]
        self.evaluator = ray.remote(Evaluator).options(
            num_cpus=0, scheduling_strategy=cluster.on_this_node()).remote(
            c.model, c.seed, self.p.plan, self.shards, data.test_images, data.test_labels, c.timeout_s)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Every actor must be placed and built within timeout_s; a request the cluster cannot
        meet would otherwise wait forever."""
        actors = self.shards + self.replicas + [self.evaluator, self.controller]
        ready, _ = ray.wait([a.__ray_ready__.remote() for a in actors], num_returns=len(actors),
                            timeout=self.c.timeout_s)
        ray.get(ready)  # an actor whose constructor raised fails here, with its error
        if len(ready) < len(actors):
            raise TimeoutError(
                f"{len(actors) - len(ready)} of {len(actors)} actors did not start within "
                f"{self.c.timeout_s:g} s; each replica asks for {self.place.replica_options()}, "
                f"each shard {self.place.shard_options()}: compare with `ray status`")

    def _supervise(self) -> list[dict]:
        """Waits for every replica's run, draining events, evaluating and redrawing progress meanwhile."""
        c, runs = self.c, [r.run.remote() for r in self.replicas]
        progress = ProgressLine(self._planned_epochs(), self.out)
        self._eval_ref, self._next_eval, pending = None, c.eval_every, runs
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            ray.get(done)  # raises here as soon as a replica failed
            self._drain()
            steps = sum(s["step"] for s in ray.get([r.progress.remote() for r in self.replicas],
                                                   timeout=c.timeout_s))
            epochs, self.samples_done = steps / self._steps_per_epoch, steps * c.batch_size
            self._maybe_evaluate(epochs, more_to_come=bool(pending))
            snapshot = self.live.snapshot()
            progress.update(epochs, self.samples_done,
                            self.evals[-1]["accuracy"] if self.evals else None, snapshot["tau"]["p50"])
            if self.scalars:
                self.scalars.live(self.samples_done, snapshot)
            self._publish(snapshot)
        progress.close()
        if self._eval_ref is not None:
            self._record_eval(ray.get(self._eval_ref, timeout=c.timeout_s), self._eval_epochs)
        return ray.get(runs)

    @property
    def _steps_per_epoch(self) -> int:
        """Steps of all replicas together in one epoch (each replica over its own partition)."""
        return (len(self.p.dataset.train_labels) // self.c.replicas // self.c.batch_size) * self.c.replicas

    def _planned_updates(self) -> int:
        """Pushes each shard will receive: what a schedule measures its progress against."""
        steps = self.c.steps or self.c.epochs * (self._steps_per_epoch // self.c.replicas)
        return -(-steps // self.c.n_push) * self.c.replicas

    def _planned_epochs(self) -> float:
        if self.c.steps:
            return self.c.steps * self.c.replicas / self._steps_per_epoch
        return float(self.c.epochs)

    def _maybe_evaluate(self, epochs: float, more_to_come: bool) -> None:
        """At most one evaluation in flight; a new one starts each eval_every epochs of progress."""
        if self._eval_ref is not None and ray.wait([self._eval_ref], timeout=0)[0]:
            self._record_eval(ray.get(self._eval_ref), self._eval_epochs)
            self._eval_ref = None
        if self._eval_ref is None and self.c.eval_every and epochs >= self._next_eval and more_to_come:
            self._eval_ref, self._eval_epochs = self.evaluator.evaluate.remote(), epochs
            self._next_eval += self.c.eval_every

    def _publish(self, snapshot: dict) -> None:
        """The live view for `downpour top --address`; a stop asked through the controller reaches
        every replica, which ends after its current step."""
        commands = ray.get(self.controller.publish.remote(snapshot), timeout=self.c.timeout_s)
        if commands["stop"] and self.stop_reason is None:
            self.stop_reason = commands["stop"]
            print(f"\ndownpour: stopping: {self.stop_reason}", file=self.out)
            ray.get([r.stop.remote() for r in self.replicas], timeout=self.c.timeout_s)

    def _record_eval(self, result: dict, epochs: float) -> None:
        """`epochs`: training progress when the evaluation started (its pull came right after)."""
        result = {**result, "epochs": epochs, "t": time.time()}
        self.evals.append(result)
        if self.scalars:
            self.scalars.evaluation(int(epochs * self._steps_per_epoch * self.c.batch_size), result)
        self.log.append([events.eval_record(result["t"], result["accuracy"], result["loss"],
                                            result["versions"], int(epochs * self._steps_per_epoch
                                                                    * self.c.batch_size))])

    def _drain(self) -> None:
        """Moves buffered events from every actor into the log: one small call per actor per poll."""
        batches = ray.get([a.drain_events.remote() for a in self.shards + self.replicas],
                          timeout=self.c.timeout_s)
        for batch in batches:
            self.log.append(batch)
            self.live.ingest(batch)
            for r in batch:
                if r["kind"] == "push":
                    if r["accepted"]:
                        self.taus[r["shard"]].append(r["tau"])
                    else:
                        self.rejected += 1
                elif r["kind"] == "fetch":
                    self.fetch_spreads.append(r["spread"])

    def _finish(self) -> dict:
        """Final evaluation and model.pt; also tried after a failure, while the shards still answer."""
        if self.evaluator is None:
            return {}
        self._drain()
        limit = DRY_RUN_TEST_SAMPLES if self.c.dry_run else None
        final = ray.get(self.evaluator.evaluate.remote(limit), timeout=self.c.timeout_s)
        ray.get(self.evaluator.save.remote(str(self.path.resolve() / rundir.MODEL_NAME)),
                timeout=self.c.timeout_s)
        self.log.append([events.eval_record(time.time(), final["accuracy"], final["loss"],
                                            final["versions"], -1)])
        if self.scalars:
            self.scalars.evaluation(self.samples_done, final)
        return final

    def _summary(self, status, error, results, final, wall_time_s) -> dict:
        c = self.c
        samples = sum(r["samples"] for r in results)
        train_s = (max(r["t_last"] for r in results) - min(r["t_first"] for r in results)
                   if results else None)
        shard_stats = _safe_get([s.stats.remote() for s in self.shards], c.timeout_s)
        all_taus = np.concatenate([np.asarray(t, dtype=np.int64) for t in self.taus])
        spreads = np.asarray(self.fetch_spreads)
        return {
            "run": self.name, "status": status, "error": error, "stop_reason": self.stop_reason,
            "dry_run": c.dry_run,
            "test_accuracy": final.get("accuracy"), "test_loss": final.get("loss"),
            "test_samples": final.get("test_samples"),
            "wall_time_s": round(wall_time_s, 3), "train_time_s": train_s and round(train_s, 3),
            "train_samples": samples, "samples_per_s": train_s and round(samples / train_s, 1),
            "replicas": c.replicas, "shards": c.shards, "model": c.model, "dataset": c.dataset,
            "updates": [s["version"] for s in shard_stats] if shard_stats else None,
            "rejected_pushes": self.rejected,
            "staleness": {**summarize(all_taus),
                          "per_shard": [summarize(t) for t in self.taus]},
            "fetches": {"count": int(spreads.size),
                        "mixed_versions": int((spreads > 0).sum()),
                        "max_spread": int(spreads.max()) if spreads.size else None},
            "evaluations": [{k: e[k] for k in ("epochs", "accuracy", "loss", "versions")}
                            for e in self.evals],
            "replica_stats": results,
        }


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


def _safe_get(refs, timeout):
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayError:
        return None


def _short(exc: BaseException) -> str:
    """The first line of a Ray error: its cause, not the whole remote traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def train(c: TrainConfig, out=None) -> tuple[Path, dict]:
    """The `downpour train` job: prepare (no Ray), then Ray, then the run directory."""
    out = out or sys.stderr
    asked = c  # what the user asked for; a dry run changes the config it runs, not this one
    prepared = prepare(c)
    c = prepared.config
    path = rundir.create(c.run_dir, f"{c.model}-r{c.replicas}s{c.shards}")
    started = False
    try:
        try:
            started = cluster.connect(c.address, c.metrics_port)
            placement = cluster.plan_resources(c, ray.cluster_resources(), cluster.live_nodes())
        except UserError:
            rundir.remove_if_empty(path)  # nothing ran: leave no empty run directory behind
            raise
        prepared.config = dataclasses.replace(c, prefetch=placement.prefetch)
        rundir.write_config(path, to_dict(dataclasses.replace(asked, prefetch=placement.prefetch)))
        print(f"downpour: run directory {path}", file=out)
        if c.metrics:
            print(f"downpour: live metrics (Prometheus): {' '.join(cluster.metrics_endpoints())}",
                  file=out)
        summary = TrainingJob(prepared, placement, path, out).run()
    finally:
        if started:
            ray.shutdown()
    if summary["error"]:
        print(f"downpour: error: {summary['error']}", file=out)
    rate = "" if summary["samples_per_s"] is None else f", {summary['samples_per_s']} samples/s"
    print(f"downpour: {summary['status']}: test accuracy {summary['test_accuracy']}{rate}; "
          f"run directory {path}", file=out)
    return path, summary
