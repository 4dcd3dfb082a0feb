"""Tests for ps/server/checkpoint.py: the file format, checkpoint sets and re-sharding (no Ray)."""

import hashlib
import pickle

import msgpack
import numpy as np
import pytest

from ps.driver.reshard import reshard
from ps.server.checkpoint import (
    FORMAT_VERSION,
    MAGIC,
    CheckpointError,
    ShardState,
    decode,
    encode,
    latest_set,
    latest_shard,
    list_sets,
    load_set,
    read_file,
    save_set,
    set_dir,
    shard_file,
    write_file,
)
from sharding import make_plan

SHAPES = [("w", (10, 7)), ("b", (7,))]


def make_state(shard=0, size=12, seed=0, step=3.0, version=5):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(size).astype(np.float32)
    values[:2] = [-0.0, np.nan]  # bit-exactness, not just equality
    return ShardState(
        shard=shard, version=version, incarnation=2, planned_updates=100, values=values,
        optim={"step": np.array(step, dtype=np.float32),
               "exp_avg": rng.standard_normal(size).astype(np.float32),
               "exp_avg_sq": rng.random(size).astype(np.float32),
               "mask": rng.random(size) > 0.5, "ids": np.arange(6, dtype=np.int64).reshape(2, 3)},
        counters={"tau_sum": 7, "tau_counts": {0: 3, 2: 2}, "rejected": {"stale": 1}},
        meta={"optimizer": {"name": "adam", "params": {"lr": 0.001, "betas": [0.9, 0.999]}}, "note": None})


def assert_same_array(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_state(a, b):
    assert (a.shard, a.version, a.incarnation, a.planned_updates) == \
           (b.shard, b.version, b.incarnation, b.planned_updates)
    assert_same_array(a.values, b.values)
    assert sorted(a.optim) == sorted(b.optim)
    for k in a.optim:
        assert_same_array(a.optim[k], b.optim[k])
    assert a.counters == b.counters and a.meta == b.meta


def envelope(fields=None, **overrides):
    """Hand-built file bytes with a correct checksum, for the error cases encode cannot produce."""
    body = msgpack.packb(fields, use_bin_type=True)
    env = {"format": MAGIC, "version": FORMAT_VERSION, "sha256": hashlib.sha256(body).hexdigest(),
           "body": body, **overrides}
    return msgpack.packb(env, use_bin_type=True)


def body_of(state):
    return msgpack.unpackb(msgpack.unpackb(encode(state))["body"], strict_map_key=False)


# ---- file format --------------------------------------------------------------------------------
def test_round_trip_is_bit_exact_with_key_types(tmp_path):
    state = make_state()
    back = decode(encode(state), "mem")
    assert_same_state(back, state)
    assert all(type(k) is int for k in back.counters["tau_counts"])
    assert all(type(k) is str for k in back.counters["rejected"])
    assert back.optim["step"].ndim == 0 and back.values.flags.writeable

    path = tmp_path / "shard-0.ckpt"
    write_file(path, state)
    assert_same_state(read_file(path), state)
    assert [p.name for p in tmp_path.iterdir()] == ["shard-0.ckpt"]  # no .tmp left behind


def test_numpy_scalar_counts_are_stored_as_plain_ints():
    state = make_state(version=np.int64(9))
    state.counters["tau_sum"] = np.int64(4)
    back = decode(encode(state), "mem")
    assert back.version == 9 and type(back.counters["tau_sum"]) is int


def test_corrupted_body_byte_fails_the_checksum():
    data = bytearray(encode(make_state()))
    data[-3] ^= 0xFF  # the body is the envelope's last field
    with pytest.raises(CheckpointError, match="mem: checksum mismatch"):
        decode(bytes(data), "mem")


def test_truncated_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "shard-0.ckpt"
    write_file(path, make_state())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated") as err:
        read_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_file(tmp_path / "nope.ckpt")


def test_object_dtype_is_refused_without_unpickling():
    fields = body_of(make_state())
    fields["optim"]["exp_avg"] = {"dtype": "object", "shape": [1], "data": pickle.dumps([object()])}
    with pytest.raises(CheckpointError, match="dtype 'object'"):
        decode(envelope(fields), "mem")
    with pytest.raises(CheckpointError, match="cannot save"):
        encode(ShardState(0, 0, 0, 0, np.array(["a"], dtype=object), {}))


@pytest.mark.parametrize("case, match", [
    ("not msgpack", "not readable as msgpack"),
    ("wrong magic", "not a downpour shard checkpoint"),
    ("future version", "format version 2 is not supported"),
    ("missing field", r"missing fields \['counters'\]"),
    ("size mismatch", "values has 8 bytes of data but shape"),
    ("bad int field", "version is 'x'"),
])
def test_decode_names_the_problem(case, match):
    fields = body_of(make_state())
    if case == "not msgpack":
        data = b"\xc1 not msgpack"
    elif case == "wrong magic":
        data = envelope(fields, format="something-else")
    elif case == "future version":
        data = envelope(fields, version=2)
    elif case == "missing field":
        del fields["counters"]
        data = envelope(fields)
    elif case == "size mismatch":
        fields["values"]["data"] = fields["values"]["data"][:8]
        data = envelope(fields)
    else:
        fields["version"] = "x"
        data = envelope(fields)
    with pytest.raises(CheckpointError, match=f"^shard.ckpt: .*{match}"):
        decode(data, "shard.ckpt")


# ---- checkpoint sets ----------------------------------------------------------------------------
def states_for(n, seed=0):
    return [make_state(shard=s, size=5 + s, seed=seed + s) for s in range(n)]


def test_save_set_keeps_only_the_last_k_and_crash_leftovers_newer_than_them(tmp_path):
    root = tmp_path / "checkpoints"
    set_dir(root, 3).mkdir(parents=True)  # an interrupted save, older than what follows
    for seq in range(4, 9):
        path = save_set(root, seq, states_for(2), {"step": seq}, keep=2)
        assert path == root / f"{seq:06d}"
    set_dir(root, 9).mkdir()  # a save in progress, newer than every complete set: not ours to delete
    save_set(root, 5, states_for(2), {}, keep=2)  # re-saving an old number never deletes it
    assert [seq for seq, _ in list_sets(root)] == [5, 7, 8, 9]
    states, job = load_set(root / "000008")
    assert job == {"step": 8, "shards": 2}
    for a, b in zip(states, states_for(2)):
        assert_same_state(a, b)


def test_save_set_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep is 0"):
        save_set(tmp_path, 1, states_for(1), {}, keep=0)
    with pytest.raises(ValueError, match="shard order"):
        save_set(tmp_path, 1, states_for(2)[::-1], {}, keep=1)
    with pytest.raises(ValueError, match="shards=3"):
        save_set(tmp_path, 1, states_for(2), {"shards": 3}, keep=1)


def test_latest_set_falls_back_when_the_newest_is_damaged(tmp_path):
    save_set(tmp_path, 1, states_for(2, seed=10), {}, keep=5)
    save_set(tmp_path, 2, states_for(2, seed=20), {}, keep=5)
    bad = shard_file(set_dir(tmp_path, 2), 1)
    data = bytearray(bad.read_bytes())
    data[-3] ^= 0xFF
    bad.write_bytes(bytes(data))
    warnings = []
    seq, path, states, job = latest_set(tmp_path, warnings.append)
    assert (seq, path, job) == (1, set_dir(tmp_path, 1), {"shards": 2})
    assert_same_state(states[1], states_for(2, seed=10)[1])
    assert len(warnings) == 1
    assert warnings[0].startswith("checkpoint 000002 is damaged (") and "checksum mismatch" in warnings[0]
    assert warnings[0].endswith(": using 000001")


def test_latest_set_skips_an_incomplete_set(tmp_path):
    assert latest_set(tmp_path / "none", print) is None
    save_set(tmp_path, 1, states_for(2), {}, keep=5)
    set_dir(tmp_path, 2).mkdir()
    write_file(shard_file(set_dir(tmp_path, 2), 0), make_state())
    warnings = []
    assert latest_set(tmp_path, warnings.append)[0] == 1
    assert warnings == ["checkpoint 000002 is incomplete (its save did not finish): using 000001"]


def test_latest_shard_uses_sets_being_written_and_skips_damage(tmp_path):
    save_set(tmp_path, 1, states_for(2, seed=10), {}, keep=5)
    set_dir(tmp_path, 2).mkdir()
    newer = make_state(shard=0, seed=99)
    write_file(shard_file(set_dir(tmp_path, 2), 0), newer)
    warnings = []
    seq, state = latest_shard(tmp_path, 0, warnings.append)
    assert seq == 2
    assert_same_state(state, newer)
    seq, state = latest_shard(tmp_path, 1, warnings.append)
    assert seq == 1 and warnings == []  # shard 1 is simply not written yet in set 2
    assert_same_state(state, states_for(2, seed=10)[1])

    shard_file(set_dir(tmp_path, 2), 0).write_bytes(b"junk")
    assert latest_shard(tmp_path, 0, warnings.append)[0] == 1
    assert len(warnings) == 1 and warnings[0].startswith("checkpoint 000002 is damaged")
    warnings.clear()
    assert latest_shard(tmp_path / "none", 0, warnings.append) is None and warnings == []


# ---- re-sharding --------------------------------------------------------------------------------
def sharded(plan, flat, moment, steps, versions):
    return [ShardState(shard=s, version=versions[s], incarnation=s, planned_updates=50 + s, values=v,
                       optim={"exp_avg": m, "step": np.array(steps[s], dtype=np.float32)},
                       counters={"tau_sum": 1, "tau_counts": {1: 1}, "rejected": {}},
                       meta={"optimizer": {"name": "adam"}, "shard_note": s})
            for s, (v, m) in enumerate(zip(plan.split(flat.copy()), plan.split(moment.copy())))]


def test_reshard_2_to_3_to_1_is_bit_exact():
    plans = {n: make_plan(SHAPES, n, "balanced") for n in (1, 2, 3)}
    rng = np.random.default_rng(7)
    flat = rng.standard_normal(77).astype(np.float32)
    moment = rng.standard_normal(77).astype(np.float32)
    states = sharded(plans[2], flat, moment, steps=[9.0, 11.0], versions=[40, 42])

    three = reshard(states, plans[2], plans[3])
    assert [s.shard for s in three] == [0, 1, 2]
    for s, (v, m) in enumerate(zip(plans[3].split(flat), plans[3].split(moment))):
        assert_same_array(three[s].values, v)
        assert_same_array(three[s].optim["exp_avg"], m)
    one = reshard(three, plans[3], plans[1])
    assert len(one) == 1
    assert_same_array(one[0].values, flat)
    assert_same_array(one[0].optim["exp_avg"], moment)


def test_reshard_takes_maxima_resets_counters_and_copies_meta():
    plans = [make_plan(SHAPES, n, "balanced") for n in (2, 3)]
    flat = np.zeros(77, dtype=np.float32)
    states = sharded(plans[0], flat, flat, steps=[9.0, 11.0], versions=[40, 42])
    new = reshard(states, *plans)
    for s in new:
        assert_same_array(s.optim["step"], np.array(11.0, dtype=np.float32))
        assert (s.version, s.incarnation, s.planned_updates) == (42, 1, 51)
        assert s.counters == {"tau_sum": 0, "tau_counts": {}, "rejected": {}}
        assert s.meta == {"optimizer": {"name": "adam"}, "shard_note": 0}
    new[0].meta["optimizer"]["name"] = "changed"
    assert new[1].meta["optimizer"]["name"] == "adam" == states[0].meta["optimizer"]["name"]


def test_reshard_onto_the_same_layout_returns_the_states():
    plan = make_plan(SHAPES, 2, "balanced")
    states = sharded(plan, np.ones(77, np.float32), np.ones(77, np.float32), [1, 1], [1, 1])
    assert reshard(states, plan, make_plan(SHAPES, 2, "balanced")) is states


@pytest.mark.parametrize("damage, match", [
    ("short values", r"values float32 \(\d+,\) but the old plan gives it float32"),
    ("short moment", r"optim\['exp_avg'\] float32 \(3,\)"),
    ("extra key", "every shard must use the same optimizer"),
    ("float64 values", "values float64"),
    ("missing shard", "has 1 shard states but the old plan has 2"),
    ("other model", "the model changed"),
])
def test_reshard_refuses_inconsistent_states(damage, match):
    old, new = make_plan(SHAPES, 2, "balanced"), make_plan(SHAPES, 3, "balanced")
    states = sharded(old, np.ones(77, np.float32), np.ones(77, np.float32), [1, 1], [1, 1])
    if damage == "short values":
        states[1].values = states[1].values[:-1]
    elif damage == "short moment":
        states[1].optim["exp_avg"] = states[1].optim["exp_avg"][:3]
    elif damage == "extra key":
        states[1].optim["sum"] = np.zeros_like(states[1].values)
    elif damage == "float64 values":
        states[0].values = states[0].values.astype(np.float64)
    elif damage == "missing shard":
        states = states[:1]
    else:
        new = make_plan([("w", (10, 8))], 3, "balanced")
    with pytest.raises(CheckpointError, match=match):
        reshard(states, old, new)
