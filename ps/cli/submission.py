"""`downpour submit | status | logs | scale | stop`: training jobs through Ray's Job Submission API.

The job's entrypoint is `downpour train ... --address auto`, run by Ray on the head node with the
downpour installed there (the cluster's image or environment): the cluster runs the version its
nodes have, so driver, shards and replicas agree. `--working-dir DIR` ships a folder of the
user's own plug-ins (models, rules) in the runtime environment. The job id is `downpour-<run name>`
and the run directory `~/downpour-runs/<run name>` on the head node, unless --run-dir says otherwise.
"""

import asyncio
import contextlib
import shlex
import time
from pathlib import Path
from typing import Optional, TextIO
from urllib.parse import urlparse

from ps.common.errors import UserError

JOB_PREFIX = "downpour-"
RUNS_ON_CLUSTER = "~/downpour-runs"
HEAD_COMMAND_TIMEOUT_S = 120.0  # a scale or stop request: the driver answers within about a second
STOP_TIMEOUT_S = 300.0  # a stopped job still evaluates and saves model.pt


def connect(address: str):
    """A JobSubmissionClient for the dashboard at `address` (http://HEAD:8265), failing in seconds."""
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserError(f"address {address!r}: jobs go through the head node's dashboard; give "
                        "--address http://HEAD:8265")
    from ps.driver.ray_session import check_reachable

    check_reachable(f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}")
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise UserError(f"address {address}: the cluster refused the token; use the head's token "
                        "(its ~/.ray/auth_token) in ~/.ray/auth_token or RAY_AUTH_TOKEN, with "
                        "RAY_AUTH_MODE=token") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"address {address}: the dashboard refused the connection ({_first_line(exc)}); "
                        "for a token-authenticated cluster set RAY_AUTH_MODE=token and put the "
                        "cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None


def run_name(config) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-r{config.replicas}s{config.shards}"


def entrypoint(train_flags: dict, run_dir: str, resume: bool = False) -> str:
    """The shell command Ray runs on the head: every flag the user gave, spelled out (a --config
    file is read here and its keys sent as flags, so the cluster needs no copy of it). With
    `resume`, it continues the run in `run_dir` (a folder on the head node) instead."""
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
    return shlex.join(parts) + (" --resume " if resume else " --run-dir ") + quoted_dir


def submit(address: str, train_flags: dict, config, working_dir: Optional[str],
           out: TextIO, resume: Optional[str] = None) -> str:
    """`resume`: a run directory on the head node to continue (`downpour train --resume` there)."""
    if working_dir is not None and not Path(working_dir).is_dir():
        raise UserError(f"working_dir {working_dir}: no such folder; give the folder of your plug-ins")
    client = connect(address)
    name = Path(resume or config.run_dir).name if (resume or config.run_dir) else run_name(config)
    run_dir = resume or config.run_dir or f"{RUNS_ON_CLUSTER}/{name}"
    runtime_env = {"working_dir": str(Path(working_dir).resolve())} if working_dir else None
    if resume:  # one submission id per session of the run
        name = f"{name}-resumed-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        job_id = client.submit_job(entrypoint=entrypoint(train_flags, run_dir, bool(resume)),
                                   submission_id=JOB_PREFIX + name, runtime_env=runtime_env,
                                   metadata={"downpour_run_dir": run_dir})
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"the cluster refused the job: {_first_line(exc)}") from None
    print(f"job id: {job_id}", file=out)
    print(f"run directory (on the head node): {run_dir}", file=out)
    print(f"follow it: downpour logs {job_id} --address {address} --follow", file=out)
    return job_id


def status(address: str, job_id: str, out: TextIO) -> None:
    info = _job_info(connect(address), job_id, address)
    print(f"job {job_id}: {info.status}", file=out)
    if info.message:
        print(f"  {info.message}", file=out)
    run_dir = (info.metadata or {}).get("downpour_run_dir")
    if run_dir:
        print(f"  run directory (on the head node): {run_dir}", file=out)
    print(f"  entrypoint: {info.entrypoint}", file=out)


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


def stop(address: str, target: str, out: TextIO) -> None:
    """A graceful stop: the job's controller tells every replica to end after its current step;
    the job evaluates, saves model.pt and ends `stopped`. Through the dashboard this runs on the
    head as a small job of its own; a job that has not ended STOP_TIMEOUT_S later is stopped by
    Ray (SIGTERM, then SIGKILL)."""
    if not address.startswith(("http://", "https://")):
        _stop_through_ray(address, target, out)
        return
    client = connect(address)
    info = _job_info(client, target, address)
    if info.status.is_terminal():
        print(f"job {target} is already {info.status}", file=out)
        return
    _run_on_head(client, ["downpour", "stop", target, "--address", "auto"], out)
    if not _ended_within(client, target, STOP_TIMEOUT_S):  # it evaluates and saves before it ends
        client.stop_job(target)
        print(f"job {target} did not end within {STOP_TIMEOUT_S:g} s: Ray stops it", file=out)
        return
    print(f"job {target}: {client.get_job_status(target)}", file=out)


def _ended_within(client, job_id: str, timeout_s: float) -> bool:
    """Waits for a cluster job to end; False if it is still running after timeout_s."""
    deadline = time.time() + timeout_s
    while not client.get_job_status(job_id).is_terminal():
        if time.time() > deadline:
            return False
        time.sleep(0.5)  # Ray's job API has no wait: poll its status
    return True


def _stop_through_ray(address: str, target: str, out: TextIO) -> None:
    import ray

    with _controller(address, target) as (name, controller):
        ray.get(controller.request_stop.remote("stopped by `downpour stop`"), timeout=30)
        print(f"job {name}: stop requested; it ends after its replicas' current step, "
              "a final evaluation and model.pt", file=out)


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
    _run_on_head(connect(address),
                 ["downpour", "scale", target, "--replicas", str(replicas), "--address", "auto"], out)


def _run_on_head(client, argv: list[str], out: TextIO) -> None:
    """Runs a downpour command as a small job on the head node, where the cluster's named actors
    are reachable, and prints its output; its failure becomes ours."""
    job_id = client.submit_job(entrypoint=shlex.join(argv))
    if not _ended_within(client, job_id, HEAD_COMMAND_TIMEOUT_S):  # it waits on the controller
        client.stop_job(job_id)
        raise UserError(f"`{shlex.join(argv[:2])}` got no answer on the head within "
                        f"{HEAD_COMMAND_TIMEOUT_S:g} s")
    text = client.get_job_logs(job_id).strip()
    if str(client.get_job_status(job_id)) != "SUCCEEDED":
        raise UserError(text.splitlines()[-1].removeprefix("downpour: error: ") if text
                        else f"the job {job_id} running `{shlex.join(argv[:2])}` failed")
    lines = [line for line in text.splitlines() if line.startswith("job ")]
    print("\n".join(lines) or text, file=out)


def _scale_through_ray(address: str, target: str, replicas: int, out: TextIO) -> None:
    import ray

    with _controller(address, target) as (name, controller):
        request = ray.get(controller.request_scale.remote(replicas), timeout=30)
        deadline, answer = time.time() + HEAD_COMMAND_TIMEOUT_S, None
        while answer is None:
            if time.time() > deadline:
                raise UserError(f"job {name} did not answer the scale request within "
                                f"{HEAD_COMMAND_TIMEOUT_S:g} s")
            time.sleep(0.2)  # the driver looks at its controller about once a second
            answer = ray.get(controller.scale_answer.remote(request), timeout=30)
    if not answer["ok"]:
        raise UserError(f"job {name}: cannot scale to {replicas} replicas: {answer['message']}")
    print(f"job {name}: {answer['message']}", file=out)


@contextlib.contextmanager
def _controller(address: str, target: str):
    """(name, handle) of the job's controller on the cluster at a Ray address."""
    import ray

    from ps.cli.cluster_watch import find_job
    from ps.driver import ray_session as cluster
    from ps.driver.controller import NAMESPACE

    started = cluster.connect(address)
    try:
        name = find_job(job_name(target))
        yield name, ray.get_actor(name, namespace=NAMESPACE)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        raise UserError(f"job {target} ended before it answered") from None
    finally:
        if started:
            ray.shutdown()


def job_name(target: str) -> str:
    """A job id (downpour-NAME), a run directory path or a run name -> the run name."""
    name = Path(target.rstrip("/")).name
    return name.removeprefix(JOB_PREFIX)
