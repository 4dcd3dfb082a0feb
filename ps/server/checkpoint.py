"""Shard checkpoints: a shard's whole state as a file that never unpickles, and sets of them.

(The helper writing this module fills in the format, the set management and re-sharding below.)
"""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ShardState:
    """Everything a shard needs to continue exactly where it was (ParameterShard.export_state)."""
    shard: int
    version: int
    incarnation: int
    planned_updates: int
    values: np.ndarray                    # float32 (size,)
    optim: dict                           # name -> np.ndarray: torch.optim's per-parameter state,
    #                                       (size,) arrays (exp_avg, momentum_buffer...) and 0-d ones (step)
    counters: dict = field(default_factory=dict)  # tau_sum: int, tau_counts: {int: int}, rejected: {str: int}
    meta: dict = field(default_factory=dict)      # optimizer: {"name", "params"}, and what the job adds
