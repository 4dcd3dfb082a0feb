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



SCALE_TIMEOUT_S = 120.0


def scale(address: str, target: str, replicas: int, out: TextIO) -> None:
    """Changes the number of replicas of a running job. Through the dashboard (http://...) it runs
    this same command on the head node as a small job of its own, where the job's controller is
    reachable; through a Ray address it asks the controller directly and waits for the answer."""
    if replicas < 1:
        raise UserError(f"--replicas {replicas}: a job needs 1 or more replicas")
    if address.startswith(("http://", "https://")):
        _scale_through_dashboard(address, target, replicas, out)
    else:
        _scale_through_ray(address, target, replicas, out)


def _scale_through_dashboard(address: str, target: str, replicas: int, out: TextIO) -> None:
    client = connect(address)
    job_id = client.submit_job(entrypoint=shlex.join(
        ["downpour", "scale", target, "--replicas", str(replicas), "--address", "auto"]))
    deadline = time.time() + SCALE_TIMEOUT_S
    while not client.get_job_status(job_id).is_terminal():
        if time.time() > deadline:
            client.stop_job(job_id)
            raise UserError(f"the scale request got no answer within {SCALE_TIMEOUT_S:g} s")
        time.sleep(0.5)  # waiting on the cluster's job, which waits on the job's controller
    text = client.get_job_logs(job_id).strip()
    if str(client.get_job_status(job_id)) != "SUCCEEDED":
        raise UserError(text.splitlines()[-1].removeprefix("downpour: error: ") if text
                        else f"the scale job {job_id} failed")
    print(text, file=out)


def _scale_through_ray(address: str, target: str, replicas: int, out: TextIO) -> None:
    import ray

    from ps import cluster
    from ps.controller import NAMESPACE
    from ps.top import find_job

    started = cluster.connect(address)
    try:
        name = find_job(job_name(target))
        controller = ray.get_actor(name, namespace=NAMESPACE)
        request = ray.get(controller.request_scale.remote(replicas), timeout=30)
        deadline, answer = time.time() + SCALE_TIMEOUT_S, None
        while answer is None:
            if time.time() > deadline:
                raise UserError(f"job {name} did not answer the scale request within "
                                f"{SCALE_TIMEOUT_S:g} s")
            time.sleep(0.2)  # the driver looks at its controller about once a second
            answer = ray.get(controller.scale_answer.remote(request), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        raise UserError(f"job {target} ended before it answered") from None
    finally:
        if started:
            ray.shutdown()
    if not answer["ok"]:
        raise UserError(f"job {name}: cannot scale to {replicas} replicas: {answer['message']}")
    print(f"job {name}: {answer['message']}", file=out)


def job_name(target: str) -> str:
    """A job id (downpour-NAME), a run directory path or a run name -> the run name."""
    name = Path(target.rstrip("/")).name
    return name.removeprefix(JOB_PREFIX)
