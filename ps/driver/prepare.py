"""Everything a job checks before any actor starts: names, files, sizes, the shard plan."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ps.common.config import TrainConfig
from ps.common.errors import UserError
from ps.driver.budget import StepBudget
from ps.obs.tensorboard import require_tensorboard
from ps.server.consistency import ASYNC, Consistency, parse_consistency
from ps.server.optimizers import OptimizerSpec, parse_optimizer
from ps.server.rules import make_rule
from ps.server.schedules import get_schedule
from ps.server.transforms import check_transform, make_transform
from replicas.data import Dataset, load_dataset
from replicas.models import build_model, named_shapes
from sharding import ShardPlan, make_plan

DRY_RUN_STEPS = 3


@dataclass
class Prepared:
    config: TrainConfig
    plan: ShardPlan
    optimizer: OptimizerSpec
    dataset: Dataset
    initial: np.ndarray  # the flat initial parameters, drawn from the seed
    budget: StepBudget
    asked: Optional[dict] = None   # the configuration as the user gave it (checkpoints keep it)
    resume: Any = None             # ps.driver.resume.Resume when the job continues a run
    shm: Any = None                # ps.common.shm.ShmNames when shared memory is used
    consistency: Consistency = ASYNC


def prepare(c: TrainConfig) -> Prepared:
    """Raises UserError/PlanError/DataError naming the field; starts nothing."""
    if c.dry_run:
        c = dataclasses.replace(c, steps=min(c.steps or DRY_RUN_STEPS, DRY_RUN_STEPS), eval_every=0.0)
    if c.local_steps:  # async local SGD: a fetch and a push of the delta every H steps
        c = dataclasses.replace(c, n_fetch=c.local_steps, n_push=c.local_steps)
    model = build_model(c.model, c.seed)
    plan = make_plan(named_shapes(model), c.shards, c.sharding)
    optimizer = parse_optimizer(c.optimizer)
    make_rule(c.lr_rule)
    get_schedule(c.lr_schedule)
    mode = check_modes(c, optimizer)
    if c.tensorboard:
        require_tensorboard()
    dataset = load_dataset(c.dataset, c.data_dir, c.seed)
    smallest = len(dataset.train_labels) // c.replicas
    if c.batch_size > smallest:
        raise UserError(f"batch_size {c.batch_size} is larger than a replica's partition "
                        f"({smallest} samples with {c.replicas} replicas): lower --batch-size "
                        "or --replicas")
    with torch.no_grad():
        initial = torch.cat([p.reshape(-1) for p in model.parameters() if p.requires_grad]).numpy()
    budget = StepBudget(len(dataset.train_labels), c.replicas, c.batch_size, c.n_push, c.steps, c.epochs)
    return Prepared(c, plan, optimizer, dataset, initial, budget, consistency=mode)


def check_modes(c: TrainConfig, optimizer: OptimizerSpec) -> Consistency:
    """The consistency mode, and the combinations that make no sense, before any actor starts."""
    mode = parse_consistency(c.consistency, c.replicas)
    check_transform(c.gradient_transform)
    paced = mode.rounds or mode.mode == "ssp"
    if paced and (c.n_fetch, c.n_push) != (1, 1):
        raise UserError(f"consistency {mode.mode} paces replicas step by step: it needs n_fetch = "
                        f"n_push = 1 (they are {c.n_fetch} and {c.n_push}, or --local-steps set them)")
    if mode.rounds and c.transport == "shm":
        raise UserError(f"consistency {mode.mode} waits for rounds through Ray calls: use --transport "
                        "auto or ray")
    if mode.rounds and c.budget == "job":
        raise UserError(f"consistency {mode.mode} and --budget job: every round waits for every "
                        "replica, so they end together already; drop --budget job")
    if (mode.rounds or mode.mode == "ssp") and c.pipeline:
        raise UserError(f"consistency {mode.mode} and --pipeline: a paced replica waits for its "
                        "push anyway; drop --pipeline")
    if mode.mode == "hogwild":
        if optimizer.name != "sgd" or optimizer.params:
            raise UserError(f"consistency hogwild applies pushes concurrently without a lock: only "
                            f"plain sgd is safe there, not '{_spec_text(optimizer)}': use --optimizer sgd")
        if c.gradient_transform:
            raise UserError("consistency hogwild and a gradient_transform: the transform reads the "
                            "parameters while other pushes write them; drop one of the two")
        if c.transport == "shm":
            raise UserError("consistency hogwild takes concurrent pushes through Ray calls: use "
                            "--transport auto or ray")
    why = needs_ray_calls(c, mode)
    if why and c.transport == "shm":
        raise UserError(f"--transport shm, but {why}, which needs Ray calls: use --transport auto or ray")
    return mode


def needs_ray_calls(c: TrainConfig, mode: Consistency) -> Optional[str]:
    """Why this job's pushes must go through Ray calls rather than shared memory, or None."""
    if mode.rounds or mode.mode == "hogwild":
        return f"consistency {mode.mode}"
    if c.gradient_transform and make_transform(c.gradient_transform, 1).needs_backup:
        return f"gradient_transform {c.gradient_transform} keeps what each replica fetched"
    return None


def _spec_text(optimizer: OptimizerSpec) -> str:
    params = ",".join(f"{k}={v:g}" for k, v in optimizer.params.items())
    return f"{optimizer.name}:{params}" if params else optimizer.name
