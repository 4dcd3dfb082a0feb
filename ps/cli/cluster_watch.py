"""`downpour top --address`: the live view of a job on a Ray cluster, read from its named controller.

Here, not in ps.obs, because it connects to Ray and knows the driver's controller; ps.obs.top
draws the frames. `find_job` is also how ps.cli.submission finds a job by its run name.
"""

import sys
import time
from typing import Optional, TextIO

from ps.common.errors import UserError
from ps.obs.live import render
from ps.obs.top import Screen


def main(address: str, run: Optional[str], interval_s: float, max_frames: Optional[int],
         out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    try:
        return watch_cluster(address, run, interval_s, max_frames, out)
    except KeyboardInterrupt:  # Ctrl-C is how a live view is left: not an error
        out.write("\n")
        return 0


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
            time.sleep(interval_s)  # the refresh rhythm of a live view
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
