"""Tests for sharding/: plan coverage, split/assemble round trips, balance, errors, report text."""

import numpy as np
import pytest

from sharding import (
    STRATEGIES,
    Piece,
    PlanError,
    ShardPlan,
    TensorSpec,
    format_plan,
    make_plan,
)

CNN = [("conv1.weight", (32, 1, 3, 3)), ("conv1.bias", (32,)), ("conv2.weight", (64, 32, 3, 3)),
       ("conv2.bias", (64,)), ("fc1.weight", (128, 3136)), ("fc1.bias", (128,)),
       ("fc2.weight", (10, 128)), ("fc2.bias", (10,))]


def random_shapes(seed, max_dim=40):
    """1-6 tensors with 0-4 dims of size 1-max_dim, reproducible from the seed."""
    rng = np.random.default_rng(seed)
    return [(f"t{i}", tuple(int(d) for d in rng.integers(1, max_dim + 1, size=rng.integers(0, 5))))
            for i in range(rng.integers(1, 7))]


def total_of(shapes):
    return sum(int(np.prod(s)) for _, s in shapes)


def shard_counts(total):
    # One shard per element is covered for every total up to 5000, which includes every small-dims
    # model below; beyond that it only costs time (the dims-40 models reach 1.5M elements).
    return sorted(set(range(1, min(total, 9) + 1)) | ({total} if total <= 5000 else set()))


def random_cases():
    for seed in range(50):
        for shapes in (random_shapes(seed), random_shapes(seed, max_dim=5)):
            total = total_of(shapes)
            for n in shard_counts(total):
                yield seed, shapes, n


def imbalance(plan):
    sizes = [plan.shard_numel(i) for i in range(plan.num_shards)]
    return max(sizes) / (sum(sizes) / len(sizes))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_element_in_exactly_one_piece(strategy):
    checked = 0
    for seed, shapes, n in random_cases():
        plan = make_plan(shapes, n, strategy)
        total = total_of(shapes)
        assert plan.total == total and plan.num_shards == n
        hits = np.zeros(total, dtype=int)
        for pieces in plan.shards:
            assert pieces, f"seed {seed}, {n} shards: empty shard"
            assert [p.start for p in pieces] == sorted(p.start for p in pieces)
            for p in pieces:
                assert 0 <= p.start < p.stop <= total
                hits[p.start:p.stop] += 1
        assert np.all(hits == 1), f"seed {seed}, {n} shards"
        checked += 1
    assert checked > 300  # the generator really produced many cases


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_split_assemble_round_trip_and_views(strategy):
    rng = np.random.default_rng(1234)
    flat = None
    for seed, shapes, n in random_cases():
        plan = make_plan(shapes, n, strategy)
        if flat is None or flat.size != plan.total:  # cases come grouped by model; reuse its values
            flat = rng.standard_normal(plan.total).astype(np.float32)
        parts = plan.split(flat)
        assert [p.size for p in parts] == [plan.shard_numel(i) for i in range(n)]
        for pieces, part in zip(plan.shards, parts):
            if len(pieces) == 1:
                assert np.shares_memory(part, flat)
        out = np.full(plan.total, np.nan, dtype=np.float32)
        assert plan.assemble([p.copy() for p in parts], out) is out
        assert np.array_equal(out, flat), f"seed {seed}, {n} shards"


def test_assemble_shard_one_at_a_time_in_any_order():
    plan = make_plan(CNN, 4, "balanced")
    flat = np.arange(plan.total, dtype=np.float64)
    parts = plan.split(flat)
    out = np.zeros_like(flat)
    for shard in (2, 0, 3, 1):
        plan.assemble_shard(shard, parts[shard], out)
    assert np.array_equal(out, flat)


def test_range_sizes_differ_by_at_most_one_and_match_array_split():
    for _, shapes, n in random_cases():
        plan = make_plan(shapes, n, "range")
        sizes = [plan.shard_numel(i) for i in range(n)]
        assert max(sizes) - min(sizes) <= 1
        assert sizes == [len(a) for a in np.array_split(np.arange(plan.total), n)]
        assert all(len(pieces) == 1 for pieces in plan.shards)


@pytest.mark.parametrize("n", [2, 4])
def test_balanced_cnn_is_even_and_cuts_fc1_on_rows(n):
    plan = make_plan(CNN, n, "balanced")
    assert imbalance(plan) <= 1.05
    fc1_row = 3136
    fc1_ranges = [(lo, hi) for i in range(n) for name, lo, hi in plan.shard_tensors(i) if name == "fc1.weight"]
    assert len(fc1_ranges) >= 2  # fc1.weight is bigger than a fair share, so it must be cut
    assert all(lo % fc1_row == 0 and hi % fc1_row == 0 for lo, hi in fc1_ranges)
    assert sum(hi - lo for lo, hi in fc1_ranges) == 128 * fc1_row  # all of it, once


def test_balanced_cuts_per_element_when_one_row_exceeds_fair_share():
    plan = make_plan([("w", (2, 10))], 3, "balanced")  # fair = 7 < row of 10
    assert [plan.shard_numel(i) for i in range(3)] == [7, 7, 6]


def test_balanced_fills_shards_left_empty_by_greedy_placement():
    plan = make_plan([("a", (2,)), ("b", (2,)), ("c", (2,))], 4, "balanced")  # 3 pieces, 4 shards
    assert all(plan.shard_numel(i) >= 1 for i in range(4))
    assert sum(plan.shard_numel(i) for i in range(4)) == 6


def test_balanced_fills_many_empty_shards():
    shapes = [(f"t{i}", (2,)) for i in range(201)]  # fair = 2, so 201 pieces for 300 shards
    plan = make_plan(shapes, 300, "balanced")
    assert plan.num_shards == 300
    assert sorted(plan.shard_numel(i) for i in range(300)) == [1] * 198 + [2] * 102


def test_balanced_merges_touching_pieces():
    plan = make_plan([("a", (3,)), ("b", (3,))], 1, "balanced")
    assert plan.shards == ((Piece(0, 6),),)


@pytest.mark.parametrize("shapes, n, strategy, field", [
    (CNN, 0, "balanced", "shards"),
    (CNN, -3, "range", "shards"),
    ([("a", (2, 2))], 5, "balanced", "shards"),
    ([("a", (2, 2))], 2.0, "balanced", "shards"),
    (CNN, 2, "round-robin", "sharding"),
    ([], 1, "balanced", "model"),
    ([("a", (0, 3))], 1, "range", "model"),
    ([("a", (2,)), ("a", (3,))], 1, "balanced", "unique"),
])
def test_bad_input_raises_plan_error_naming_the_field(shapes, n, strategy, field):
    with pytest.raises(PlanError) as err:
        make_plan(shapes, n, strategy)
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


def test_too_many_shards_message_names_both_numbers():
    with pytest.raises(PlanError, match=r"shards is 5 .* only 4 .*--shards to at most 4"):
        make_plan([("a", (2, 2))], 5)


def test_unknown_strategy_lists_allowed_names():
    with pytest.raises(PlanError, match=r"--sharding to one of balanced, range"):
        make_plan(CNN, 2, "random")


def test_split_and_assemble_reject_wrong_sizes():
    plan = make_plan(CNN, 2, "balanced")
    with pytest.raises(ValueError, match="length"):
        plan.split(np.zeros(plan.total - 1))
    parts = plan.split(np.zeros(plan.total))
    out = np.zeros(plan.total)
    with pytest.raises(ValueError, match="1 parts"):
        plan.assemble(parts[:1], out)
    with pytest.raises(ValueError, match="shard 1"):
        plan.assemble([parts[0], parts[1][:-1]], out)


def test_hand_built_plan_with_a_gap_is_refused():
    tensors = (TensorSpec("w", (4,), 0),)
    with pytest.raises(PlanError, match="gap"):
        ShardPlan("range", tensors, ((Piece(0, 1),), (Piece(2, 4),)))


def test_zero_size_tensor_is_kept_but_owns_nothing():
    plan = make_plan([("a", (3,)), ("empty", (0, 5)), ("b", ())], 2, "balanced")
    assert plan.tensors[1].numel == 0 and plan.tensors[2].numel == 1
    assert all(name != "empty" for i in range(2) for name, _, _ in plan.shard_tensors(i))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_make_plan_is_deterministic(strategy):
    for seed in range(10):
        shapes = random_shapes(seed)
        n = min(total_of(shapes), 5)
        assert make_plan(shapes, n, strategy) == make_plan(list(shapes), n, strategy)
    assert make_plan(CNN, 4, strategy) == make_plan(CNN, 4, strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_format_plan_mentions_every_shard_and_imbalance(strategy):
    plan = make_plan(CNN, 4, strategy)
    text = format_plan(plan)
    rows = [line.split() for line in text.splitlines()]
    assert [int(r[0]) for r in rows if r and r[0].isdigit()] == [0, 1, 2, 3]
    assert "fc1.weight" in text
    last = text.splitlines()[-1]
    assert last.startswith("imbalance max/mean ")
    assert float(last.split()[-1]) == pytest.approx(imbalance(plan), abs=1e-3)


def test_format_plan_shows_row_ranges_for_cut_tensors():
    text = format_plan(make_plan(CNN, 2, "balanced"))
    assert "fc1.weight[rows 0:67 of 128]" in text
    assert "fc1.weight[rows 67:128 of 128]" in text
