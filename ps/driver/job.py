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
from ps.driver.actors import Fleet, Reservation
from ps.driver.evaluation import EvalScheduler
from ps.driver.placement import Placement
from ps.driver.prepare import Prepared
from ps.driver.scaling import Rescaler
from ps.driver.summary import RunStats
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
        self.fleet = Fleet(prepared, place, rooms, run_path.name, str(run_path.resolve()))
        self.log = events.EventLog(run_path / schema.LOG_NAME)
        self.stats = RunStats(self.c.shards)
        self.scalars = Scalars(run_path) if self.c.tensorboard else None
        self.live: Optional[LiveStats] = None  # from the header on
        self.evals: Optional[EvalScheduler] = None
        self.rescaler = Rescaler(self.fleet, self.c.n_push, self.log, self.c.timeout_s, self._retire_now)
        self.runs: dict = {}  # run ref -> replica id, for the replicas still training
        self.active: list[int] = list(range(self.c.replicas))  # the current generation
        self.retired: set[int] = set()
        self.stop_reason: Optional[str] = None

    def run(self) -> dict:
        """Blocks until the run ends (completed, stopped, interrupted or failed); returns the summary.
        Whatever ends it, the replicas are stopped before the final evaluation and model.pt."""
        t0, status, error, unexpected = time.time(), "completed", None, None
        try:
            self._start()
            self._supervise()
            status = "stopped" if self.stop_reason else "completed"
        except KeyboardInterrupt:
            status = "interrupted"
        except RAY_FAILURES as exc:
            status, error = "failed", short(exc)
        except Exception as exc:  # a bug: still stop, save and summarise, then let it show
            status, error, unexpected = "failed", short(exc), exc
        final, error = self._wind_down(status, error)
        status = "failed" if error and status == "completed" else status
        head = {"run": self.fleet.name, "status": status, "error": error,
                "stop_reason": self.stop_reason, "nodes": self.fleet.nodes}
        summary = self.stats.summary(self.c, head, final, time.time() - t0, self.c.event_log)
        rundir.write_summary(self.path, summary)
        self._close()
        if unexpected is not None:
            raise unexpected
        return summary

    def _start(self) -> None:
        c, plan = self.c, self.fleet.p.plan
        header = schema.header_record(
            time.time(), c.replicas, c.shards, [plan.shard_numel(s) for s in range(c.shards)],
            model=c.model, batch_size=c.batch_size, n_fetch=c.n_fetch, n_push=c.n_push)
        self.log.append([header])
        self.live = LiveStats(header)
        self.fleet.start()
        self.evals = EvalScheduler(self.fleet.evaluator, c.eval_every, c.timeout_s, self._record_eval)
        self._start_runs(self.active)

    def _start_runs(self, ids: list[int]) -> None:
        self.runs.update({self.fleet.replicas[i].run.remote(): i for i in ids})

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
        self.stats.update_replica(ray.get(ref, timeout=self.c.timeout_s), final=True)
        del self.runs[ref]

    def _poll(self, progress: ProgressLine) -> None:
        self._drain()
        self._retire_removed()
        steps = self._refresh_progress()
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
        """Polls the replicas still training; returns `_steps_recorded`."""
        ids = self._training()
        for row in ray.get([self.fleet.replicas[i].progress.remote() for i in ids], timeout=self.c.timeout_s):
            self.stats.update_replica(row)
        return self._steps_recorded()

    def _drain(self) -> None:
        """Moves buffered events from every actor into the log (one small call per actor per poll)
        and refreshes the shards' counters."""
        shards, live = self.fleet.shards, [self.fleet.replicas[i] for i in self._live_ids()]
        batches = ray.get([a.drain_events.remote() for a in shards + live], timeout=self.c.timeout_s)
        for batch in batches:
            self.log.append(batch)
            self.live.ingest(batch)
            self.stats.ingest(batch)
        self.stats.update_shards(ray.get([s.stats.remote() for s in shards], timeout=self.c.timeout_s))

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
        for ref in [ref for ref, i in self.runs.items() if i in ids]:
            self._collect(ref)
        self._drain()
        self.active = [i for i in self.active if i not in ids]
        self._retire_removed()

    def _obey(self, commands: dict, steps: int) -> None:
        """Acts on the commands queued at the controller: a stop reaches every replica, which ends
        after its current step; each scale request gets its answer."""
        if commands["stop"] and self.stop_reason is None:
            self.stop_reason = commands["stop"]
            print(f"\ndownpour: stopping: {self.stop_reason}", file=self.out)
            self._stop_replicas()
        for request, n in commands["scale"]:
            ok, message = self._rescale(n, steps)
            self.fleet.controller.answer_scale.remote(request, ok, message)
            print(f"\ndownpour: scale to {n} replicas: {message}", file=self.out)

    def _rescale(self, n: int, steps: int) -> tuple[bool, str]:
        if self.stop_reason:
            return False, "the job is stopping"
        training = [i for i in self.active if i in self.runs.values()]
        ok, message, started, members = self.rescaler.apply(n, training, self.budget.total_steps - steps)
        if ok:
            self.active = members
            self._start_runs(started)
        return ok, message

    def _stop_replicas(self) -> None:
        ids = self._training()
        if ids:
            ray.wait([self.fleet.replicas[i].stop.remote() for i in ids], num_returns=len(ids),
                     timeout=self.c.timeout_s)

    def _wind_down(self, status: str, error: Optional[str]) -> tuple[dict, Optional[str]]:
        """Stops the replicas and waits for their runs (so every push has landed), then the final
        evaluation and model.pt. Returns (final evaluation or {}, the run's error)."""
        if self.fleet.evaluator is None:
            return {}, error
        try:
            if status != "completed" and status != "stopped":
                self._stop_all()
            self._drain()
            self.evals.settle()
            final = self.evals.final(self.c.dry_run)
            path = str(self.path.resolve() / rundir.MODEL_NAME)
            ray.get(self.fleet.evaluator.save.remote(path), timeout=self.c.timeout_s)
        except (*RAY_FAILURES, KeyboardInterrupt) as exc:
            print(f"downpour: no final evaluation: {short(exc)}", file=self.out)
            return {}, error or f"final evaluation: {short(exc)}"
        self.log.append([schema.eval_record(time.time(), final["accuracy"], final["loss"],
                                            final["versions"], -1)])
        if self.scalars:
            self.scalars.evaluation(self.budget.samples_of(self._steps_recorded()), final)
        return final, error

    def _stop_all(self) -> None:
        """After an interrupt or a failure: every replica still alive ends its step, its pushes land."""
        alive = list(self.runs.items())
        self._stop_replicas()
        for ref, i in alive:
            try:
                self._collect(ref)
            except RAY_FAILURES:  # its run failed: its progress says what it did, if it still answers
                self.runs.pop(ref, None)
                self._last_progress(i)

    def _last_progress(self, replica_id: int) -> None:
        try:
            self.stats.update_replica(ray.get(self.fleet.replicas[replica_id].progress.remote(),
                                              timeout=self.c.timeout_s))
        except RAY_FAILURES:
            pass  # the actor is gone: its last poll's progress stands

    def _steps_recorded(self) -> int:
        """Steps of every replica so far, removed ones included, as last polled."""
        return self.stats.samples()[0] // self.c.batch_size

    def _record_eval(self, result: dict) -> None:
        """`result["epochs"]`: training progress when the evaluation started (its pull came right after)."""
        self.stats.evals.append(result)
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

