"""ps.obs.report on a hand-built run directory whose numbers are worked out by hand below."""

import json
import re

import numpy as np
import pytest

from ps.common import schema
from ps.common.errors import UserError
from ps.obs import events, report

T0 = 1000.0
IMAGES = {"staleness.png", "staleness_by_replica.png", "evaluations.png", "spread.png",
          "throughput.png", "shards.png"}


def push(t, shard, replica, tau, accepted=True, reason=None):
    return schema.push_record(shard, T0 + t, replica, 10, 10 + tau, tau, 1.0 if accepted else 0.0,
                              accepted, reason, 1.0)


def hand_built_stream() -> list[dict]:
    """Shard 0 accepts taus 0,1,1,2,5: mean 1.80, nearest-rank p50 1 (3rd of 5), p90 = p99 = max 5.
    Shard 1 accepts 3,3 and rejects three pushes: 'stale' twice, 'nonfinite' once.
    All seven taus sorted 0,1,1,2,3,3,5: mean 15/7 = 2.14, p50 2 (4th of 7), p90 = p99 = max 5.
    Pushes to shard 0 by replica 0 at 1, 2, 3 s, by replica 1 at 2.5 and 6 s; 16 samples a push:
    replica 0 sends 48 samples, 2 x 16 / 2 s = 16.0 samples/s; replica 1 32 samples, 16 / 3.5 s = 4.6.
    Fetch spreads 0, 2, 1, 0: 4 fetches, 2 mixed (50.0%), max 2."""
    return [
        schema.fetch_record(T0 + 0.5, 0, [0, 0], 0.01),
        push(1.0, 0, 0, 0), push(1.5, 1, 0, 3), push(2.0, 0, 0, 1), push(2.5, 0, 1, 2),
        schema.fetch_record(T0 + 2.6, 1, [3, 1], 0.02),
        push(3.0, 0, 0, 1), push(3.5, 1, 1, 3),
        push(4.0, 1, 0, 9, accepted=False, reason="stale: tau 9 > 8"),
        push(5.0, 1, 1, 12, accepted=False, reason="stale: tau 12 > 8"),
        push(6.0, 0, 1, 5),
        push(7.0, 1, 0, -1, accepted=False, reason="nonfinite: gradient holds NaN"),
        schema.fetch_record(T0 + 7.5, 0, [6, 5], 0.03),
        schema.fetch_record(T0 + 8.0, 1, [5, 5], 0.04),
        {"kind": "scale", "t": T0 + 8.5, "replicas": 3},  # a kind this version does not know
        schema.eval_record(T0 + 10.0, 0.5, 1.25, [3, 1], 64),
        schema.eval_record(T0 + 20.0, 0.75, 0.5, [5, 2], -1),
    ]


def make_run(tmp_path, records, header_extra=None, summary=None, config=None):
    run = tmp_path / "run"
    run.mkdir()
    log = events.EventLog(run / schema.LOG_NAME)
    log.append([{**schema.header_record(T0, 2, 2, [100, 50]), **(header_extra or {})}])
    log.append(records)
    log.close()
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        (run / "config.yaml").write_text(config)
    return run


SUMMARY = {"status": "completed", "error": None, "dry_run": False, "model": "mlp",
           "dataset": "synthetic", "replicas": 2, "shards": 2, "test_accuracy": 0.75,
           "test_loss": 0.5, "samples_per_s": 123.4, "wall_time_s": 21.5, "train_time_s": 19.0,
           "train_samples": 640}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """Written once for the tests that only read it: drawing six figures takes a few seconds."""
    run = make_run(tmp_path_factory.mktemp("full"), hand_built_stream(),
                   {"batch_size": 8, "n_push": 2}, SUMMARY,
                   "model: mlp\nbatch_size: 8\nn_push: 2\nn_fetch: 1\nlr_rule: inverse\n")
    path = report.write_report(run)
    return path, path.read_text()


def test_the_report_goes_to_run_dir_report_by_default(full_report):
    path, _ = full_report
    assert path.name == "report.md" and path.parent.name == "report" and path.parent.parent.name == "run"


def test_the_run_table_comes_from_the_summary(full_report):
    _, text = full_report
    for row in ("| model | mlp |", "| status | completed |", "| test accuracy | 0.7500 |",
                "| samples/s | 123.4 |", "| wall time (s) | 21.5 |", "| replicas | 2 |"):
        assert row in text


def test_staleness_per_shard_matches_the_hand_worked_numbers(full_report):
    _, text = full_report
    assert "| shard | pushes | mean | p50 | p90 | p99 | max |" in text
    assert "| 0 | 5 | 1.80 | 1 | 5 | 5 | 5 |" in text
    assert "| 1 | 2 | 3.00 | 3 | 3 | 3 | 3 |" in text
    assert "| all | 7 | 2.14 | 2 | 5 | 5 | 5 |" in text


def test_fetch_spread_and_rejected_pushes_by_reason(full_report):
    _, text = full_report
    assert "| fetches | 4 |" in text
    assert "| with mixed shard versions | 2 (50.0%) |" in text
    assert "| max spread (versions) | 2 |" in text
    rejected = text.split("## Rejected pushes")[1].split("##")[0]
    assert "| stale | 2 |" in rejected and "| nonfinite | 1 |" in rejected


def test_throughput_per_replica_counts_samples_from_pushes_to_shard_0(full_report):
    _, text = full_report
    assert "| 0 | 3 | 48 | 1.0 | 3.0 | 16.0 |" in text
    assert "| 1 | 2 | 32 | 2.5 | 6.0 | 4.6 |" in text


def test_the_evaluations_table_lists_every_evaluation(full_report):
    _, text = full_report
    assert "| 10.0 | 64 | 4 | 0.5000 | 1.2500 |" in text
    assert "| 20.0 | final | 7 | 0.7500 | 0.5000 |" in text


def test_every_linked_image_exists_and_decodes(full_report):
    from PIL import Image
    path, text = full_report
    links = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    assert links == IMAGES
    for name in links:
        with Image.open(path.parent / name) as image:
            assert image.size == (1200, 450)
            assert np.asarray(image.convert("L")).std() > 0


def test_without_batch_size_in_the_header_the_config_gives_it(tmp_path):
    run = make_run(tmp_path, hand_built_stream(), config="batch_size: 4\nn_push: 4\n")
    text = report.write_report(run).read_text()
    assert "| 0 | 3 | 48 | 1.0 | 3.0 | 16.0 |" in text


def test_without_batch_size_anywhere_throughput_is_in_pushes(tmp_path):
    text = report.write_report(make_run(tmp_path, hand_built_stream())).read_text()
    assert "| replica | pushes | samples | first push (s) | last push (s) | pushes/s |" in text
    assert "| 0 | 3 | – | 1.0 | 3.0 | 1.0 |" in text


def test_a_crashed_run_without_evaluations_or_summary_still_gets_a_report(tmp_path):
    records = [r for r in hand_built_stream() if r["kind"] != "eval"]
    out = tmp_path / "elsewhere"
    path = report.write_report(make_run(tmp_path, records), out)
    text = path.read_text()
    assert path == out / "report.md"
    assert "No evaluations in this run." in text
    assert "status | unknown: no readable summary.json" in text
    assert (out / "evaluations.png").is_file()


def test_a_run_without_accepted_pushes_gets_a_report_without_staleness_figures(tmp_path):
    run = make_run(tmp_path, [push(1.0, 0, 0, 9, accepted=False, reason="stale: tau 9 > 8")])
    path = report.write_report(run)
    text = path.read_text()
    assert "No accepted pushes, so no staleness figures." in text
    assert "| 0 | 0 | – | – | – | – | – |" in text
    assert not (path.parent / "staleness.png").exists()
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (path.parent / name).is_file()


def test_a_missing_event_log_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no event log"):
        report.write_report(tmp_path)


@pytest.mark.parametrize("where", ["a_file/report", "a_file"])
def test_an_unusable_out_dir_is_a_user_error_naming_it(tmp_path, where):
    run = make_run(tmp_path, hand_built_stream())
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(UserError) as info:
        report.write_report(run, tmp_path / where)
    assert str(tmp_path / where) in str(info.value) and "choose another" in str(info.value)


def test_a_table_cell_with_a_bar_or_a_line_break_keeps_its_row():
    assert report.table(["reason", "pushes"], [["tau 9 | 8\nlate", 2], [None, 1]]) == [
        "| reason | pushes |", "|---|---|", "| tau 9 \\| 8 late | 2 |", "| – | 1 |"]
