"""`downpour top RUN_DIR`: a live terminal view of a run from its event log, redrawn about once a second.

No Ray needed: it works for local runs and after the end. The cluster source (`--address`, the
job's named controller) is ps.cli.cluster_watch, which draws the same frame on the same Screen.
"""

import sys
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

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


def watch_run_dir(path: Path, interval_s: float, max_frames: Optional[int], out: TextIO,
                  warn: Optional[Callable[[str], None]] = None) -> int:
    """Follows RUN_DIR/events.msgpack until the run writes summary.json (then one last frame).
    A corrupt record is told to `warn` when met, a torn tail once the run has ended; the view goes
    on with what was read. A finished run whose log has no header is a UserError, as in `staleness`."""
    tail, live, screen = events.LogTail(path / schema.LOG_NAME), None, Screen(out)
    warn = warn or _print_warning
    summary, resumed_at, told = path / rundir.SUMMARY_NAME, 0.0, False
    while True:
        # before reading, so nothing is missed; a summary older than the last resume is the
        # previous session's: the resumed run is still going
        finished = summary.is_file() and summary.stat().st_mtime >= resumed_at
        try:
            records = tail.read_new()
            resumed_at = max([resumed_at] + [r["t"] for r in records if r.get("kind") == "resume"])
            finished = finished and summary.stat().st_mtime >= resumed_at
            damage = tail.ended() if finished else tail.damage  # ended(): LogError without a header
        except events.LogError as exc:
            raise UserError(str(exc)) from None
        if damage and not told:
            warn(str(damage))
            told = True
        if live is None and tail.header:
            live = LiveStats(tail.header)
        if live:
            live.ingest(records)
            status = _status(path, warn) if finished else "running"
            screen.draw(render(live.snapshot(), f"downpour top  {path.name}  [{status}]"))
        else:  # a run still starting: its log has no header yet
            screen.draw(f"downpour top  {path.name}  [starting: no records yet]")
        if finished or (max_frames and screen.frames >= max_frames):
            return 0
        time.sleep(interval_s)  # the refresh rhythm of a live view


def _status(path: Path, warn: Callable[[str], None]) -> str:
    """The finished run's status from summary.json; a damaged summary is told to `warn`, and the
    frame, drawn from the log, still shows."""
    try:
        summary = rundir.read_summary(path, hint="the view shows what the event log holds")
        return str(summary.get("status", "unknown"))
    except UserError as exc:
        warn(str(exc))
        return "summary unreadable"


def _print_warning(line: str) -> None:
    print(f"downpour: warning: {line}", file=sys.stderr)


def main(run_dir: Optional[str], interval_s: float, max_frames: Optional[int],
         out: Optional[TextIO] = None, warn: Optional[Callable[[str], None]] = None) -> int:
    """Follows RUN_DIR, or the newest run under runs/; Ctrl-C leaves quietly. Notes about damaged
    files go to `warn` (default: a `downpour: warning:` line on stderr)."""
    out = out or sys.stdout
    try:
        path = rundir.require_run(run_dir) if run_dir else latest_run()
        return watch_run_dir(path, interval_s, max_frames, out, warn)
    except KeyboardInterrupt:  # Ctrl-C is how a live view is left: not an error
        out.write("\n")
        return 0
