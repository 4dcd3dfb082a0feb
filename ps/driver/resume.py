"""`downpour train --resume RUN_DIR`: continue a stopped, interrupted or failed run from its
newest good checkpoint, in the same run directory.

What may change on resume is what does not change the model being trained or the meaning of
its steps: replicas, shards (the flat parameters and the optimizer state are re-split with the
new plan), epochs or steps, resources, timeouts, checkpointing and fault settings. The step budget
is the run's as (re)configured; the steps done so far are the checkpoint's, and the steps left
are shared out over the new replicas, on parts of a fresh partition (as a rescale does). The old
run's files are never written over: the event log is appended to (a resume record first), a new
checkpoint set is added, and summary.json, model.pt and model.json are replaced at the end.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ps.common import config as cfg
from ps.common import rundir, schema
from ps.common.errors import UserError
from ps.driver.budget import ceil_div
from ps.driver.checkpoints import DIR_NAME
from ps.driver.prepare import Prepared, prepare
from ps.driver.reshard import reshard
from ps.obs import events
from ps.server import checkpoint
from replicas.models import build_model, named_shapes
from sharding import PlanError, make_plan

RESUMABLE = frozenset({
    "replicas", "shards", "epochs", "steps", "address", "data_dir", "device", "prefetch",
    "replica_cpus", "shard_cpus", "replica_resources", "shard_resources", "placement", "threads",
    "timeout_s", "eval_every", "metrics", "metrics_port", "tensorboard", "checkpoint_every",
    "keep_checkpoints", "max_replica_restarts", "max_shard_restarts", "divergence_factor", "transport", "pipeline",
    "inject_faults", "fail_on_rejected", "budget"})


JOB_KEYS = ("config", "model", "sharding", "shard_sizes", "steps_done")  # what a set's job.json must hold


@dataclass
class Resume:
    seq: int
    states: list           # ShardState of each shard of the new plan
    parts: list            # (parts, index, generation) of each replica
    share: int             # steps each replica does
    generation: int
    prior: dict            # what the earlier sessions did (RunStats' `prior`)
    versions: list

    def record(self, t: float, header: dict) -> dict:
        return schema.resume_record(t, self.seq, self.versions, header["replicas"], header["shards"],
                                    header["shard_sizes"], self.prior["steps"])

    def describe(self) -> dict:
        return {"from_checkpoint": self.seq, "versions": self.versions,
                "steps_before": self.prior["steps"], "generation": self.generation}


def prepare_resume(run_dir: str, overrides: dict, source: str,
                   warn: Callable[[str], None]) -> tuple[Prepared, Path, int]:
    """Everything a resumed job needs, checked before Ray starts; returns (prepared, run
    directory, byte offset where the event log's last complete record ends)."""
    path, log_end = _require_run(run_dir)
    found = checkpoint.latest_set(path / DIR_NAME, warn)
    if found is None:
        raise UserError(f"--resume {path}: no checkpoint under {path / DIR_NAME} can be read; "
                        "the run cannot be continued")
    seq, set_path, states, job = found
    missing = [k for k in JOB_KEYS if k not in job]
    if missing:
        raise UserError(f"--resume {path}: {set_path / checkpoint.JOB_FILE} lacks {', '.join(missing)}: "
                        "it was not written by this downpour")
    c = _resumed_config(job["config"], overrides, source, path)
    prepared = prepare(c)
    c, plan, budget = prepared.config, prepared.plan, prepared.budget
    states = _fit_plan(states, job, c, plan, path)
    steps_left = budget.total_steps - job["steps_done"]
    if steps_left <= 0:
        raise UserError(f"--resume {path}: the run has done {job['steps_done']} of its "
                        f"{budget.total_steps} steps: give more --epochs or --steps to continue it")
    share = ceil_div(steps_left, c.replicas)
    for st in states:
        st.planned_updates = st.version + ceil_div(share, c.n_push) * c.replicas  # ends with the run
        st.counters["pushes_from"] = {}  # replica ids start again at 0: old counts would be theirs
    generation = job.get("generation", 0) + 1
    prior = {"steps": job["steps_done"], "train_samples": job.get("train_samples", 0),
             "evaluations": job.get("evaluations", []), "wall_time_s": job.get("wall_time_s", 0.0)}
    prepared.resume = Resume(seq, states, [(c.replicas, k, generation) for k in range(c.replicas)],
                             share, generation, prior, [st.version for st in states])
    prepared.asked = {**job["config"], **{k: v for k, v in overrides.items() if k in RESUMABLE}}
    return prepared, path, log_end


def _require_run(run_dir: str) -> tuple[Path, int]:
    """The run directory, and where its event log's last complete record ends."""
    path = rundir.require_run(run_dir)
    if not (path / rundir.CONFIG_NAME).is_file():
        raise UserError(f"--resume {path}: no {rundir.CONFIG_NAME}: is it a downpour run directory?")
    try:
        return path, events.header_and_end(path / schema.LOG_NAME)[1]
    except events.LogError as exc:
        raise UserError(f"--resume {path}: {exc}") from None


def _resumed_config(saved: dict, overrides: dict, source: str, path: Path) -> cfg.TrainConfig:
    """The saved configuration with the overrides; a change to what may not change is refused
    (compared after both are parsed, so `lr: 3e-3` in YAML equals the saved 0.003)."""
    before = cfg.from_mapping(saved, f"{path / rundir.CONFIG_NAME}")
    after = cfg.from_mapping({**saved, **overrides}, source)
    changed = [k for k in cfg.FIELDS if k not in RESUMABLE and getattr(before, k) != getattr(after, k)
               and not (k == "run_dir" and Path(after.run_dir).resolve() == path.resolve())]
    if changed:
        raise UserError(f"--resume {path}: {changed[0]} cannot change on resume (the run used "
                        f"{getattr(before, changed[0])!r}); may change: {', '.join(sorted(RESUMABLE))}")
    return dataclasses.replace(after, run_dir=str(path))


def _fit_plan(states: list, job: dict, c: cfg.TrainConfig, plan, path: Path) -> list:
    """The checkpoint's shard states, re-split for this job's plan if the shard count changed."""
    sizes = job["shard_sizes"]
    if sum(sizes) != plan.total:
        raise UserError(f"--resume {path}: the checkpoint holds {sum(sizes)} parameters, model "
                        f"{c.model} has {plan.total}: it is not this model's checkpoint")
    if len(states) == plan.num_shards and sizes == [plan.shard_numel(s) for s in range(plan.num_shards)]:
        return states
    try:
        old = make_plan(named_shapes(build_model(c.model, c.seed)), len(states), job["sharding"])
    except PlanError as exc:
        raise UserError(f"--resume {path}: cannot rebuild the checkpoint's shard plan ({exc})") from None
    try:
        return reshard(states, old, plan)
    except checkpoint.CheckpointError as exc:
        raise UserError(f"--resume {path}: cannot re-shard the checkpoint ({exc})") from None
