"""A run whose pushes were mostly rejected learned little: the verdict on the summary, pure."""

from ps.driver.summary import rejection_verdict


def summary(accepted: int, rejected: dict) -> dict:
    return {"staleness": {"count": accepted}, "rejected_pushes": sum(rejected.values()),
            "rejected_by_reason": rejected}


def test_most_pushes_rejected_fails_the_run_and_says_which_flag_to_change():
    fail, line = rejection_verdict(summary(14, {"overflow": 2372}), 0.5)
    assert fail and "2372 of 2386 pushes were rejected (2372 overflow)" in line
    assert "lower --lr" in line


def test_a_few_rejections_are_said_without_failing_and_none_say_nothing():
    fail, line = rejection_verdict(summary(80, {"stale": 20}), 0.5)
    assert not fail and "20 of 100 pushes were rejected (20 stale)" in line
    assert rejection_verdict(summary(95, {"stale": 5}), 0.5) == (False, None)
    assert rejection_verdict(summary(0, {}), 0.5) == (False, None)


def test_a_limit_of_one_never_fails():
    fail, line = rejection_verdict(summary(0, {"nonfinite": 500}), 1.0)
    assert not fail and "500 of 500" in line
