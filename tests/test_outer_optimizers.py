"""Outer optimizers for asynchronous local SGD: nesterov and delayed_nesterov against torch and a
numpy reference, their parameters, state round trips and the overflow guard."""

import numpy as np
import pytest
import torch

from ps.common.errors import UserError
from ps.server.optimizers import (
    ALL_OPTIMIZERS,
    OUTER_OPTIMIZERS,
    ServerOptimizer,
    parse_optimizer,
)

SIZE, LR = 257, 0.05


def rand(rng, scale=1.0):
    return (rng.standard_normal(SIZE) * scale).astype(np.float32)


def server(spec, w0, lr=LR):
    return ServerOptimizer(parse_optimizer(spec), w0, lr)


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def assert_bitwise(a, b):
    assert np.asarray(a).shape == np.asarray(b).shape
    assert np.array_equal(bits(a), bits(b))


def torch_nesterov_trajectory(w0, grads, lr=LR, momentum=0.9):
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([p], lr=lr, momentum=momentum, nesterov=True)
    out = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


def delayed_nesterov_reference(w0, grads, scales, lr, momentum, delay):
    """The documented rule in float64 numpy: a plain step every push; on every delay-th push
    also m = b*m + mean(buffer) and the momentum part lr*b*m."""
    p, m, s, count, out = w0.astype(np.float64), np.zeros(SIZE), np.zeros(SIZE), 0, []
    for g, scale in zip(grads, scales):
        g, step_lr = g.astype(np.float64) * scale, lr  # the factor scales the pseudo-gradient
        s += g
        count += 1
        if count < delay:
            p = p - step_lr * g
        else:
            m = momentum * m + s / delay
            p = p - step_lr * (g + momentum * m)
            s[:], count = 0, 0
        out.append(p.copy())
    return out


def test_outer_optimizers_are_choices():
    assert set(OUTER_OPTIMIZERS) <= set(ALL_OPTIMIZERS)
    with pytest.raises(UserError) as err:
        parse_optimizer("rmsprop")
    assert "nesterov" in str(err.value) and "delayed_nesterov" in str(err.value)


@pytest.mark.parametrize("spec", ["nesterov", "delayed_nesterov:delay=1", "delayed_nesterov"])
def test_nesterov_and_delay_one_equal_torch_nesterov_bitwise_for_20_steps(spec):
    rng = np.random.default_rng(0)
    w0 = rand(rng)
    grads = [rand(rng) for _ in range(20)]
    opt = server(spec, w0)
    for g, ref in zip(grads, torch_nesterov_trajectory(w0, grads)):
        assert opt.step(g, 1.0)
        assert_bitwise(opt.values, ref)


def test_nesterov_momentum_parameter_reaches_torch():
    rng = np.random.default_rng(1)
    w0, grads = rand(rng), [rand(rng) for _ in range(5)]
    opt = server("nesterov:momentum=0.5", w0)
    for g, ref in zip(grads, torch_nesterov_trajectory(w0, grads, momentum=0.5)):
        opt.step(g, 1.0)
        assert_bitwise(opt.values, ref)


@pytest.mark.parametrize("delay, momentum", [(2, 0.9), (3, 0.9), (4, 0.5), (5, 0.0)])
def test_delayed_nesterov_matches_the_numpy_reference(delay, momentum):
    rng = np.random.default_rng(delay)
    w0 = rand(rng)
    grads = [rand(rng) for _ in range(23)]  # not a multiple of delay: ends mid-window
    scales = list(rng.uniform(0.2, 1.0, len(grads)))  # per-push staleness factors, as lr rules give
    opt = server(f"delayed_nesterov:momentum={momentum},delay={delay}", w0)
    ref = delayed_nesterov_reference(w0, grads, scales, LR, momentum, delay)
    for k, (g, scale) in enumerate(zip(grads, scales)):
        assert opt.step(g, scale)
        np.testing.assert_allclose(opt.values, ref[k], rtol=1e-5, atol=1e-6)
    assert int(opt.export_state()["count"]) == len(grads) % delay


def test_delayed_nesterov_between_momentum_updates_is_plain_sgd_and_the_buffer_holds_the_sum():
    rng = np.random.default_rng(3)
    w0, g1, g2 = rand(rng), rand(rng), rand(rng)
    opt = server("delayed_nesterov:delay=3", w0, lr=1.0)
    opt.step(g1, 1.0)
    opt.step(g2, 1.0)
    assert_bitwise(opt.values, (w0 - g1) - g2)
    state = opt.export_state()
    assert_bitwise(state["grad_sum"], g1 + g2)
    assert_bitwise(state["momentum_buffer"], np.zeros(SIZE, np.float32))
    assert state["count"].shape == () and float(state["count"]) == 2.0
    assert opt.state_bytes() == 2 * SIZE * 4 + 4


@pytest.mark.parametrize("spec", ["nesterov", "delayed_nesterov:delay=3"])
def test_state_round_trip_gives_identical_next_steps(spec):
    rng = np.random.default_rng(4)
    w0, grads = rand(rng), [rand(rng) for _ in range(10)]
    a = server(spec, w0)
    for g in grads[:4]:
        a.step(g, 1.0)
    b = server(spec, np.zeros(SIZE, np.float32))
    b.load_state(a.values.copy(), a.export_state())
    for g in grads[4:]:
        a.step(g, 0.5)
        b.step(g, 0.5)
        assert_bitwise(a.values, b.values)
    for key, arr in a.export_state().items():
        assert np.array_equal(b.export_state()[key], arr)


def snapshot(opt):
    return opt.values.copy(), {k: v.copy() for k, v in opt.export_state().items()}


def assert_unchanged(opt, snap):
    values, state = snap
    assert_bitwise(opt.values, values)
    now = opt.export_state()
    assert now.keys() == state.keys()
    for key, arr in state.items():
        assert np.array_equal(now[key].reshape(-1).view(np.uint8), arr.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("spec", ["nesterov", "delayed_nesterov:delay=1", "delayed_nesterov:delay=3"])
@pytest.mark.parametrize("before", [0, 1, 2, 3])
def test_an_overflowing_step_is_rolled_back_bitwise_and_the_next_step_is_the_one_that_was_due(spec, before):
    # before=1, 2 with delay 3: the overflow lands mid-window (a plain step); before=0, 3: at its start
    rng = np.random.default_rng(5)
    w0, small = rand(rng), [rand(rng, 1e-12) for _ in range(before + 1)]
    opt, twin = server(spec, w0, lr=1e10), server(spec, w0, lr=1e10)
    for g in small[:before]:
        assert opt.step(g, 1.0) and twin.step(g, 1.0)
    snap = snapshot(opt)
    for sign in (1, -1):
        assert not opt.step(np.full(SIZE, sign * 1e30, np.float32), 1.0)
        assert_unchanged(opt, snap)
    if before == 0:
        assert opt.export_state() == {}  # the state the failed first step created is gone
    assert opt.step(small[before], 1.0) and twin.step(small[before], 1.0)
    assert_unchanged(opt, snapshot(twin))


@pytest.mark.parametrize("spec, words", [
    ("delayed_nesterov:delay=0", ["delay=0.0", "whole number", ">= 1"]),
    ("delayed_nesterov:delay=1.5", ["delay=1.5", "whole number"]),
    ("delayed_nesterov:delay=-2", ["delay"]),
    ("delayed_nesterov:momentum=1", ["momentum=1.0", "out of range", "0 <= momentum < 1"]),
    ("delayed_nesterov:weight_decay=0.1", ["no parameter", "weight_decay", "momentum, delay"]),
    ("nesterov:momentum=0", ["momentum=0.0", "0 < momentum < 1"]),
    ("nesterov:dampening=0.1", ["no parameter", "dampening"]),
    ("nesterov:weight_decay=-1", ["weight_decay", ">= 0"]),
    ("momentum:delay=2", ["no parameter", "delay"]),
])
def test_bad_outer_optimizer_specs_are_user_errors(spec, words):
    with pytest.raises(UserError) as err:
        parse_optimizer(spec)
    message = str(err.value)
    assert message.startswith("optimizer") and "\n" not in message
    assert all(w in message for w in words), message


def test_good_outer_optimizer_specs_parse():
    assert parse_optimizer("delayed_nesterov:delay=4,momentum=0").params == {"delay": 4.0, "momentum": 0.0}
    assert parse_optimizer("nesterov:momentum=0.95,weight_decay=0.01").name == "nesterov"
