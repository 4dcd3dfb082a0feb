"""The job's step accounting and rescale plans: pure arithmetic, exact."""

from ps.driver.budget import (
    RescalePlan,
    StepBudget,
    balance,
    replace_refused,
    rescale_plan,
)


def test_epochs_budget_counts_whole_batches_of_each_partition():
    b = StepBudget(train_samples=1000, replicas=3, batch_size=32, n_push=1, steps=None, epochs=2)
    assert b.steps_per_epoch == (1000 // 3 // 32) * 3 == 30
    assert b.steps_per_replica == 20 and b.total_steps == 60
    assert b.planned_epochs == 2.0 and b.planned_updates == 60
    assert b.epochs_of(45) == 1.5 and b.samples_of(45) == 45 * 32


def test_steps_budget_and_planned_updates_count_the_last_partial_push():
    b = StepBudget(train_samples=1000, replicas=2, batch_size=10, n_push=4, steps=10, epochs=1)
    assert b.steps_per_replica == 10 and b.total_steps == 20
    assert b.planned_updates == 3 * 2  # pushes after steps 4, 8 and the partial round at 10
    assert b.planned_epochs == 20 / 100


def test_rescale_plan_keeps_the_first_and_shares_out_the_rest():
    assert rescale_plan([0, 1], 100, 4, 2) == RescalePlan([0, 1, 2, 3], [], [2, 3], 25)
    assert rescale_plan([0, 1, 2, 3], 10, 1, 4) == RescalePlan([0], [1, 2, 3], [], 10)
    assert rescale_plan([0, 2], 7, 2, 5) == "the job already has 2 replicas"
    assert rescale_plan([0, 2], 7, 3, 5) == RescalePlan([0, 2, 5], [], [5], 3)  # ceil(7 / 3)
    assert "about to end" in rescale_plan([0], 1, 2, 1)
    assert "1 or more" in rescale_plan([0], 100, 0, 1)
    assert rescale_plan([0, 2], 7, 3, 5).keep == [0, 2]


def test_a_refused_part_goes_to_a_new_replica_in_the_same_place():
    plan = rescale_plan([0, 1, 2], 90, 4, 3)  # members 0 1 2 3; replica 1's loop had just ended
    moved = replace_refused(plan, [1], next_id=4)
    assert moved.members == [0, 4, 2, 3]  # part 1 of 4 is now replica 4's
    assert moved.new == [3, 4] and moved.keep == [0, 2] and moved.share == plan.share == 23


def test_updates_left_after_a_rescale_follow_the_new_generation():
    plan = rescale_plan([0, 1], 100, 4, 2)  # 4 replicas, 25 steps each
    assert plan.updates_left(n_push=1) == 100
    assert plan.updates_left(n_push=10) == 3 * 4  # 10 + 10 + a partial 5


def row(replica: int, step: int, seconds: float = 1.0) -> dict:
    """A progress row of a replica that has done `step` steps in `seconds`."""
    return {"replica": replica, "step": step, "t_first": 100.0, "t_last": 100.0 + seconds}


def test_balance_shares_the_steps_left_by_speed_and_exactly():
    # replica 1 is three times as fast: it gets three quarters of what is left
    ends = balance([row(0, 10), row(1, 30)], 100)
    assert ends == {0: 10 + 25, 1: 30 + 75}
    ends = balance([row(0, 10), row(1, 10), row(2, 10)], 100)  # 33.3 each: one gets the extra step
    assert sorted(e - 10 for e in ends.values()) == [33, 33, 34] and sum(ends.values()) == 130


def test_balance_takes_a_replica_without_a_speed_at_the_others_mean():
    # replica 2 has not computed yet (a replacement starting): it counts as the mean of 0 and 1
    ends = balance([row(0, 10), row(1, 30), {"replica": 2, "step": 0, "t_first": None, "t_last": 5.0}], 120)
    assert ends == {0: 10 + 20, 1: 30 + 60, 2: 40}  # speeds 10, 30 and 20
    unknown = {"step": 0, "t_first": None, "t_last": 1.0}
    assert balance([{"replica": 4, **unknown}, {"replica": 7, **unknown}], 9) == {4: 5, 7: 4}


def test_balance_with_nothing_left_ends_every_replica_where_it_is():
    assert balance([row(0, 12), row(1, 40)], 0) == {0: 12, 1: 40}
    assert balance([row(0, 12), row(1, 40)], -3) == {0: 12, 1: 40}  # overshot: no one goes on
    assert balance([], 10) == {}
