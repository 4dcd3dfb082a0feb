"""`downpour train`: prepare (no Ray), connect, reserve the cluster's room, run the job, report."""

import dataclasses
import signal
import sys
import threading
from pathlib import Path

import ray

from ps.common import rundir
from ps.common.config import TrainConfig, to_dict
from ps.common.errors import UserError
from ps.driver import actors, placement
from ps.driver import ray_session as cluster
from ps.driver.job import TrainingJob
from ps.driver.prepare import prepare


def train(c: TrainConfig, out=None) -> tuple[Path, dict]:
    """Runs one job to its end; returns its run directory and summary. Raises UserError (and the
    data and plan errors) before anything runs, leaving no run directory behind."""
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
            place = placement.plan_resources(c, ray.cluster_resources(), placement.live_nodes())
            rooms = actors.reserve_job(c, place)
        except UserError:
            rundir.remove_if_empty(path)  # nothing ran: leave no empty run directory behind
            raise
        prepared.config = dataclasses.replace(c, prefetch=place.prefetch)
        rundir.write_config(path, to_dict(dataclasses.replace(asked, prefetch=place.prefetch)))
        print(f"downpour: run directory {path}", file=out)
        if c.metrics:
            print(f"downpour: live metrics (Prometheus): {' '.join(cluster.metrics_endpoints())}",
                  file=out)
        summary = TrainingJob(prepared, place, rooms, path, out).run()
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if started:
            ray.shutdown()
    _report(summary, path, out)
    return path, summary


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
