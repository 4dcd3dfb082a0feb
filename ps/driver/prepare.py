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
from ps.server.optimizers import OptimizerSpec, parse_optimizer
from ps.server.rules import make_rule
from ps.server.schedules import get_schedule
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


def prepare(c: TrainConfig) -> Prepared:
    """Raises UserError/PlanError/DataError naming the field; starts nothing."""
    if c.dry_run:
        c = dataclasses.replace(c, steps=min(c.steps or DRY_RUN_STEPS, DRY_RUN_STEPS), eval_every=0.0)
    model = build_model(c.model, c.seed)
    plan = make_plan(named_shapes(model), c.shards, c.sharding)
    optimizer = parse_optimizer(c.optimizer)
    make_rule(c.lr_rule)
    get_schedule(c.lr_schedule)
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
    return Prepared(c, plan, optimizer, dataset, initial, budget)
