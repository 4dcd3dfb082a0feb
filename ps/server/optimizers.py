"""Server-side optimizers: a shard's slice updated in place by torch.optim, with a per-push learning rate.

Using torch.optim on the shard's flat float32 slice makes the server step exactly the step a user's
single-process training would take (same formulas, same order of operations).
"""

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from ps.common.errors import UserError
from ps.common.specs import parse_spec

# name -> (torch.optim class, fixed keyword defaults, parameters a user may set)
_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {}, ("weight_decay",)),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}, ("momentum", "dampening", "weight_decay")),
    # fused: one pass over the slice instead of one per operation, 2x faster for these two on CPU
    "adagrad": (torch.optim.Adagrad, {"fused": True}, ("eps", "weight_decay", "initial_accumulator_value")),
    "adam": (torch.optim.Adam, {"fused": True}, ("beta1", "beta2", "eps", "weight_decay")),
}
OPTIMIZERS = tuple(_OPTIMIZERS)
_BELOW_ONE = ("momentum", "dampening", "beta1", "beta2")  # the rest only need to be >= 0


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    params: dict


def parse_optimizer(spec: str) -> OptimizerSpec:
    """'adam' or 'momentum:momentum=0.95'; unknown names and parameters are a UserError."""
    name, params = parse_spec(spec, "optimizer")
    if name not in _OPTIMIZERS:
        raise UserError(f"optimizer is '{name}': choose one of {', '.join(OPTIMIZERS)}")
    allowed = _OPTIMIZERS[name][2]
    for key, value in params.items():
        if key not in allowed:
            raise UserError(f"optimizer '{name}' has no parameter '{key}'; allowed: {', '.join(allowed)}")
        if value < 0 or (key in _BELOW_ONE and value >= 1):
            raise UserError(f"optimizer '{name}': {key}={value} is out of range")
    return OptimizerSpec(name, params)


class ServerOptimizer:
    """Owns the shard's parameters as a flat float32 tensor and applies one gradient at a time."""

    def __init__(self, spec: OptimizerSpec, initial: np.ndarray, lr: float):
        cls, defaults, _ = _OPTIMIZERS[spec.name]
        kwargs = {**defaults, **_torch_kwargs(spec.params)}
        self.lr = lr
        # A copy: the shard owns its buffer; `values` exposes it to pull without another copy.
        self.param = torch.nn.Parameter(torch.tensor(initial, dtype=torch.float32), requires_grad=False)
        self.param.grad = self._grad = torch.zeros_like(self.param)
        self.optim = cls([self.param], lr=lr, **kwargs)
        # torch.optim's own step without the wrappers every call goes through (profiler scope,
        # step hooks, grad-mode switch): the same arithmetic, 25-75 us less per step at 50K floats
        # (scripts/bench_micro.py's push rate is bound by it); a shard registers no hooks
        self._step = inspect.unwrap(cls.step)
        self._backup: dict = {}  # see _save

    @property
    def values(self) -> np.ndarray:
        return self.param.detach().numpy()

    def step(self, grad: np.ndarray, scale: float) -> bool:
        """param <- update(param, grad) with learning rate lr * scale; grad is read, never kept.
        Returns False, leaving the parameters and the state bitwise as they were, when the update
        would make any of them non-finite (a finite gradient times a huge learning rate)."""
        if grad.flags.writeable:  # a shared-memory slot: read in place (these optimizers only read it)
            self.param.grad = torch.from_numpy(grad)
        else:  # a read-only view of Ray's object store, which torch warns about: a copy
            self.param.grad = self._grad
            self._grad.numpy()[:] = grad
        self.optim.param_groups[0]["lr"] = self.lr * scale
        before = self._save()
        with torch.no_grad():
            self._step(self.optim)
        if all(_finite(t) for t in self._tensors().values()):
            return True
        self._restore(before)
        return False

    def release_grad(self) -> None:
        """Lets go of a gradient `step` read in place (a shared-memory slot the sender reuses)."""
        self.param.grad = self._grad

    def _tensors(self) -> dict:
        """The parameters ("") and every state tensor, by name."""
        state = self.optim.state.get(self.param, {})
        return {"": self.param.data, **{k: v for k, v in state.items() if torch.is_tensor(v)}}

    def _save(self) -> dict:
        """Copies of `_tensors()` into buffers kept from step to step: one memcpy of each."""
        tensors = self._tensors()
        if self._backup.keys() != tensors.keys():
            self._backup = {k: torch.empty_like(t) for k, t in tensors.items()}
        for k, t in tensors.items():
            self._backup[k].copy_(t)
        return self._backup

    def _restore(self, before: dict) -> None:
        state = self.optim.state[self.param]
        for k in [k for k in state if k not in before]:  # created by the failed step
            del state[k]
        for k, t in self._tensors().items():
            t.copy_(before[k])

    def export_state(self) -> dict:
        """name -> numpy copy of torch.optim's state for the slice: (size,) arrays and 0-d ones."""
        state = self.optim.state.get(self.param, {})
        return {k: v.detach().cpu().numpy().copy() for k, v in state.items() if torch.is_tensor(v)}

    def load_state(self, values: np.ndarray, optim: dict) -> None:
        """Puts back what `export_state` (and `values`) gave: the next step is the one that was due."""
        self.param.data.copy_(torch.from_numpy(np.array(values, dtype=np.float32)))
        state = self.optim.state[self.param]
        state.clear()
        state.update({k: torch.from_numpy(np.array(v)) for k, v in optim.items()})
        self._backup = {}

    def state_bytes(self) -> int:
        state = self.optim.state.get(self.param, {})
        return sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))


def _finite(t: torch.Tensor) -> bool:
    """All elements finite: one dot product on the good path (a NaN or Inf makes it non-finite;
    so can an overflow of the sum of squares, which the exact test then clears)."""
    a = t.detach().numpy().reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.dot(a, a))) or bool(np.isfinite(a).all())


def _torch_kwargs(params: dict) -> dict:
    kwargs = dict(params)
    if "beta1" in kwargs or "beta2" in kwargs:
        kwargs["betas"] = (kwargs.pop("beta1", 0.9), kwargs.pop("beta2", 0.999))
    return kwargs
