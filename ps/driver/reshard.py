"""Re-sharding: the state of a job's shards, saved on one shard plan, cut along another (for
`train --resume --shards M'`). Pure: plans and ShardStates in, ShardStates out."""

import copy

import numpy as np

from ps.server.checkpoint import CheckpointError, ShardState, empty_counters
from sharding import ShardPlan


def reshard(states: list[ShardState], old_plan: ShardPlan, new_plan: ShardPlan) -> list[ShardState]:
    """The same model state cut along new_plan; identical shard layouts return `states` itself.

    Per-element optim arrays ((size,) per shard) are reassembled and split like the values.
    """
    _check_reshard_input(states, old_plan, new_plan)
    if old_plan.shards == new_plan.shards:
        return states
    values = _resplit([s.values for s in states], old_plan, new_plan)
    optim = [{} for _ in range(new_plan.num_shards)]
    for key in states[0].optim:
        old = [s.optim[key] for s in states]
        if old[0].ndim == 0:
            # Every push reaches every shard, so scalar counts (Adam's step) differ only by the pushes
            # a shard rejected; the max keeps bias correction no larger than any shard already had.
            new = [np.array(np.max(old), dtype=old[0].dtype) for _ in optim]
        else:
            new = _resplit(old, old_plan, new_plan)
        for per_shard, arr in zip(optim, new):
            per_shard[key] = arr
    # Tau histograms and rejections are per shard and mean nothing on another plan; the event log
    # keeps the run's history, so the new shards start counting afresh.
    return [ShardState(shard=s, version=max(x.version for x in states),
                       incarnation=max(x.incarnation for x in states),
                       planned_updates=max(x.planned_updates for x in states),
                       values=values[s], optim=optim[s], counters=empty_counters(),
                       meta=copy.deepcopy(states[0].meta))
            for s in range(new_plan.num_shards)]


def _resplit(parts: list[np.ndarray], old_plan: ShardPlan, new_plan: ShardPlan) -> list[np.ndarray]:
    flat = old_plan.assemble(parts, np.empty(old_plan.total, dtype=parts[0].dtype))
    return [p.copy() for p in new_plan.split(flat)]  # copies: no new shard holds a view of another's


def _check_reshard_input(states: list[ShardState], old_plan: ShardPlan, new_plan: ShardPlan) -> None:
    if len(states) != old_plan.num_shards:
        raise CheckpointError(f"the checkpoint has {len(states)} shard states but the old plan has "
                              f"{old_plan.num_shards} shards: re-shard with the plan the checkpoint was saved with")
    if old_plan.total != new_plan.total:
        raise CheckpointError(f"the checkpoint holds {old_plan.total} parameters but the new plan has "
                              f"{new_plan.total}: the model changed since the checkpoint was saved")
    keys = set(states[0].optim)
    for s, state in enumerate(states):
        size = old_plan.shard_numel(s)
        where = f"checkpoint shard {s}"
        if state.shard != s:
            raise CheckpointError(f"{where} holds state of shard {state.shard}: pass states in shard order")
        if state.values.dtype != np.float32 or state.values.shape != (size,):
            raise CheckpointError(f"{where} has values {state.values.dtype} {state.values.shape} but the old "
                                  f"plan gives it float32 ({size},)")
        if set(state.optim) != keys:
            raise CheckpointError(f"{where} has optimizer state {sorted(state.optim)} but shard 0 has "
                                  f"{sorted(keys)}: every shard must use the same optimizer")
        for key, arr in state.optim.items():
            first = states[0].optim[key]
            if arr.shape not in ((), (size,)) or arr.ndim != first.ndim or arr.dtype != first.dtype:
                raise CheckpointError(f"{where} has optim[{key!r}] {arr.dtype} {arr.shape}: expected "
                                      f"{first.dtype} {'()' if first.ndim == 0 else f'({size},)'}")
