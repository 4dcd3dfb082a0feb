"""`downpour top RUN_DIR`: a live terminal view of a run from its event log, redrawn about once a second.

No Ray needed: it works for local runs and after the end. The cluster source (`--address`, the
job's named controller) is ps.cli.cluster_watch, which draws the same frame on the same Screen.
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
    summary, resumed_at = path / rundir.SUMMARY_NAME, 0.0
    while True:
        # before reading, so nothing is missed; a summary older than the last resume is the
        # previous session's: the resumed run is still going
        finished = summary.is_file() and summary.stat().st_mtime >= resumed_at
        try:
            records = tail.read_new()
        except events.LogError as exc:
            raise UserError(str(exc)) from None
        resumed_at = max([resumed_at] + [r["t"] for r in records if r.get("kind") == "resume"])
        finished = finished and summary.stat().st_mtime >= resumed_at
        if live is None and tail.header:
            live = LiveStats(tail.header)
        if live:
            live.ingest(records)
            status = rundir.read_summary(path)["status"] if finished else "running"
            screen.draw(render(live.snapshot(), f"downpour top  {path.name}  [{status}]"))
        if finished or (max_frames and screen.frames >= max_frames):
            return 0
        time.sleep(interval_s)  # the refresh rhythm of a live view


def main(run_dir: Optional[str], interval_s: float, max_frames: Optional[int],
         out: Optional[TextIO] = None) -> int:
    """Follows RUN_DIR, or the newest run under runs/; Ctrl-C leaves quietly."""
    out = out or sys.stdout
    try:
        path = rundir.require_run(run_dir) if run_dir else latest_run()
        return watch_run_dir(path, interval_s, max_frames, out)
    except KeyboardInterrupt:  # Ctrl-C is how a live view is left: not an error
        out.write("\n")
        return 0
