"""The live view (`downpour top`, progress, TensorBoard) on hand-built event streams, and the
`staleness` options, with values worked out by hand. No Ray."""

import json

import pytest

from ps import cli
from ps.common import schema
from ps.common.errors import UserError
from ps.obs import events, staleness
from ps.obs.live import LiveStats, render

HEADER = schema.header_record(100.0, 2, 2, [10, 10], model="mlp", batch_size=32, n_fetch=1, n_push=1)


def push(shard, replica, t, applied, tau, accepted=True):
    return schema.push_record(shard, t, replica, applied - tau, applied, tau, 1.0, accepted,
                              None if accepted else "nonfinite: NaN", 1.0)


def test_snapshot_of_a_hand_built_stream():
    live = LiveStats(HEADER, window_s=10.0)
    # shard 0: 4 accepted pushes in the window (tau 1, 1, 2, 5), one old one before it, one rejected
    live.ingest([push(0, 0, 101.0, 0, 0),
                 push(0, 0, 112.0, 1, 1), push(0, 1, 113.0, 2, 1), push(0, 0, 114.0, 3, 2),
                 push(0, 1, 120.0, 4, 5), push(0, 1, 120.0, 5, 9, accepted=False),
                 push(1, 0, 115.0, 0, 0), schema.fetch_record(119.0, 1, [5, 1], 0.01),
                 schema.eval_record(119.5, 0.75, 0.6, [4, 1], 256)])
    snap = live.snapshot()
    assert snap["elapsed_s"] == 20.0 and snap["window_s"] == 10.0  # newest event at t=120
    s0, s1 = snap["shards"]
    assert (s0["version"], s0["rejected"], s0["tau_p50"], s0["tau_p99"]) == (5, 1, 1, 5)
    assert s0["pushes_per_s"] == pytest.approx(0.4)  # 4 pushes in (110, 120]
    assert (s1["version"], s1["tau_p50"]) == (1, 0)
    # replica 0 sent 2 pushes to shard 0 in the window, replica 1 sent 2: 2 x 32 samples / 10 s
    assert [(r["replica"], r["rate"], r["last_spread"]) for r in snap["replicas"]] == [
        (0, pytest.approx(6.4), None), (1, pytest.approx(6.4), 4)]
    assert snap["rate_unit"] == "samples/s" and snap["rate"] == pytest.approx(12.8)
    assert snap["tau"]["p50"] == 1 and snap["tau"]["max"] == 5  # window taus 1,1,2,5,0
    assert snap["eval"] == {"accuracy": 0.75, "loss": 0.6}


def test_a_young_run_divides_by_its_age_not_the_window():
    live = LiveStats(HEADER, window_s=10.0)
    live.ingest([push(0, 0, 102.0, 0, 0), push(0, 0, 104.0, 1, 0)])
    assert live.snapshot()["shards"][0]["pushes_per_s"] == pytest.approx(0.5)  # 2 pushes in 4 s


def test_an_old_log_without_batch_sizes_reports_pushes_per_second():
    live = LiveStats(schema.header_record(0.0, 1, 1, [10]), window_s=10.0)
    live.ingest([push(0, 0, 5.0, 0, 0), push(0, 0, 10.0, 1, 0)])
    snap = live.snapshot()
    assert snap["rate_unit"] == "pushes/s" and snap["rate"] == pytest.approx(0.2)


def test_render_shows_every_shard_and_replica():
    live = LiveStats(HEADER)
    live.ingest([push(0, 0, 101.0, 0, 0), push(1, 1, 101.0, 0, 0)])
    frame = render(live.snapshot(), "title")
    assert frame.startswith("title")
    assert "    0         1" in frame and "    1         1" in frame
    assert "accuracy -" in frame


def write_run(path, records, summary=None):
    path.mkdir()
    log = events.EventLog(path / schema.LOG_NAME)
    log.append([HEADER, *records])
    log.close()
    if summary:
        (path / "summary.json").write_text(json.dumps(summary))


def test_top_on_a_finished_run_draws_one_frame_and_exits(tmp_path, capsys):
    write_run(tmp_path / "run", [push(0, 0, 101.0, 0, 0), push(0, 0, 102.0, 1, 1)],
              {"status": "completed"})
    assert cli.main(["top", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "[completed]" in out and out.count("downpour top") == 1


def test_top_follows_a_torn_last_record(tmp_path, capsys):
    write_run(tmp_path / "run", [push(0, 0, 101.0, 0, 0)], {"status": "failed"})
    with open(tmp_path / "run" / schema.LOG_NAME, "ab") as f:
        f.write(events.msgpack.packb(push(0, 0, 102.0, 1, 0))[:7])  # half a record
    assert cli.main(["top", str(tmp_path / "run")]) == 0
    assert "[failed]" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["top", "nowhere"], "does not exist"),
    (["top", "x", "--address", "auto"], "not both"),
    (["top", "--run", "a"], "--address"),
    (["top", "--interval", "0"], "--interval"),
    (["top", "--frames", "0"], "--frames"),
])
def test_top_bad_input_exits_2(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_window_and_percentiles(tmp_path, capsys):
    write_run(tmp_path / "run", [push(0, 0, 101.0, 0, 0), push(0, 0, 105.0, 1, 1),
                                 push(0, 1, 106.0, 2, 2), push(0, 1, 130.0, 3, 3)])
    assert cli.main(["staleness", str(tmp_path / "run"), "--window", "5:10",
                     "--percentiles", "50,100"]) == 0
    out = capsys.readouterr().out
    assert "between 5 s and 10 s" in out
    assert "all shards: pushes 2  mean 1.50  p50 1  p100 2  max 2" in out


@pytest.mark.parametrize("argv, message", [
    (["--window", "50:60"], "no accepted pushes in that span"),
    (["--window", "10"], "START:END"),
    (["--window", "9:3"], "START below END"),
    (["--percentiles", "50,101"], "(0, 100]"),
    (["--percentiles", "p50"], "(0, 100]"),
])
def test_staleness_bad_options_exit_2(tmp_path, argv, message, capsys):
    write_run(tmp_path / "run", [push(0, 0, 101.0, 0, 0)])
    assert cli.main(["staleness", str(tmp_path / "run"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_parse_window_allows_open_ends():
    assert staleness.parse_window("60:") == (60.0, None)
    assert staleness.parse_window(":1.5") == (None, 1.5)
    with pytest.raises(UserError):
        staleness.parse_window("a:b")


def test_long_tails_share_histogram_rows():
    rows = staleness.binned([(tau, 1) for tau in range(70)], max_rows=32)
    assert rows[0] == ("0..2", 3) and rows[-1] == ("69", 1)
    assert len(rows) <= 32 and sum(n for _, n in rows) == 70
    assert staleness.binned([(0, 4), (1, 2)]) == [("0", 4), ("1", 2)]


def rich_run(tmp_path):
    records = [push(s, r, 100.0 + i, i, i % 4) for i in range(40) for s in (0, 1) for r in (0, 1)]
    records += [schema.fetch_record(110.0, 0, [3, 2], 0.01), schema.eval_record(130.0, 0.8, 0.5, [9, 9], 64)]
    write_run(tmp_path / "run", records, {"status": "completed"})
    return tmp_path / "run"


def test_staleness_png_through_the_cli(tmp_path, capsys):
    from PIL import Image

    run = rich_run(tmp_path)
    assert cli.main(["staleness", str(run), "--png", str(tmp_path / "tau.png")]) == 0
    assert f"wrote {tmp_path / 'tau.png'}" in capsys.readouterr().out
    with Image.open(tmp_path / "tau.png") as image:
        assert image.size == (1200, 450)


def test_staleness_png_to_an_unwritable_place_exits_2(tmp_path, capsys):
    run = rich_run(tmp_path)
    target = tmp_path / "no" / "such" / "dir" / "tau.png"
    assert cli.main(["staleness", str(run), "--png", str(target)]) == 2
    assert str(target) in capsys.readouterr().err


def test_report_through_the_cli(tmp_path, capsys):
    run = rich_run(tmp_path)
    assert cli.main(["report", str(run)]) == 0
    assert f"wrote {run / 'report' / 'report.md'}" in capsys.readouterr().out
    assert (run / "report" / "staleness.png").is_file()


def test_plots_without_matplotlib_exit_2_naming_the_extra(tmp_path, monkeypatch, capsys):
    run = rich_run(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert cli.main(["report", str(run)]) == 2
    assert "downpour[plot]" in capsys.readouterr().err


def test_a_log_of_another_schema_exits_2(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    header = {**HEADER, "schema": schema.SCHEMA_VERSION + 1}
    (tmp_path / "run" / schema.LOG_NAME).write_bytes(events.msgpack.packb(header))
    for command in ("staleness", "report", "top"):
        assert cli.main([command, str(tmp_path / "run")]) == 2
        assert "schema" in capsys.readouterr().err
