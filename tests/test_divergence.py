"""The divergence alarm, pure."""

import math

from ps.driver.divergence import DivergenceAlarm


def test_a_non_finite_training_loss_always_raises_the_alarm():
    alarm = DivergenceAlarm(0)
    assert alarm.training(3, 2.3) is None and alarm.training(3, None) is None
    assert "replica 3" in alarm.training(3, math.nan)
    assert "inf" in alarm.training(0, math.inf)


def test_a_test_loss_over_factor_times_its_best_raises_it_and_better_ones_lower_the_bar():
    alarm = DivergenceAlarm(4.0)
    assert alarm.evaluation(2.0) is None
    assert alarm.evaluation(1.0) is None  # the best is now 1.0
    assert alarm.evaluation(3.9) is None
    assert "4x its best 1" in alarm.evaluation(4.1)
    assert "nan" in alarm.evaluation(math.nan)
    assert "not finite" in alarm.evaluation(None)  # what score() gives for a non-finite loss


def test_factor_zero_only_watches_for_non_finite_losses():
    alarm = DivergenceAlarm(0)
    assert alarm.evaluation(0.1) is None and alarm.evaluation(1e6) is None
    assert alarm.evaluation(math.inf) is not None
