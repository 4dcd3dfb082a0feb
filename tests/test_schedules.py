"""Learning-rate schedules: endpoints, monotonicity, and how a shard applies them."""

import numpy as np
import pytest

from ps.common.errors import UserError
from ps.server.optimizers import parse_optimizer
from ps.server.schedules import SCHEDULES, get_schedule
from ps.server.shard import ParameterShard


@pytest.mark.parametrize("name, end", [("constant", 1.0), ("cosine", 0.0), ("linear", 0.0)])
def test_schedules_start_at_one_and_end_where_documented(name, end):
    fn = get_schedule(name)
    assert fn(0.0) == 1.0
    assert fn(1.0) == pytest.approx(end, abs=1e-12)
    assert fn(5.0) == pytest.approx(end, abs=1e-12)  # past the plan: stays at the end value


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_never_increase(name):
    values = [get_schedule(name)(p) for p in np.linspace(0, 1, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_is_one_half_at_mid_run():
    assert get_schedule("cosine")(0.5) == pytest.approx(0.5)


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="lr_schedule is 'step'"):
        get_schedule("step")


def test_shard_applies_the_schedule_by_its_version():
    # sgd, lr 1, linear over 4 updates: steps of 1, 0.75, 0.5, 0.25 times the gradient
    shard = ParameterShard(0, np.zeros(8, np.float32), parse_optimizer("sgd"), 1.0, "constant",
                           lr_schedule="linear", planned_updates=4)
    for _ in range(4):
        shard.push(np.ones(8, np.float32), shard.version, 0)
    np.testing.assert_array_equal(shard.pull()[1], np.full(8, -2.5, np.float32))
