"""When and how a job checkpoints its shards: every shard's state, taken through Ray and written
by the driver into RUN_DIR/checkpoints (so the shards' nodes need no shared disk).

A set is taken at the start (so a shard that dies early has its initial state to go back to),
every --checkpoint-every seconds or updates, and at the end once every push has landed (so
`--resume` continues exactly where the run stopped). Each shard's state is read between two of
its pushes, so values, optimizer state and version agree; the shards are read one after another,
as a replica's fetch is, so a set's versions may differ by the pushes in between.
"""

import time
from pathlib import Path
from typing import Callable, Optional

import ray

from ps.common import schema
from ps.common.faults import Cadence
from ps.obs.events import EventLog
from ps.server import checkpoint

DIR_NAME = "checkpoints"


class Checkpointer:
    def __init__(self, run_path: Path, cadence: Cadence, keep: int, log: EventLog, timeout_s: float,
                 job_state: Callable[[], dict]):
        """`job_state()`: what the driver adds to each set's job.json (steps done, config...)."""
        self.root, self.cadence, self.keep = run_path / DIR_NAME, cadence, keep
        self.log, self.timeout_s, self.job_state = log, timeout_s, job_state
        sets = checkpoint.list_sets(self.root)
        self.seq = sets[-1][0] + 1 if sets else 0  # a resumed run numbers on
        self.last: Optional[tuple[int, list[int]]] = None  # (seq, versions) of the newest set
        self._t_last, self._version_last = time.monotonic(), 0
        self.frozen = False  # after a divergence alarm: keep the last good set
        self.taken = 0  # sets written by this session

    def due(self, versions: list[int]) -> bool:
        if self.frozen or not self.cadence.value:
            return False
        if self.cadence.unit == "s":
            return time.monotonic() - self._t_last >= self.cadence.value
        return max(versions) - self._version_last >= self.cadence.value

    def save(self, shards: list) -> Optional[tuple[int, list[int]]]:
        """One set from every shard; None (and nothing written) if a shard is dead: the job
        restores it first and checkpoints at the next poll."""
        if self.frozen:
            return None
        try:
            states = ray.get([s.export_state.remote() for s in shards], timeout=self.timeout_s)
        except ray.exceptions.RayActorError:
            return None
        versions = [st.version for st in states]
        path = checkpoint.save_set(self.root, self.seq, states,
                                   {**self.job_state(), "seq": self.seq, "t": time.time(),
                                    "versions": versions}, self.keep)
        self.log.append([schema.checkpoint_record(time.time(), self.seq, versions,
                                                  str(Path(DIR_NAME) / path.name))])
        self.last = self.seq, versions
        self.seq, self.taken = self.seq + 1, self.taken + 1
        self._t_last, self._version_last = time.monotonic(), max(versions)
        return self.last
