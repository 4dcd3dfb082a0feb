"""`downpour submit | status | logs | stop`: training jobs through Ray's Job Submission API.

The job's entrypoint is `downpour train ... --address auto`, run by Ray on the head node with the
downpour installed there (the cluster's image or environment): the cluster runs the version its
nodes have, so driver, shards and replicas agree. `--working-dir DIR` ships a folder of the
user's own plug-ins (models, rules) in the runtime environment. The job id is `downpour-<run name>`
and the run directory `~/downpour-runs/<run name>` on the head node, unless --run-dir says otherwise.
"""

import asyncio
import shlex
import time
from pathlib import Path
from typing import Optional, TextIO
from urllib.parse import urlparse

from ps.errors import UserError

JOB_PREFIX = "downpour-"
RUNS_ON_CLUSTER = "~/downpour-runs"


def connect(address: str):
    """A JobSubmissionClient for the dashboard at `address` (http://HEAD:8265), failing in seconds."""
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserError(f"address {address!r}: jobs go through the head node's dashboard; give "
                        "--address http://HEAD:8265")
    from ps.cluster import check_reachable

    check_reachable(f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"address {address}: the dashboard refused the connection ({_first_line(exc)}); "
                        "for a token-authenticated cluster set RAY_AUTH_MODE=token and put the "
                        "cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None


def run_name(config) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-r{config.replicas}s{config.shards}"


def entrypoint(train_flags: dict, run_dir: str) -> str:
    """The shell command Ray runs on the head: every flag the user gave, spelled out (a --config
    file is read here and its keys sent as flags, so the cluster needs no copy of it)."""
    parts = ["downpour", "train"]
    for name, value in train_flags.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            parts += [flag, str(value)]
    parts += ["--address", "auto"]
    # `~` stays unquoted so the head's shell expands it to the job's home directory
    quoted_dir = run_dir if run_dir.startswith("~/") and shlex.quote(run_dir[2:]) == run_dir[2:] \
        else shlex.quote(run_dir)
    return shlex.join(parts) + " --run-dir " + quoted_dir


def submit(address: str, train_flags: dict, config, working_dir: Optional[str],
           out: TextIO) -> str:
    if working_dir is not None and not Path(working_dir).is_dir():
        raise UserError(f"working_dir {working_dir}: no such folder; give the folder of your plug-ins")
    client = connect(address)
    name = Path(config.run_dir).name if config.run_dir else run_name(config)
    run_dir = config.run_dir or f"{RUNS_ON_CLUSTER}/{name}"
    runtime_env = {"working_dir": str(Path(working_dir).resolve())} if working_dir else None
    try:
        job_id = client.submit_job(entrypoint=entrypoint(train_flags, run_dir),
                                   submission_id=JOB_PREFIX + name, runtime_env=runtime_env,
                                   metadata={"downpour_run_dir": run_dir})
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"the cluster refused the job: {_first_line(exc)}") from None
    print(f"job id: {job_id}", file=out)
    print(f"run directory (on the head node): {run_dir}", file=out)
    print(f"follow it: downpour logs {job_id} --address {address} --follow", file=out)
    return job_id


def status(address: str, job_id: str, out: TextIO) -> str:
    info = _job_info(connect(address), job_id, address)
    print(f"job {job_id}: {info.status}", file=out)
    if info.message:
        print(f"  {info.message}", file=out)
    run_dir = (info.metadata or {}).get("downpour_run_dir")
    if run_dir:
        print(f"  run directory (on the head node): {run_dir}", file=out)
    print(f"  entrypoint: {info.entrypoint}", file=out)
    return str(info.status)


def logs(address: str, job_id: str, follow: bool, out: TextIO) -> None:
    client = connect(address)
    _job_info(client, job_id, address)  # an unknown id is a clear error, not an empty log
    if not follow:
        out.write(client.get_job_logs(job_id))
        return

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):  # ends when the job does
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


def stop(address: str, job_id: str, out: TextIO) -> None:
    """Ray stops the entrypoint (SIGTERM, then SIGKILL after its grace period); `downpour train`
    takes SIGTERM like Ctrl-C: the run ends `interrupted`, with its summary, as far as it gets."""
    client = connect(address)
    info = _job_info(client, job_id, address)
    if info.status.is_terminal():
        print(f"job {job_id} is already {info.status}", file=out)
        return
    client.stop_job(job_id)
    print(f"job {job_id}: stop requested", file=out)


def _job_info(client, job_id: str, address: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise UserError(f"no job {job_id!r} on {address}: `ray job list --address {address}` "
                            "lists the jobs") from None
        raise UserError(f"job {job_id}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

