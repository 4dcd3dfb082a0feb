"""The job's step accounting and rescale plans: pure arithmetic, exact."""

from ps.driver.budget import RescalePlan, StepBudget, replace_refused, rescale_plan


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
