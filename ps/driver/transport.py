"""Which data plane a job uses: shared memory (ps/common/shm.py) where it can, Ray calls otherwise.

Checked on the driver before any actor starts, so the common failures (no /dev/shm, not enough
room in it, an architecture the lock-free reads are not safe on) cost one warning line with
`--transport auto` and one error with `--transport shm`. A replica then uses shared memory when
it finds every shard's board on its own machine and Ray calls when it does not (another node),
which `auto` accepts and `shm` refuses.
"""

import os
from typing import Optional

from ps.common import shm
from ps.common.errors import UserError

HEADROOM = 2  # room for replacements and scaled-up replicas beyond the starting ones


def choose(transport: str, shard_sizes: list[int], replicas: int, max_inflight: int,
           warn, ray_only: Optional[str] = None) -> Optional[shm.ShmNames]:
    """The run's segment names when shared memory is to be used, else None. `warn(line)` gets
    the one line that says why `auto` fell back; `shm` raises UserError instead. `ray_only`:
    why the job's mode needs Ray calls (auto uses them without a warning: nothing is wrong)."""
    if transport == "ray":
        return None
    if ray_only:
        if transport == "shm":
            raise UserError(f"--transport shm: {ray_only} needs Ray calls: use --transport auto or ray")
        return None
    why = _unusable(shm.shm_dir(), shm.segment_bytes(shard_sizes, HEADROOM * replicas, max_inflight + 1))
    if why is None:
        shm.sweep_stale()
        return shm.ShmNames.new()
    if transport == "shm":
        raise UserError(f"--transport shm: shared memory cannot be used: {why}; use --transport "
                        f"auto or ray")
    warn(f"shared memory cannot be used ({why}): using Ray calls (--transport ray)")
    return None


def _unusable(directory: str, needed: int) -> Optional[str]:
    """Why segments of `needed` bytes in all cannot go in `directory`, or None."""
    why = shm.supported()
    if why:
        return why
    if not os.path.isdir(directory):
        return f"{directory} is not a folder (set {shm.ENV_DIR} to one on a tmpfs)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable"
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        return (f"{directory} has {free / 2**20:.0f} MiB free, this job needs about "
                f"{needed / 2**20:.0f} MiB")
    longest = shm.ShmNames(directory, f"{shm.PREFIX}{os.getpid()}-{shm.host_tag()}-00000000")
    if len(os.fsencode(longest.doorbell(9999, 9999))) > shm.MAX_SOCKET_PATH:
        return f"socket paths in {directory} would be longer than {shm.MAX_SOCKET_PATH} bytes"
    return None
