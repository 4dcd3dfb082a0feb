"""The training job: check every input, create shards and replicas, watch them, write the run directory.

The driver only creates actors, polls counters, evaluates through the evaluator actor and writes
files: gradients and parameters go between replicas and shards directly.
"""

import array
import dataclasses
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import ray
import torch

from ps.common import rundir, schema
from ps.common.config import TrainConfig, replica_settings, to_dict
from ps.common.errors import UserError
from ps.driver import placement as placement_mod
from ps.driver import ray_session as cluster
from ps.driver.controller import NAMESPACE, JobController
from ps.obs import events
from ps.obs.live import LiveStats
from ps.obs.progress import ProgressLine
from ps.obs.staleness import summarize
from ps.obs.tensorboard import Scalars, require_tensorboard
from ps.server.optimizers import OptimizerSpec, parse_optimizer
from ps.server.rules import make_rule
from ps.server.schedules import get_schedule
from ps.server.shard import ParameterShard
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
    def __init__(self, prepared: Prepared, placement: placement_mod.Placement, run_path: Path, out=None):
        self.p, self.c, self.place, self.path = prepared, prepared.config, placement, run_path
        self.out = out or sys.stderr
        self.shards, self.replicas, self.evaluator, self.controller = [], [], None, None
        self.log = events.EventLog(run_path / schema.LOG_NAME)
        self.live: Optional[LiveStats] = None  # from the header on, in _start_actors
        self.scalars = Scalars(run_path) if self.c.tensorboard else None
        self.stop_reason, self.samples_done = None, 0
        self.name = run_path.name  # made unique among live jobs when the controller starts
        self.active, self.results, self.retired, self.generation = [], {}, set(), 0
        self.nodes = {"shards": [], "replicas": []}  # Ray node id of each actor, for the summary
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
        header = schema.header_record(
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
        self._train = ray.put(data.train_images), ray.put(data.train_labels)
        self.replicas = [self._new_replica(r) for r in range(c.replicas)]
        self.active = list(range(c.replicas))  # replica ids (indices into self.replicas) training now
        self.evaluator = ray.remote(Evaluator).options(
            num_cpus=0, scheduling_strategy=cluster.on_this_node()).remote(
            c.model, c.seed, self.p.plan, self.shards, data.test_images, data.test_labels, c.timeout_s)
        self._wait_ready()

    def _new_replica(self, replica_id: int, part=None, total_steps=None):
        cls = ray.remote(ModelReplica).options(**self.place.replica_options(), max_concurrency=2)
        return cls.remote(replica_id, replica_settings(self.c), self.p.plan, self.shards, *self._train,
                          self.place.threads, part, total_steps)

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
        self.nodes = {"driver": ray.get_runtime_context().get_node_id(),
                      "shards": _node_ids(self.shards), "replicas": _node_ids(self.replicas)}

    def _supervise(self) -> list[dict]:
        """Waits for every replica's run, draining events, evaluating, redrawing progress and
        acting on the controller's commands meanwhile; replicas added by a scale join the wait."""
        c = self.c
        runs = {r.run.remote(): i for i, r in enumerate(self.replicas)}
        progress = ProgressLine(self._planned_epochs(), self.out)
        self._eval_ref, self._next_eval, pending = None, c.eval_every, list(runs)
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            for ref in done:
                self.results[runs[ref]] = ray.get(ref)  # raises here as soon as a replica failed
            self._drain()
            self._retire_removed()
            steps = self._steps_done()
            epochs, self.samples_done = steps / self._steps_per_epoch, steps * c.batch_size
            self._maybe_evaluate(epochs, more_to_come=bool(pending))
            snapshot = self.live.snapshot()
            progress.update(epochs, self.samples_done,
                            self.evals[-1]["accuracy"] if self.evals else None, snapshot["tau"]["p50"])
            if self.scalars:
                self.scalars.live(self.samples_done, snapshot)
            for replica_id, actor in self._publish(snapshot, steps):
                ref = actor.run.remote()
                runs[ref] = replica_id
                pending.append(ref)
        progress.close()
        if self._eval_ref is not None:
            self._record_eval(ray.get(self._eval_ref, timeout=c.timeout_s), self._eval_epochs)
        return [self.results[i] for i in sorted(self.results)]

    def _live_ids(self) -> list[int]:
        return [i for i in range(len(self.replicas)) if i not in self.retired]

    def _steps_done(self) -> int:
        """Steps of every replica so far, removed ones included."""
        live = ray.get([self.replicas[i].progress.remote() for i in self._live_ids()],
                       timeout=self.c.timeout_s)
        return sum(p["step"] for p in live) + sum(self.results[i]["steps"] for i in self.retired)

    def _retire_removed(self) -> None:
        """A replica scaled away whose run has returned (and whose events were just drained)
        gives its resources back to the cluster."""
        for i in list(self.results):
            if i not in self.active and i not in self.retired:
                ray.kill(self.replicas[i])
                self.retired.add(i)

    @property
    def _steps_per_epoch(self) -> int:
        """Steps of all replicas together in one epoch (each replica over its own partition)."""
        return (len(self.p.dataset.train_labels) // self.c.replicas // self.c.batch_size) * self.c.replicas

    @property
    def _steps_per_replica(self) -> int:
        """Steps each replica does in the job as started (before any scaling)."""
        return self.c.steps or self.c.epochs * (self._steps_per_epoch // self.c.replicas)

    @property
    def _budget(self) -> int:
        """Steps of all replicas together that the run does, however it is scaled."""
        return self._steps_per_replica * self.c.replicas

    def _planned_updates(self) -> int:
        """Pushes each shard will receive: what a schedule measures its progress against."""
        return -(-self._steps_per_replica // self.c.n_push) * self.c.replicas

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

    def _publish(self, snapshot: dict, steps: int) -> list[tuple[int, object]]:
        """The live view for `downpour top --address`; takes back the commands queued at the
        controller. A stop reaches every replica, which ends after its current step. Returns the
        replicas a scale-up started, whose runs the caller must wait for."""
        commands = ray.get(self.controller.publish.remote(snapshot), timeout=self.c.timeout_s)
        if commands["stop"] and self.stop_reason is None:
            self.stop_reason = commands["stop"]
            print(f"\ndownpour: stopping: {self.stop_reason}", file=self.out)
            ray.get([self.replicas[i].stop.remote() for i in self._live_ids()], timeout=self.c.timeout_s)
        started = []
        for request, replicas in commands["scale"]:
            ok, message, new = self._rescale(replicas, steps)
            self.controller.answer_scale.remote(request, ok, message)
            print(f"\ndownpour: scale to {replicas} replicas: {message}", file=self.out)
            started += new
        return started

    def _rescale(self, n: int, steps: int) -> tuple[bool, str, list]:
        """Keeps the first n active replicas (stopping the rest after their current step) or adds
        new ones; every replica of the new generation trains on part k of n of a fresh partition
        from its next step, and the steps left in the run are shared out anew."""
        if self.stop_reason:
            return False, "the job is stopping", []
        training = [i for i in self.active if i not in self.results]  # not done with their steps
        plan = rescale_plan(training, self._budget - steps, n, len(self.replicas))
        if isinstance(plan, str):
            return False, plan, []
        missing = self._missing_room(len(plan.new))
        if missing:
            return False, missing, []
        self.generation += 1
        current = {i: p["step"] for i, p in zip(plan.keep, ray.get(
            [self.replicas[i].progress.remote() for i in plan.keep], timeout=self.c.timeout_s))}
        for i in plan.drop:
            self.replicas[i].stop.remote()
        for k, i in enumerate(plan.keep):
            self.replicas[i].reassign.remote((n, k, self.generation), current[i] + plan.share)
        new = [(i, self._new_replica(i, (n, len(plan.keep) + k, self.generation), plan.share))
               for k, i in enumerate(plan.new)]
        self.replicas += [actor for _, actor in new]
        self.nodes["replicas"] += [None] * len(new)  # placed later: their node is not waited for
        before, self.active = len(self.active), plan.keep + plan.new
        self.log.append([schema.scale_record(time.time(), n, self.active, self.generation)])
        return True, (f"{before} -> {n} replicas (generation {self.generation}; each does "
                      f"{plan.share} more steps on part k of {n})"), new

    def _missing_room(self, add: int) -> Optional[str]:
        """Why `add` more replicas would not fit in what the cluster has free, or None."""
        free, opts = ray.available_resources(), self.place.replica_options()
        asked = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **(opts["resources"] or {})}
        short = {k: v * add for k, v in asked.items() if v and free.get(k, 0.0) + 1e-9 < v * add}
        if add and short:
            return (f"{add} more replicas need {short} but the cluster has "
                    f"{ {k: round(free.get(k, 0.0), 4) for k in short} } free; free some or add nodes")
        return None

    def _record_eval(self, result: dict, epochs: float) -> None:
        """`epochs`: training progress when the evaluation started (its pull came right after)."""
        result = {**result, "epochs": epochs, "t": time.time()}
        self.evals.append(result)
        if self.scalars:
            self.scalars.evaluation(int(epochs * self._steps_per_epoch * self.c.batch_size), result)
        self.log.append([schema.eval_record(result["t"], result["accuracy"], result["loss"],
                                            result["versions"], int(epochs * self._steps_per_epoch
                                                                    * self.c.batch_size))])

    def _drain(self) -> None:
        """Moves buffered events from every actor into the log: one small call per actor per poll."""
        live = [self.replicas[i] for i in self._live_ids()]
        batches = ray.get([a.drain_events.remote() for a in self.shards + live], timeout=self.c.timeout_s)
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
        self.log.append([schema.eval_record(time.time(), final["accuracy"], final["loss"],
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
            "nodes": self.nodes,
            "rejected_pushes": self.rejected,
            "staleness": {**summarize(all_taus),
                          "per_shard": [summarize(t) for t in self.taus]},
            "fetches": {"count": int(spreads.size),
                        "mixed_versions": int((spreads > 0).sum()),
                        "max_spread": int(spreads.max()) if spreads.size else None},
            "evaluations": [{k: e[k] for k in ("epochs", "accuracy", "loss", "versions", "pulled_at")}
                            for e in self.evals],
            "replica_stats": results,
        }


@dataclass(frozen=True)
class RescalePlan:
    keep: list   # active replica ids that go on
    drop: list   # active replica ids that stop after their current step
    new: list    # ids of replicas to start
    share: int   # steps each replica of the new generation does from now on


def rescale_plan(active: list[int], steps_left: int, n: int, next_id: int) -> "RescalePlan | str":
    """Pure: who stays, who goes, who starts, and each one's share of the steps left; or why not."""
    if n < 1:
        return f"replicas {n}: a job needs 1 or more"
    if n == len(active):
        return f"the job already has {n} replicas"
    if steps_left < n:
        return "the run is about to end: nothing left to share out"
    keep, drop = active[:n], active[n:]
    new = list(range(next_id, next_id + max(0, n - len(active))))
    return RescalePlan(keep, drop, new, -(-steps_left // n))


def _sigterm_as_interrupt():
    """`ray job stop` and other supervisors send SIGTERM: end the run as Ctrl-C does, with a final
    evaluation and a summary. Installed after ray.init, over Ray's own handler; only a program's
    main thread may set handlers (a job run from a thread keeps the default). Returns the handler
    it replaced, for `train` to put back (a notebook outlives its runs), or None."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, _interrupt)
    return None


def _node_ids(actors: list) -> list[str]:
    """The Ray node each actor runs on, asked of the actor itself."""
    return ray.get([a.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
                    for a in actors])


def _interrupt(signum, frame):
    raise KeyboardInterrupt


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
    started, previous_sigterm = False, None
    try:
        try:
            started = cluster.connect(c.address, c.metrics_port)
            previous_sigterm = _sigterm_as_interrupt()
            placement = placement_mod.plan_resources(c, ray.cluster_resources(), placement_mod.live_nodes())
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
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if started:
            ray.shutdown()
    if summary["error"]:
        print(f"downpour: error: {summary['error']}", file=out)
    rate = "" if summary["samples_per_s"] is None else f", {summary['samples_per_s']} samples/s"
    print(f"downpour: {summary['status']}: test accuracy {summary['test_accuracy']}{rate}; "
          f"run directory {path}", file=out)
    return path, summary
