"""ps.server.bounds: the bounds a shard steps unguarded by hold for every tensor of every family,
step after step, and refuse where they cannot promise finiteness."""

import numpy as np
import pytest
import torch

from ps.server.bounds import SAFE, next_bounds
from ps.server.optimizers import ServerOptimizer, parse_optimizer

SIZE = 513
SPECS = ["sgd", "sgd:weight_decay=0.1", "momentum", "momentum:dampening=0.5,weight_decay=0.01",
         "nesterov", "adam", "adam:weight_decay=0.1,eps=1e-4", "adagrad",
         "adagrad:initial_accumulator_value=0.5,weight_decay=0.1"]


def max_abs(optimizer: ServerOptimizer) -> dict:
    return {k: float(t.abs().max()) for k, t in optimizer._tensors().items() if t.dim()}


@pytest.mark.parametrize("spec", SPECS)
def test_the_carried_bounds_are_never_below_what_the_tensors_hold(spec):
    rng = np.random.default_rng(7)
    opt = ServerOptimizer(parse_optimizer(spec), rng.standard_normal(SIZE).astype(np.float32), 0.05)
    family, group = opt._family, opt._group
    bounds = max_abs(opt)
    for k in range(60):
        scale = 10.0 ** rng.integers(-6, 4)  # gradients from tiny to large, and some zeros
        g = (rng.standard_normal(SIZE) * scale).astype(np.float32)
        g[rng.random(SIZE) < 0.3] = 0
        lr = float(rng.choice([1e-4, 1e-2, 0.5]))
        norm = float(np.linalg.norm(g.astype(np.float64)))
        after = next_bounds(family, group, bounds, lr, norm)
        if after is None:  # too loose to promise anything: the optimizer measures afresh
            after = next_bounds(family, group, max_abs(opt), lr, norm)
        assert after is not None, k
        group["lr"] = lr
        opt.param.grad = torch.from_numpy(g)
        with torch.no_grad():
            opt._step(opt.optim)
        for name, value in max_abs(opt).items():
            assert value <= after[name], (k, name, value, after[name])
        bounds = after


def test_bounds_refuse_what_could_overflow_or_divide_by_zero():
    sgd = {"weight_decay": 0.0, "momentum": 0.0}
    assert next_bounds("sgd", sgd, {"": 1.0}, 1.0, 1.0) == {"": 2.0}
    assert next_bounds("sgd", sgd, {"": SAFE / 2}, 1.0, SAFE) is None  # parameters past SAFE
    adam = {"betas": (0.9, 0.999), "eps": 0.0, "weight_decay": 0.0}
    assert next_bounds("adam", adam, {"": 1.0}, 1e-3, 1.0) is None  # eps 0: no bound on 1/denominator
    assert next_bounds("adam", {**adam, "eps": 1e-8}, {"": 1.0}, 1e-3, 1e19) is None  # g^2 overflows
    assert next_bounds("adagrad", {"eps": 0.0, "weight_decay": 0.0}, {"": 1.0}, 1e-3, 1.0) is None
    assert next_bounds("delayed_nesterov", {}, {"": 1.0}, 1e-3, 1.0) is None  # no bound for it here
