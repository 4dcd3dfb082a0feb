"""`downpour top`: a live terminal view of a running job, redrawn about once a second.

Two sources, the same frame: a run directory (the event log the job appends to once a second;
no Ray needed, works for local runs and after the end), or a cluster (`--address`), where the
job's named controller holds the snapshot its driver publishes.
"""

import sys
import time
from pathlib import Path
from typing import Optional, TextIO

from ps.common import rundir, schema
from ps.common.errors import UserError
from ps.obs import events
from ps.obs.live import LiveStats, render

CLEAR = "\x1b[H\x1b[J"  # cursor home, clear to the end of the screen


class Screen:
    """Redraws in place on a terminal; elsewhere (a pipe, a test) prints frames one after another."""

    def __init__(self, out: TextIO):
        self.out, self.tty = out, out.isatty()
        self.frames = 0

    def draw(self, text: str) -> None:
        self.out.write((CLEAR + text + "\n") if self.tty else (text + "\n\n"))
        self.out.flush()
        self.frames += 1


def latest_run(root: Path = Path("runs")) -> Path:
    """The most recently written run under runs/, for a bare `downpour top`."""
    logs = sorted(root.glob(f"*/{schema.LOG_NAME}"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise UserError(f"no run directory given and none with an event log under {root}/: "
                        "give RUN_DIR, or --address for a job on a cluster")
    return logs[-1].parent


def watch_run_dir(path: Path, interval_s: float, max_frames: Optional[int], out: TextIO) -> int:
    """Follows RUN_DIR/events.msgpack until the run writes summary.json (then one last frame)."""
    tail, live, screen = events.LogTail(path / schema.LOG_NAME), None, Screen(out)
    while True:
        finished = (path / rundir.SUMMARY_NAME).is_file()  # before reading: then nothing is missed
        try:
            records = tail.read_new()
        except events.LogError as exc:
            raise UserError(str(exc)) from None
        if live is None and tail.header:
            live = LiveStats(tail.header)
        if live:
            live.ingest(records)
            status = rundir.read_summary(path)["status"] if finished else "running"
            screen.draw(render(live.snapshot(), f"downpour top  {path.name}  [{status}]"))
        if finished or (max_frames and screen.frames >= max_frames):
            return 0
        time.sleep(interval_s)  # the refresh rhythm of a live view


def watch_cluster(address: str, run: Optional[str], interval_s: float, max_frames: Optional[int],
                  out: TextIO) -> int:
    """Reads the snapshot a job's driver publishes to its named controller, until the job ends."""
    import ray

    from ps.driver import ray_session as cluster
    from ps.driver.controller import NAMESPACE

    started = cluster.connect(address)
    try:
        controller, screen = ray.get_actor(find_job(run), namespace=NAMESPACE), Screen(out)
        while True:
            try:
                state = ray.get(controller.snapshot.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                print("downpour top: the job has ended", file=out)
                return 0
            if state["live"] is not None:
                screen.draw(render(state["live"], f"downpour top  {state['run']}  [running]"))
            if max_frames and screen.frames >= max_frames:
                return 0
            time.sleep(interval_s)
    finally:
        if started:
            ray.shutdown()


def find_job(run: Optional[str]) -> str:
    """The name of the one running job, or of `run`; a clear error when that is not unique."""
    import ray

    from ps.driver.controller import NAMESPACE

    running = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["namespace"] == NAMESPACE)
    if run is not None:
        if run not in running:
            raise UserError(f"--run {run!r}: no such job is running; running: "
                            f"{', '.join(running) or 'none'}")
        return run
    if not running:
        raise UserError("no downpour job is running on this cluster")
    if len(running) > 1:
        raise UserError(f"{len(running)} jobs are running ({', '.join(running)}): pick one with --run")
    return running[0]


def main(run_dir: Optional[str], address: Optional[str], run: Optional[str], interval_s: float,
         max_frames: Optional[int], out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    try:
        if address:
            return watch_cluster(address, run, interval_s, max_frames, out)
        path = rundir.require_run(run_dir) if run_dir else latest_run()
        return watch_run_dir(path, interval_s, max_frames, out)
    except KeyboardInterrupt:  # Ctrl-C is how a live view is left: not an error
        out.write("\n")
        return 0
