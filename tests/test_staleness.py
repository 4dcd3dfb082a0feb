"""Staleness statistics and the event log, on hand-built streams with values worked out by hand."""

import warnings

import msgpack
import numpy as np
import pytest

from ps.common import schema
from ps.obs import events, staleness


def test_summary_of_a_hand_built_sample():
    # 10 values: sorted 0,0,1,1,1,2,2,3,5,9 -> mean 2.4; nearest-rank p50 = 5th = 1,
    # p90 = 9th = 5, p99 = 10th = 9
    stats = staleness.summarize([1, 0, 2, 9, 1, 3, 0, 5, 2, 1])
    assert stats == {"count": 10, "mean": 2.4, "p50": 1, "p90": 5, "p99": 9, "max": 9}


def test_summary_of_nothing_is_all_none():
    assert staleness.summarize([]) == {"count": 0, "mean": None, "p50": None, "p90": None,
                                       "p99": None, "max": None}


def test_histogram_counts_every_tau_including_gaps():
    assert staleness.histogram([0, 2, 2, 4]) == [(0, 1), (1, 0), (2, 2), (3, 0), (4, 1)]


def push(shard, replica, tau, accepted=True):
    return schema.push_record(shard, 0.0, replica, 0, tau, tau, 1.0, accepted, None, 1.0)


def test_taus_by_shard_and_replica_skip_rejected_pushes_and_other_records():
    records = [push(0, 1, 3), push(1, 1, 2), push(0, 2, 1), push(0, 2, 7, accepted=False),
               schema.fetch_record(0.0, 1, [3, 4], 0.01)]
    by_shard = staleness.taus_by(records, "shard")
    by_replica = staleness.taus_by(records, "replica")
    assert {k: v.tolist() for k, v in by_shard.items()} == {0: [3, 1], 1: [2]}
    assert {k: v.tolist() for k, v in by_replica.items()} == {1: [3, 2], 2: [1]}


def test_report_names_each_group_and_draws_bars():
    text = staleness.format_report({0: np.array([1, 1, 2]), 1: np.array([0])}, "shard")
    assert "shard 0: pushes 3  mean 1.33  p50 1  p90 2  p99 2  max 2" in text
    assert "tau    1         2  66.67% " + "#" * 40 in text
    assert "all shards: pushes 4" in text


def write_log(path, records):
    log = events.EventLog(path)
    log.append([schema.header_record(0.0, 2, 2, [10, 10])])
    log.append(records)
    log.close()


def test_log_round_trip(tmp_path):
    records = [push(0, 0, 1), schema.fetch_record(1.0, 0, [2, 5], 0.5),
               schema.eval_record(2.0, 0.9, 0.3, [5, 5], 100)]
    write_log(tmp_path / "log", records)
    read = list(events.read_events(tmp_path / "log"))
    assert read[0]["kind"] == "header" and read[1:] == records
    assert read[2]["spread"] == 3


def test_a_torn_last_record_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "log"
    write_log(path, [push(0, 0, 1), push(0, 1, 2)])
    with open(path, "ab") as f:
        f.write(msgpack.packb(push(1, 1, 5))[:-3])  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="torn"):
        read = list(events.read_events(path))
    assert [r.get("tau") for r in read[1:]] == [1, 2]


def test_other_schema_versions_are_refused(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(msgpack.packb({"kind": "header", "schema": 99}))
    with pytest.raises(events.LogError, match="schema 99"):
        list(events.read_events(path))


def test_a_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(events.LogError, match="no event log"):
        list(events.read_events(tmp_path / "nothing"))


def test_intact_log_reads_without_warnings(tmp_path):
    write_log(tmp_path / "log", [push(0, 0, 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(events.read_events(tmp_path / "log"))) == 2
