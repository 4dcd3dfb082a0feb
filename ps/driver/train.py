"""`downpour train`: prepare (no Ray), connect, reserve the cluster's room, run the job, report."""

import dataclasses
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import ray

from ps.common import rundir, schema
from ps.common.config import TrainConfig, to_dict
from ps.common.errors import UserError
from ps.driver import actors, placement, transport
from ps.driver import ray_session as cluster
from ps.driver.job import TrainingJob
from ps.driver.prepare import needs_ray_calls, prepare
from ps.driver.resume import prepare_resume


def train(c: TrainConfig, out=None) -> tuple[Path, dict]:
    """Runs one job to its end; returns its run directory and summary. Raises UserError (and the
    data and plan errors) before anything runs, leaving no run directory behind."""
    out = out or sys.stderr
    asked = c  # what the user asked for; a dry run changes the config it runs, not this one
    prepared = prepare(c)
    prepared.asked = to_dict(asked)
    c = prepared.config
    path = rundir.create(c.run_dir, f"{c.model}-r{c.replicas}s{c.shards}")
    return _run(prepared, path, out, log_end=None)


def resume(run_dir: str, overrides: dict, source: str, out=None) -> tuple[Path, dict]:
    """Continues the run in `run_dir` from its newest good checkpoint (ps.driver.resume); bad
    input raises UserError with nothing in the run directory changed."""
    out = out or sys.stderr
    prepared, path, log_end = prepare_resume(
        run_dir, overrides, source, lambda line: print(f"downpour: warning: {line}", file=out))
    print(f"downpour: resuming {path} from checkpoint {prepared.resume.seq} "
          f"(versions {prepared.resume.versions}, {prepared.resume.prior['steps']} steps done)",
          file=out)
    return _run(prepared, path, out, log_end)


def _run(prepared, path: Path, out, log_end: Optional[int]) -> tuple[Path, dict]:
    """Connects, reserves the cluster's room, runs the job, holding the run directory's lock.
    `log_end`: a resumed run's event log is cut there (after its last complete record) and
    appended to."""
    with rundir.driver_lock(path):
        summary = _run_locked(prepared, path, out, log_end)
    _report(summary, path, out)
    return path, summary


def _run_locked(prepared, path: Path, out, log_end: Optional[int]) -> dict:
    c, fresh = prepared.config, log_end is None
    started, previous_sigterm = False, None
    try:
        try:
            started = cluster.connect(c.address, c.metrics_port)
            previous_sigterm = _sigterm_as_interrupt()
            place = placement.plan_resources(c, ray.cluster_resources(), placement.live_nodes())
            plan = prepared.plan
            prepared.shm = transport.choose(
                c.transport, [plan.shard_numel(s) for s in range(plan.num_shards)], c.replicas,
                c.max_inflight, lambda line: print(f"downpour: warning: {line}", file=out),
                needs_ray_calls(c, prepared.consistency))
            rooms = actors.reserve_job(c, place)
        except UserError:
            if fresh:
                rundir.remove_if_empty(path)  # nothing ran: leave no empty run directory behind
            raise
        prepared.config = dataclasses.replace(c, prefetch=place.prefetch)
        if fresh:
            prepared.asked["prefetch"] = place.prefetch
            rundir.write_config(path, prepared.asked)
        else:
            _cut_torn_tail(path / schema.LOG_NAME, log_end, out)
        print(f"downpour: run directory {path}", file=out)
        print(f"downpour: data: {describe_data(prepared.dataset, c.seed)}", file=out)
        if c.metrics:
            print(f"downpour: live metrics (Prometheus): {' '.join(cluster.metrics_endpoints())}",
                  file=out)
        summary = TrainingJob(prepared, place, rooms, path, out).run()
    finally:
        if prepared.shm is not None:  # whatever ended the run, its segments go with it
            prepared.shm.remove()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if started:
            ray.shutdown()
    return summary


def describe_data(dataset, seed: int) -> str:
    """Which data a run trains on, in words: where its files are, or how it was made."""
    if dataset.name == "synthetic":
        return f"synthetic (generated from seed {seed}, no files)"
    return f"{dataset.name} from {dataset.source}"


def _cut_torn_tail(log: Path, end: int, out) -> None:
    size = log.stat().st_size
    if size > end:
        print(f"downpour: warning: {log} ended in a torn record ({size - end} bytes, from a crash): "
              "cut off before appending", file=out)
        with open(log, "r+b") as f:
            f.truncate(end)


def _report(summary: dict, path: Path, out) -> None:
    if summary["error"]:
        print(f"downpour: error: {summary['error']}", file=out)
    rate = "" if summary["samples_per_s"] is None else f", {summary['samples_per_s']} samples/s"
    print(f"downpour: {summary['status']}: test accuracy {summary['test_accuracy']}{rate}; "
          f"run directory {path}", file=out)


def _sigterm_as_interrupt():
    """`ray job stop` and other supervisors send SIGTERM: end the run as Ctrl-C does, with a final
    evaluation and a summary. Installed after ray.init, over Ray's own handler; only a program's
    main thread may set handlers (a job run from a thread keeps the default). Returns the handler
    it replaced, for `train` to put back (a notebook outlives its runs), or None."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, _interrupt)
    return None


def _interrupt(signum, frame):
    raise KeyboardInterrupt
