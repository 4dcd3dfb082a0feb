"""Server-side optimizers: a shard's slice updated in place by torch.optim, with a per-push learning rate.

Using torch.optim on the shard's flat float32 slice makes the server step exactly the step a user's
single-process training would take (same formulas, same order of operations).

`nesterov` and `delayed_nesterov` are outer optimizers for asynchronous local SGD (Liu et al. 2024,
"Asynchronous Local-SGD Training for Language Modeling"): a replica pushes a pseudo-gradient, the
change its local steps made (sign as a gradient: old - new), and the server steps on it.
"""

import inspect
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ps.common.errors import UserError
from ps.common.specs import parse_spec
from ps.server.bounds import next_bounds


class DelayedNesterov(torch.optim.Optimizer):
    """Delayed Nesterov (DN), after Liu et al. 2024: momentum that moves only once every `delay`
    pushes, so that stale pseudo-gradients arriving one by one do not each drive it.

    Per push g (already scaled by its staleness factor; lr = the scheduled learning rate,
    b = momentum, K = delay), state as tensors:
    `momentum_buffer` m (starts at 0), `grad_sum` s (the pushes since the last momentum update)
    and `count` c (0-d, how many):

        s += g; c += 1
        if c < K:  p -= lr * g                                   (a plain gradient step)
        else:      m = b*m + s/K;  p -= lr * (g + b*m);  s = 0; c = 0

    Every push takes its plain gradient step; the K-th also takes the momentum part, b*m, with m
    updated by the mean of the K buffered pushes. With K = 1 this is torch.optim.SGD(momentum=b,
    nesterov=True, dampening=0) operation for operation (m = b*m + g; p -= lr*(g + b*m)): bitwise
    the same steps. It takes no weight decay.

    What was not checked: the paper's own algorithm box (its text was not reachable from here).
    From memory of its description, DN buffers the pseudo-gradients, updates the momentum with
    their average every N-th server update and applies the gradients in between directly, possibly
    scaled by a constant c in [0, 1/N]; this implementation applies them unscaled (c = 1) and
    applies the K-th push's gradient together with the momentum step, which is what makes K = 1
    plain Nesterov.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, delay: int = 1):
        if not (0 <= momentum < 1 and int(delay) == delay >= 1):
            raise ValueError(f"momentum {momentum} must be in [0, 1) and delay {delay} an integer >= 1")
        super().__init__(params, {"lr": lr, "momentum": momentum, "delay": int(delay)})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, b, k = group["lr"], group["momentum"], group["delay"]
            for p in group["params"]:
                if p.grad is not None:
                    self._step_one(p, p.grad, self.state[p], lr, b, k)

    @staticmethod
    def _step_one(p, g, state, lr, b, k):
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
            state["grad_sum"] = torch.zeros_like(p)
            state["count"] = torch.zeros((), dtype=torch.float32)  # a tensor: saved and restored with the rest
        m, s, count = state["momentum_buffer"], state["grad_sum"], state["count"]
        s.add_(g)
        count.add_(1)
        if count.item() < k:
            p.add_(g, alpha=-lr)
            return
        m.mul_(b).add_(s if k == 1 else s / k)
        p.add_(g.add(m, alpha=b), alpha=-lr)
        s.zero_()
        count.zero_()


# name -> (torch.optim class, fixed keyword defaults, parameters a user may set)
_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {}, ("weight_decay",)),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}, ("momentum", "dampening", "weight_decay")),
    # fused: one pass over the slice instead of one per operation, 2x faster for these two on CPU
    "adagrad": (torch.optim.Adagrad, {"fused": True}, ("eps", "weight_decay", "initial_accumulator_value")),
    "adam": (torch.optim.Adam, {"fused": True}, ("beta1", "beta2", "eps", "weight_decay")),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, ("momentum", "weight_decay")),
    "delayed_nesterov": (DelayedNesterov, {"momentum": 0.9}, ("momentum", "delay")),
}
# the optimizers whose steps ps.server.bounds can bound
_FAMILIES = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.Adagrad: "adagrad"}
# The per-gradient optimizers every shard test checks against a torch.optim reference; the outer
# ones come after them. ALL_OPTIMIZERS is every name a user may give.
OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam")
OUTER_OPTIMIZERS = ("nesterov", "delayed_nesterov")
ALL_OPTIMIZERS = tuple(_OPTIMIZERS)
_BELOW_ONE = ("momentum", "dampening", "beta1", "beta2")  # the rest only need to be >= 0


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    params: dict


def parse_optimizer(spec: str) -> OptimizerSpec:
    """'adam' or 'momentum:momentum=0.95'; unknown names and parameters are a UserError."""
    name, params = parse_spec(spec, "optimizer")
    if name not in _OPTIMIZERS:
        raise UserError(f"optimizer is '{name}': choose one of {', '.join(ALL_OPTIMIZERS)}")
    allowed = _OPTIMIZERS[name][2]
    for key, value in params.items():
        if key not in allowed:
            raise UserError(f"optimizer '{name}' has no parameter '{key}'; allowed: {', '.join(allowed)}")
        why = _range_error(name, key, value)
        if why:
            raise UserError(f"optimizer '{name}': {key}={value} is out of range; {why}")
    return OptimizerSpec(name, params)


def _range_error(name: str, key: str, value: float) -> Optional[str]:
    """What a parameter may be, when `value` is not that; None when it is."""
    if key == "delay":
        ok, allowed = value >= 1 and value == int(value), "delay is a whole number of pushes >= 1, e.g. delay=4"
    elif (name, key) == ("nesterov", "momentum"):  # torch's Nesterov needs a momentum
        ok, allowed = 0 < value < 1, "allowed 0 < momentum < 1"
    elif key in _BELOW_ONE:
        ok, allowed = 0 <= value < 1, f"allowed 0 <= {key} < 1"
    else:
        ok, allowed = value >= 0, f"allowed {key} >= 0"
    return None if ok else allowed


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
        # Where a push's staleness factor goes (docs/consistency.md, "Staleness rules"): the SGD
        # family scales the gradient, so a momentum buffer keeps each gradient at the factor of
        # its own staleness (Zhang et al.'s per-gradient rate); adaptive optimizers would
        # normalise a scaled gradient away, so they scale the step's rate instead.
        self.scales_gradient = issubclass(cls, (torch.optim.SGD, DelayedNesterov))
        # A step that provably keeps everything finite goes unguarded (ps.server.bounds); plain
        # SGD, whose step is one add_, then also skips torch.optim's bookkeeping around it.
        self._family = _FAMILIES.get(cls)
        self._group = self.optim.param_groups[0]
        self._plain_sgd = spec.name == "sgd" and not self._group["weight_decay"]
        self._bounds: Optional[dict] = None  # name -> >= max |tensor|, while known

    @property
    def values(self) -> np.ndarray:
        return self.param.detach().numpy()

    def step(self, grad: np.ndarray, factor: float, schedule: float = 1.0,
             grad_norm: Optional[float] = None) -> bool:
        """One update from `grad` (read, never kept) with a push's staleness `factor` and the lr
        schedule's: update(param, factor * grad) at lr * schedule for the SGD family,
        update(param, grad) at lr * factor * schedule for the adaptive ones. Returns False,
        leaving the parameters and the state bitwise as they were, when the update would make
        any of them non-finite (a finite gradient times a huge learning rate). `grad_norm`: the
        gradient's L2 norm, when the caller knows it (the step then goes unguarded if it can)."""
        by_gradient = self.scales_gradient and factor != 1.0
        if grad.flags.writeable and not by_gradient:  # a shared-memory slot: read in place
            self.param.grad = torch.from_numpy(grad)  # (these optimizers only read it)
        else:  # a read-only view of Ray's object store, which torch warns about: a copy
            self.param.grad = self._grad
            if by_gradient:
                np.multiply(grad, np.float32(factor), out=self._grad.numpy())
            else:
                self._grad.numpy()[:] = grad
        lr = self.lr * schedule * (1.0 if self.scales_gradient else factor)
        self._group["lr"] = lr
        grad_max = None if grad_norm is None else grad_norm * (factor if self.scales_gradient else 1.0)
        if grad_max is not None and self._unguarded(lr, grad_max):
            with torch.no_grad():
                if self._plain_sgd:  # torch's SGD step, operation for operation
                    self.param.add_(self.param.grad, alpha=-lr)
                else:
                    self._step(self.optim)
            return True
        self._bounds = None  # a guarded step: no bound is carried through it
        before = self._save()
        with torch.no_grad():
            self._step(self.optim)
        if all(_finite(t) for t in self._tensors().values()):
            return True
        self._restore(before)
        return False

    def _unguarded(self, lr: float, grad_max: float) -> bool:
        """Whether this step provably keeps every tensor finite, carrying the bounds past it if
        so; the bounds are measured afresh (one read of each tensor) when they would not do."""
        if self._family is None:
            return False
        if self._bounds is not None:
            after = next_bounds(self._family, self._group, self._bounds, lr, grad_max)
            if after is not None:
                self._bounds = after
                return True
        self._bounds = next_bounds(self._family, self._group, self._measure(), lr, grad_max)
        return self._bounds is not None

    def _measure(self) -> dict:
        """max |x| of the parameters and of each state tensor (not the 0-d step counts)."""
        return {k: _max_abs(t) for k, t in self._tensors().items() if t.dim()}

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
        self._bounds = None
        state = self.optim.state[self.param]
        state.clear()
        state.update({k: torch.from_numpy(np.array(v)) for k, v in optim.items()})
        self._backup = {}

    def state_bytes(self) -> int:
        state = self.optim.state.get(self.param, {})
        return sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))


def _max_abs(t: torch.Tensor) -> float:
    """max |x| in one pass without a temporary; inf if any element is NaN or infinite (which no
    bound passes)."""
    if not t.numel():
        return 0.0
    lo, hi = (float(x) for x in torch.aminmax(t))
    return max(-lo, hi) if math.isfinite(lo) and math.isfinite(hi) else math.inf


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
