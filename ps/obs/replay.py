"""Step times of a recorded run, for `--delay replay:RUN_DIR`: each replica's time between its
consecutive pushes to shard 0 (one push per n_push steps), read from the event log."""

from collections import defaultdict

import numpy as np

from ps.common import rundir, schema
from ps.common.delays import step_times_from
from ps.common.errors import UserError
from ps.obs.events import LogError, read_events


def step_times(run_dir: str, field_name: str = "delay") -> list[np.ndarray]:
    path = rundir.require_run(run_dir)
    pushes = defaultdict(list)
    try:
        for record in read_events(path / schema.LOG_NAME, on_damage=lambda damage: None):
            if record.get("kind") == "push" and record.get("shard") == 0:
                pushes[record["replica"]].append(record["t"])
    except LogError as exc:
        raise UserError(f"{field_name} replay:{run_dir}: {exc}") from None
    times = step_times_from([pushes[r] for r in sorted(pushes)])
    if not times:
        raise UserError(f"{field_name} replay:{run_dir}: its event log holds no replica with two "
                        "pushes to replay (was it run with --no-event-log?)")
    return times
