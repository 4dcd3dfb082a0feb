"""TrainingJob: one run's lifecycle: start the actors, supervise them until the budget is spent or
the user stops, wind down, write the summary.

The driver only creates actors, polls counters, evaluates through the evaluator actor and writes
files: gradients and parameters go between replicas and shards directly.
"""

import sys
import time
from pathlib import Path
from typing import Optional

import ray

from ps.common import rundir, schema
from ps.common.faults import FaultInjector, parse_cadence, parse_faults
from ps.driver.actors import Fleet, Reservation
from ps.driver.budget import balance
from ps.driver.checkpoints import Checkpointer
from ps.driver.divergence import DivergenceAlarm
from ps.driver.evaluation import EvalScheduler
from ps.driver.placement import Placement
from ps.driver.prepare import Prepared
from ps.driver.recovery import ActorLost, Recovery, died, gather
from ps.driver.scaling import Rescaler
from ps.driver.summary import RunStats, consistency_summary, rejection_verdict
from ps.obs import events
from ps.obs.live import LiveStats
from ps.obs.progress import ProgressLine
from ps.obs.tensorboard import Scalars

POLL_S = 1.0  # how often the driver drains events and redraws progress
RAY_FAILURES = (ray.exceptions.RayError, TimeoutError)


class TrainingJob:
    def __init__(self, prepared: Prepared, place: Placement, rooms: tuple[Reservation, Reservation],
                 run_path: Path, out=None):
        self.c, self.budget, self.path, self.out = prepared.config, prepared.budget, run_path, out or sys.stderr
        self.prepared, self.resume = prepared, prepared.resume
        self.fleet = Fleet(prepared, place, rooms, run_path.name, str(run_path.resolve()))
        self.log = events.EventLog(run_path / schema.LOG_NAME)
        self.stats = RunStats(self.c.shards, self.resume.prior if self.resume else None)
        c = self.c
        self.checkpoints = Checkpointer(run_path, parse_cadence(c.checkpoint_every), c.keep_checkpoints,
                                        self.log, c.timeout_s, self._job_state)
        self.recovery = Recovery(self.fleet, self.stats, self.log, run_path, c.max_replica_restarts,
                                 c.max_shard_restarts, c.n_push, c.batch_size, self.out)
        self.injector = FaultInjector(parse_faults(c.inject_faults, c.replicas, c.shards), c.seed)
        self.alarm, self.diverged = DivergenceAlarm(c.divergence_factor), None
        self.winding_down = False
        self.t_start = time.time()
        self.scalars = Scalars(run_path) if self.c.tensorboard else None
        self.live: Optional[LiveStats] = None  # from the header on
        self.evals: Optional[EvalScheduler] = None
        self.rescaler = Rescaler(self.fleet, self.c.n_push, self.log, self.c.timeout_s, self._retire_now)
        self.runs: dict = {}  # run ref -> replica id, for the replicas still training
        self.active: list[int] = list(range(self.c.replicas))  # the current generation
        self.retired: set[int] = set()
        self.starting: dict[int, object] = {}  # replacement id -> its ready ref, until it is up
        self.stop_reason: Optional[str] = None

    def run(self) -> dict:
        """Blocks until the run ends (completed, stopped, interrupted or failed); returns the summary.
        Whatever ends it, the replicas are stopped before the final evaluation and model.pt."""
        t0, status, error, unexpected = time.time(), "completed", None, None
        try:
            self._start()
            self._supervise()
            status = "diverged" if self.diverged else "stopped" if self.stop_reason else "completed"
        except KeyboardInterrupt:
            status = "interrupted"
        except ActorLost as exc:
            status, error = "failed", str(exc)
        except RAY_FAILURES as exc:
            status, error = "failed", short(exc)
        except Exception as exc:  # a bug: still stop, save and summarise, then let it show
            status, error, unexpected = "failed", short(exc), exc
        final, error = self._wind_down(status, error)
        status = "failed" if error and status == "completed" else status
        self.fleet.resolve_nodes()
        data = self.prepared.dataset
        head = {"run": self.fleet.name, "status": status, "error": error or self.diverged,
                "stop_reason": self.stop_reason, "nodes": self.fleet.nodes,
                "data_source": None if data.name == "synthetic" else data.source}
        summary = self.stats.summary(self.c, head, final, time.time() - t0, self.c.event_log)
        summary["faults"] = {**self.recovery.summary(), **self.stats.push_losses()}
        summary["checkpoints"] = self._checkpoint_summary()
        summary["consistency"] = self._consistency_summary()
        if self.resume:
            summary["resumed"] = self.resume.describe()
        self._judge_rejections(summary)
        rundir.write_summary(self.path, summary)
        self._close()
        if unexpected is not None:
            raise unexpected
        return summary

    def _judge_rejections(self, summary: dict) -> None:
        """A run that completed with most of its pushes rejected learned little: it fails (above
        --fail-on-rejected) or says so in a warning line."""
        fail, line = rejection_verdict(summary, self.c.fail_on_rejected)
        if fail and summary["status"] == "completed":
            limit = f"more than --fail-on-rejected {self.c.fail_on_rejected:g} of them"
            summary["status"], summary["error"] = "failed", f"{line} ({limit})"
        elif line:
            print(f"downpour: warning: {line}", file=self.out)

    def _start(self) -> None:
        c, plan = self.c, self.fleet.p.plan
        header = schema.header_record(
            time.time(), c.replicas, c.shards, [plan.shard_numel(s) for s in range(c.shards)],
            model=c.model, batch_size=c.batch_size, n_fetch=c.n_fetch, n_push=c.n_push)
        self.live = LiveStats(header)
        if self.resume:  # the log goes on: a resume record where a new run has its header
            record = self.resume.record(time.time(), header)
            self.log.append([record])
            self.live.ingest([record])
            self.fleet.start(self.resume.states, self.resume.parts, self.resume.share)
            self.rescaler.generation = self.resume.generation
        else:
            self.log.append([header])
            self.fleet.start()
        self.evals = EvalScheduler(self.fleet.evaluator, c.eval_every, c.timeout_s, self._record_eval)
        self.checkpoints.save(self.fleet.shards)  # the state a shard dying early goes back to
        self._start_runs(self.active)

    def _start_runs(self, ids: list[int]) -> None:
        """Starts these replicas' runs; their first progress rows say what each is to do."""
        replicas = [self.fleet.replicas[i] for i in ids]
        self.runs.update({r.run.remote(): i for r, i in zip(replicas, ids)})
        for row in ray.get([r.progress.remote() for r in replicas], timeout=self.c.timeout_s):
            self.stats.update_replica(row)

    def _supervise(self) -> None:
        """Waits for every replica's run, polling once a second meanwhile; replicas a scale adds
        join the wait."""
        progress = ProgressLine(self.budget.planned_epochs, self.out)
        while self.runs:
            done, _ = ray.wait(list(self.runs), num_returns=len(self.runs), timeout=POLL_S)
            for ref in done:
                self._collect(ref)  # raises as soon as a replica failed
            self._poll(progress)
        progress.close()
        self.evals.settle()

    def _collect(self, ref) -> None:
        try:
            result = ray.get(ref, timeout=self.c.timeout_s)
        except ray.exceptions.RayActorError as exc:
            if not died(exc):
                raise self._failed(self.runs.pop(ref), exc) from None
            self._replica_died(self.runs.pop(ref), exc)
            return
        except ray.exceptions.RayTaskError as exc:  # its code raised: it would again, so the run ends
            raise self._failed(self.runs.pop(ref), exc) from None
        self.stats.update_replica(result, final=True)
        replica = self.runs.pop(ref)
        self._check_loss(result)
        self._finished(replica)

    def _finished(self, replica: int) -> None:
        """In sync and backup, the shards' rounds stop waiting for a replica of this generation
        that has ended (one a rescale removed is already out of their count)."""
        if self.prepared.consistency.rounds and replica in self.active:
            for shard in self.fleet.shards:
                shard.finished.remote(replica)  # answered when it is applied; nothing to wait for

    def _replica_died(self, dead: int, exc: BaseException) -> None:
        """Counts what the dead replica did and starts its replacement on the rest, unless the job
        no longer wants its steps (stopping, ending, or a rescale dropped it)."""
        self.retired.add(dead)
        detail = self.recovery.record_fault("replica", dead, exc)
        if self._stopping() or dead not in self.active:
            return  # its last progress stands
        self.recovery.charge("replica", dead, detail)
        self._drain()  # the shards' push counts, fresh (and any dead shard restored first)
        new = self.recovery.replace_replica(dead, self.stats.shard_stats)
        if new is None:
            self._finished(dead)
            self.active = [i for i in self.active if i != dead]
            return
        new_id, row = new
        self.active = [new_id if i == dead else i for i in self.active]
        replica = self.fleet.replicas[new_id]
        self.runs[replica.run.remote()] = new_id  # runs once the actor is up
        self.starting[new_id] = replica.__ray_ready__.remote()
        self.stats.update_replica(row)

    def _failed(self, replica: int, exc: BaseException) -> ActorLost:
        """Which replica failed, where, and why (Ray's text alone says none of the first two)."""
        node = self.recovery.node("replica", replica)
        return ActorLost(f"replica {replica}{f' on node {node}' if node else ''} failed: {short(exc)}")

    def _stopping(self) -> bool:
        return bool(self.winding_down or self.stop_reason or self.diverged)

    def _poll(self, progress: ProgressLine) -> None:
        self._drain()
        self._retire_removed()
        steps = self._refresh_progress()
        if self.c.budget == "job":
            self._balance(steps)
        self._inject(steps)
        if self.checkpoints.due([s["version"] for s in self.stats.shard_stats if s]):
            self.checkpoints.save(self.fleet.shards)
        epochs = self.budget.epochs_of(steps)
        self.evals.poll(epochs, more_to_come=bool(self.runs))
        snapshot = self.live.snapshot()
        evals = self.stats.evals
        progress.update(epochs, self.budget.samples_of(steps), evals[-1]["accuracy"] if evals else None,
                        snapshot["tau"]["p50"])
        if self.scalars:
            self.scalars.live(self.budget.samples_of(steps), snapshot)
        self._obey(ray.get(self.fleet.controller.publish.remote(snapshot), timeout=self.c.timeout_s), steps)

    def _training(self) -> list[int]:
        """Replicas whose run has not returned."""
        return sorted(self.runs.values())

    def _refresh_progress(self) -> int:
        """Polls the replicas still training (a dead one is left to its run's error); returns
        `_steps_recorded`."""
        ids = self._up(self._training())
        rows = gather([self.fleet.replicas[i].progress.remote() for i in ids], self.c.timeout_s)
        for row in rows:
            if not isinstance(row, Exception):
                self.stats.update_replica(row)
                self._check_loss(row)
        return self._steps_recorded()

    def _balance(self, steps: int) -> None:
        """--budget job: the steps left, shared among the replicas of this generation still
        training by their speeds, so that they end together. One whose loop is ending refuses
        with the steps it ends at, and the others share the rest."""
        if self._stopping():
            return
        ids = [i for i in self._up(self._training()) if i in self.active]
        rows = [self.stats.replicas[i] for i in ids if i in self.stats.replicas]
        rows = [r for r in rows if not r.get("final")]
        together = self.budget.total_steps - steps + sum(r["step"] for r in rows)  # their ends' sum
        while rows:
            ends = balance(rows, together - sum(r["step"] for r in rows))
            answers = gather([self.fleet.replicas[i].retarget.remote(end) for i, end in ends.items()],
                             self.c.timeout_s)
            ending = {r["replica"]: r["step"] if isinstance(a, Exception) else a[1]  # dead: as polled
                      for r, a in zip(rows, answers) if isinstance(a, Exception) or not a[0]}
            if not ending:
                return
            together -= sum(ending.values())
            rows = [r for r in rows if r["replica"] not in ending]

    def _drain(self) -> None:
        """Moves buffered events from every actor into the log (one small call per actor per poll)
        and refreshes the shards' counters; a dead shard is recreated here."""
        shards, live = list(self.fleet.shards), [self.fleet.replicas[i] for i in self._up(self._live_ids())]
        batches = gather([a.drain_events.remote() for a in shards + live], self.c.timeout_s)
        for batch in batches:
            if not isinstance(batch, Exception):  # a dead replica is found by its run's error
                self.log.append(batch)
                self.live.ingest(batch)
                self.stats.ingest(batch)
        for shard, batch in enumerate(batches[:len(shards)]):
            if isinstance(batch, Exception) and died(batch):
                self._shard_died(shard, batch)
        for shard, answer in enumerate(gather([s.stats.remote() for s in self.fleet.shards],
                                              self.c.timeout_s)):
            if not isinstance(answer, Exception):  # one that died just now: at the next poll
                self.stats.shard_stats[shard] = answer

    def _shard_died(self, shard: int, exc: BaseException) -> None:
        """Recreates the shard (even while the job ends: replicas finishing their step wait for it)."""
        if shard in self.recovery.given_up:
            return
        self.recovery.charge("shard", shard, self.recovery.record_fault("shard", shard, exc))
        self.recovery.restore_shard(shard)  # its stats come with _drain's next gather, just below

    def _inject(self, steps: int) -> None:
        """Kills the actors whose injected fault is due; the job then finds them dead as it would
        any other, at its next wait on them."""
        if self._stopping():
            return
        for fault in self.injector.due(time.time() - self.t_start, steps, self.budget.total_steps):
            self.recovery.inject(fault, self.injector, self._training())

    def _check_loss(self, row: dict) -> None:
        self._diverge(self.alarm.training(row["replica"], row.get("loss")))

    def _diverge(self, why: Optional[str]) -> None:
        """The divergence alarm: no more checkpoints (the last good one stays), every replica stops."""
        if why is None or self.diverged or self.stop_reason:
            return
        last = self.checkpoints.last
        kept = f"checkpoint {last[0]} is the last good one" if last else "no checkpoint was taken"
        self.diverged = (f"diverged: {why}: lower --lr (now {self.c.lr:g}) or set --clip-norm; "
                         f"{kept}")
        self.checkpoints.frozen = True
        print(f"\ndownpour: {self.diverged}", file=self.out)
        self._stop_replicas()

    def _up(self, ids: list[int]) -> list[int]:
        """Those of `ids` whose actor has started (a replacement starts while the job goes on, and
        asking it anything would wait for it)."""
        for i, ref in list(self.starting.items()):
            if ray.wait([ref], timeout=0)[0]:
                del self.starting[i]
        return [i for i in ids if i not in self.starting]

    def _live_ids(self) -> list[int]:
        return [i for i in range(len(self.fleet.replicas)) if i not in self.retired]

    def _retire_removed(self) -> None:
        """A replica scaled away whose run has returned (and whose events were just drained)
        gives its resources back to the cluster."""
        for i in self._live_ids():
            if i not in self.active and i not in self.runs.values():
                ray.kill(self.fleet.replicas[i])
                self.retired.add(i)

    def _retire_now(self, ids: list[int]) -> None:
        """For a rescale: waits for these replicas' runs (they are ending), drains, frees them."""
        self._await_runs([ref for ref, i in self.runs.items() if i in ids], tolerant=False)
        self._drain()
        self.active = [i for i in self.active if i not in ids]
        self._retire_removed()

    def _obey(self, commands: dict, steps: int) -> None:
        """Acts on the commands queued at the controller: a stop reaches every replica, which ends
        after its current step; each scale request gets its answer."""
        if commands["stop"] and self.stop_reason is None and not self.diverged:
            self.stop_reason = commands["stop"]
            print(f"\ndownpour: stopping: {self.stop_reason}", file=self.out)
            self._stop_replicas()
        for request, n in commands["scale"]:
            ok, message = self._rescale(n, steps)
            self.fleet.controller.answer_scale.remote(request, ok, message)
            print(f"\ndownpour: scale to {n} replicas: {message}", file=self.out)

    def _rescale(self, n: int, steps: int) -> tuple[bool, str]:
        if self.stop_reason or self.diverged:
            return False, "the job is stopping"
        training = [i for i in self.active if i in self.runs.values()]
        ok, message, started, members = self.rescaler.apply(n, training, self.budget.total_steps - steps)
        if ok:
            self.active = members
            self._start_runs(started)
            self._refresh_progress()  # each kept replica's new part and share, should it die
        return ok, message

    def _stop_replicas(self) -> None:
        ids = self._training()
        if ids:
            ray.wait([self.fleet.replicas[i].stop.remote() for i in ids], num_returns=len(ids),
                     timeout=self.c.timeout_s)

    def _wind_down(self, status: str, error: Optional[str]) -> tuple[dict, Optional[str]]:
        """Stops the replicas and waits for their runs (so every push has landed), then the final
        evaluation and model.pt. Returns (final evaluation or {}, the run's error)."""
        if self.evals is None:  # it failed before the job had started
            return {}, error
        self.winding_down = True
        try:
            if status != "completed" and status != "stopped":
                self._stop_all()
            self._drain()
            self.checkpoints.save(self.fleet.shards)  # every push has landed: --resume goes on from here
            self.evals.settle()
            final = self.evals.final(self.c.dry_run)
            path = str(self.path.resolve() / rundir.MODEL_NAME)
            ray.get(self.fleet.evaluator.save.remote(path), timeout=self.c.timeout_s)
        except (*RAY_FAILURES, ActorLost, KeyboardInterrupt) as exc:
            print(f"downpour: no final evaluation: {short(exc)}", file=self.out)
            return {}, error or f"final evaluation: {short(exc)}"
        self.log.append([schema.eval_record(time.time(), final["accuracy"], final["loss"],
                                            final["versions"], -1)])
        if self.scalars:
            self.scalars.evaluation(self.budget.samples_of(self._steps_recorded()), final)
        return final, error

    def _stop_all(self) -> None:
        """After an interrupt or a failure: every replica still alive ends its step, its pushes land."""
        self._stop_replicas()
        self._await_runs(list(self.runs), tolerant=True)

    def _await_runs(self, refs: list, tolerant: bool) -> None:
        """Collects these runs as they end, draining between waits: a shard that dies meanwhile is
        restored, so replicas finishing a step on it do not wait for it in vain. `tolerant`: a
        failed run leaves its last progress instead of raising."""
        deadline, pending = time.monotonic() + self.c.timeout_s, list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            for ref in done:
                replica_id = self.runs.get(ref)
                try:
                    self._collect(ref)
                except (*RAY_FAILURES, ActorLost):
                    if not tolerant:
                        raise
                    self.runs.pop(ref, None)  # its progress says what it did, if it still answers
                    self._last_progress(replica_id)
            if pending and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(pending)} replicas did not end within {self.c.timeout_s:g} s")
            if pending:
                self._drain()

    def _last_progress(self, replica_id: int) -> None:
        try:
            self.stats.update_replica(ray.get(self.fleet.replicas[replica_id].progress.remote(),
                                              timeout=self.c.timeout_s))
        except RAY_FAILURES:
            pass  # the actor is gone: its last poll's progress stands

    def _steps_recorded(self) -> int:
        """Steps of every replica so far, removed ones included, as last polled (a resumed run's
        earlier steps too)."""
        return self.stats.steps_done(self.c.batch_size)

    def _job_state(self) -> dict:
        """What a checkpoint set records of the job, for `--resume`."""
        plan = self.fleet.p.plan
        return {"config": self.prepared.asked, "model": self.c.model, "sharding": self.c.sharding,
                "shard_sizes": [plan.shard_numel(s) for s in range(plan.num_shards)],
                "steps_done": self._steps_recorded(), "generation": self.rescaler.generation,
                "train_samples": self.stats.total_samples(), "evaluations": self.stats.eval_rows(),
                "wall_time_s": self.stats.prior_wall_s + time.time() - self.t_start}

    def _consistency_summary(self) -> dict:
        """The mode, what its rounds and pacing did, and the gradient transform's memory."""
        pacer = self.fleet.pacer_stats()
        if pacer is not None:
            pacer.pop("clocks", None)
        return consistency_summary(self.prepared.consistency.text, self.stats.shard_stats, pacer,
                                   self.c)

    def _checkpoint_summary(self) -> dict:
        last = self.checkpoints.last
        return {"count": self.checkpoints.taken, "last_seq": last and last[0],
                "last_versions": last and last[1], "path": "checkpoints"}

    def _record_eval(self, result: dict) -> None:
        """`result["epochs"]`: training progress when the evaluation started (its pull came right after)."""
        self.stats.evals.append(result)
        self._diverge(self.alarm.evaluation(result["loss"]))
        samples = int(result["epochs"] * self.budget.steps_per_epoch * self.c.batch_size)
        if self.scalars:
            self.scalars.evaluation(samples, result)
        self.log.append([schema.eval_record(result["t"], result["accuracy"], result["loss"],
                                            result["versions"], samples)])

    def _close(self) -> None:
        self.log.close()
        if self.scalars:
            self.scalars.close()
        self.fleet.kill()


def short(exc: BaseException) -> str:
    """The first line of a Ray error: its cause, not the whole remote traceback."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"

