"""The readers on a log with faults, restarts, restores, fenced pushes, checkpoints and a resume that
re-shards 2 -> 3: the live view, `top`, the report, staleness and the figures. No Ray."""

from pathlib import Path

import pytest

from ps import cli
from ps.common import schema
from ps.obs import events, faults, plots, records, report, staleness
from ps.obs.live import LiveStats, render

T0 = 1000.0
HEADER = schema.header_record(T0, 2, 2, [100, 50], model="mlp", batch_size=8, n_fetch=1, n_push=1)
FENCED = "fenced: computed on incarnation 0, shard is incarnation 1"
DIED = "ActorDiedError: The actor died unexpectedly before finishing this task."


def push(t, shard, replica, applied, tau, accepted=True, reason=None):
    return schema.push_record(shard, T0 + t, replica, applied - tau if tau >= 0 else 0, applied, tau,
                              1.0 if accepted else 0.0, accepted, reason, 1.0)


def faulty_stream() -> list[dict]:
    """Shard 1 reaches version 9, is lost at 7 s and restored at version 6 from checkpoint #1
    (3 updates lost); two pushes computed on its old incarnation are fenced. Replica 1 dies at 5 s
    and is replaced by replica 2. Checkpoints #0..#2; the run is resumed at 20 s from #2 on three
    shards, and shard 2 takes accepted pushes with tau 0, 1, 2."""
    before = [push(1.0 + i / 10, s, i % 2, i, i % 2) for i in range(9) for s in (0, 1)]
    return [
        *before,  # shards 0 and 1 at version 9
        schema.checkpoint_record(T0 + 2.0, 0, [2, 2], "checkpoints/0"),
        schema.fault_record(T0 + 5.0, "replica", 1, "injected", DIED),
        schema.restart_record(T0 + 5.5, 1, 2, 3, 7, 1),
        schema.checkpoint_record(T0 + 6.0, 1, [6, 6], "checkpoints/1"),
        schema.fault_record(T0 + 7.0, "shard", 1, "died", DIED),
        schema.restore_record(T0 + 7.5, 1, 1, 1, 6, 3),
        push(8.0, 1, 0, 6, -1, accepted=False, reason=FENCED),
        push(8.1, 1, 2, 6, -1, accepted=False, reason=FENCED),
        push(8.2, 1, 2, 6, 0), push(8.3, 0, 2, 9, 1),  # shard 1 at 7, shard 0 at 10
        schema.checkpoint_record(T0 + 9.0, 2, [10, 7], "checkpoints/2"),
        {"kind": "someday", "t": T0 + 10.0},  # a kind this version does not know
        schema.resume_record(T0 + 20.0, 2, [10, 7], 2, 3, [50, 50, 50], 20),
        push(21.0, 0, 0, 0, 0), push(21.0, 1, 0, 0, 0), push(21.0, 2, 0, 0, 0),
        push(22.0, 2, 2, 1, 1), push(23.0, 2, 0, 2, 2),
    ]


def write_run(path: Path, stream: list[dict]) -> Path:
    path.mkdir()
    log = events.EventLog(path / schema.LOG_NAME)
    log.append([HEADER])
    log.append(stream)
    log.close()
    return path


@pytest.fixture
def logged(tmp_path) -> list[dict]:
    """The stream as the job writes it, read back."""
    run = write_run(tmp_path / "run", faulty_stream())
    return list(events.read_events(run / schema.LOG_NAME))


def live_of(stream: list[dict]) -> LiveStats:
    live = LiveStats(HEADER, window_s=100.0)
    live.ingest(stream)
    return live


def test_the_snapshot_counts_faults_fenced_pushes_and_checkpoints(logged):
    faults = live_of(logged[1:]).snapshot()["faults"]
    assert faults == {"count": 2, "restarts": 1, "restores": 1, "lost_updates": 3, "fenced": 2,
                      "checkpoints": 3, "resumes": 1,
                      "last_checkpoint": {"seq": 2, "versions": [10, 7]}}


def test_a_restore_sets_the_shard_back_to_its_checkpoint_version():
    stream = faulty_stream()
    upto_restore = stream[:stream.index(next(r for r in stream if r["kind"] == "restore")) + 1]
    assert [row["version"] for row in live_of(upto_restore).snapshot()["shards"]] == [9, 6]
    fenced_then_one = stream[:stream.index(next(r for r in stream if r["kind"] == "checkpoint"
                                                 and r["seq"] == 2))]
    assert [row["version"] for row in live_of(fenced_then_one).snapshot()["shards"]] == [10, 7]


def test_after_a_resume_the_shard_table_is_the_new_jobs_three_shards():
    rows = live_of(faulty_stream()).snapshot()["shards"]
    # the resumed job's shards are new actors: versions from their pushes, rejections counted anew
    assert [(r["shard"], r["version"], r["rejected"]) for r in rows] == [(0, 1, 0), (1, 1, 0), (2, 3, 0)]
    assert rows[2]["tau_p99"] == 2


def test_a_resume_without_a_re_shard_starts_at_the_checkpoint_versions():
    live = live_of([schema.resume_record(T0 + 1.0, 4, [30, 28], 2, 2, [100, 50], 40)])
    assert [r["version"] for r in live.snapshot()["shards"]] == [30, 28]


def test_top_shows_a_faults_line():
    frame = render(live_of(faulty_stream()).snapshot(), "title")
    assert ("faults: 1 replica restart, 1 shard restore (3 updates lost), 2 fenced pushes"
            " · checkpoints: 3 (last #2 at v[10, 7]) · resumed: 1x") in frame.splitlines()


def test_a_fault_not_yet_answered_is_named_and_a_quiet_run_has_no_faults_line():
    live = live_of([schema.fault_record(T0 + 1.0, "shard", 0, "died", DIED)])
    assert "faults: 1 fault not recovered" in render(live.snapshot(), "title")
    quiet = live_of([push(1.0, 0, 0, 0, 0)]).snapshot()
    assert quiet["faults"] is None and "faults" not in render(quiet, "title")


def test_an_older_snapshot_without_the_faults_key_still_renders():
    snap = live_of([push(1.0, 0, 0, 0, 0)]).snapshot()
    del snap["faults"]
    assert render(snap, "title").startswith("title")


def test_top_on_a_run_dir_draws_the_faults_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", faulty_stream())
    (run / "summary.json").write_text('{"status": "completed"}')
    assert cli.main(["top", str(run)]) == 0
    assert "faults: 1 replica restart, 1 shard restore (3 updates lost)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def faulty_report(tmp_path_factory) -> str:
    """Written once: drawing the figures takes a few seconds."""
    run = write_run(tmp_path_factory.mktemp("faults") / "run", faulty_stream())
    return report.write_report(run).read_text()


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n")[1].split("\n## ")[0]


def test_the_report_lists_every_fault_and_what_followed(faulty_report):
    faults = section(faulty_report, "Faults and checkpoints")
    assert "| time (s) | actor | cause | detail | followed by |" in faults
    assert (f"| 5.0 | replica 1 | injected | {DIED} | "
            "restarted as replica 2: 3 steps done, 7 owed |") in faults
    assert (f"| 7.0 | shard 1 | died | {DIED} | "
            "restored as incarnation 1 from checkpoint #1 at version 6: 3 updates lost |") in faults


def test_the_report_counts_fenced_pushes_checkpoints_and_resumes(faulty_report):
    faults = section(faulty_report, "Faults and checkpoints")
    assert "| fenced pushes (computed on an older shard incarnation) | 2 (shard 1: 2) |" in faults
    assert "| updates lost in shard restores | 3 |" in faults
    assert "| checkpoints | 3 (last #2 at [10, 7], in checkpoints/2) |" in faults
    assert "| resumed at (s) | checkpoint | versions | replicas | shards | steps done |" in faults
    assert "| 20.0 | #2 | [10, 7] | 2 | 3 | 20 |" in faults
    assert "| fenced | 2 |" in section(faulty_report, "Rejected pushes")


def test_the_report_gives_the_re_sharded_shard_its_rows(faulty_report):
    # shard 2: accepted taus 0, 1, 2 (mean 1.00, nearest-rank p50 1); 50 elements, last version 3
    assert "| 2 | 3 | 1.00 | 1 | 2 | 2 | 2 |" in section(faulty_report, "Staleness")
    assert "| 2 | 50 | 3 | 0 | 3 |" in section(faulty_report, "Shards")
    assert "| shards | 3 |" in section(faulty_report, "Run")  # the resumed job's


def test_a_report_without_faults_has_no_faults_section(tmp_path):
    run = write_run(tmp_path / "run", [push(1.0, 0, 0, 0, 0), push(1.0, 1, 0, 0, 0)])
    assert "Faults and checkpoints" not in report.write_report(run).read_text()


def test_staleness_counts_the_post_resume_pushes_to_shard_2(logged):
    by_shard = staleness.taus_by(logged, "shard")
    assert sorted(by_shard) == [0, 1, 2] and by_shard[2].tolist() == [0, 1, 2]
    assert -1 not in by_shard[1]  # the fenced pushes' undefined tau
    assert "shard 2: pushes 3  mean 1.00" in staleness.format_report(by_shard, "shard")


def test_an_accepted_push_with_an_undefined_tau_is_not_counted():
    assert staleness.taus_by([push(1.0, 0, 0, 5, -1), push(2.0, 0, 0, 5, 1)], "shard")[0].tolist() == [1]


def test_the_staleness_command_on_a_re_sharded_run(tmp_path, capsys):
    run = write_run(tmp_path / "run", faulty_stream())
    assert cli.main(["staleness", str(run)]) == 0
    assert "shard 2: pushes 3" in capsys.readouterr().out


def test_layouts_take_each_shards_size_from_the_latest_layout_naming_it():
    stream = [HEADER, schema.resume_record(T0 + 1, 0, [1, 1], 2, 3, [40, 40, 70], 2),
              schema.resume_record(T0 + 2, 1, [2, 2, 2], 4, 2, [75, 75], 4)]
    assert records.shard_count(stream) == 3 and records.replica_count(stream) == 4
    assert records.shard_sizes(stream) == [75, 75, 70]  # id 2 from the 3-shard layout


def test_faults_are_marked_on_the_staleness_over_time_plot(logged, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or Path(path))
    plots.staleness_png(logged, "shard", tmp_path / "s.png")
    import matplotlib.pyplot as pyplot
    try:
        heat_rows = [ax for ax in figures[0].axes if ax.get_ylabel().startswith("shard")]
        assert len(heat_rows) == 3
        for ax in heat_rows:
            vertical = sorted(line.get_xdata()[0] for line in ax.get_lines()
                              if line.get_linestyle() == ":")
            assert vertical == [5.0, 7.0]
    finally:
        pyplot.close(figures[0])


def test_each_fault_is_answered_by_the_next_restart_or_restore_of_the_same_actor():
    stream = [schema.fault_record(T0 + 1, "replica", 0, "died", "x"),
              schema.fault_record(T0 + 2, "shard", 0, "died", "y"),
              schema.restore_record(T0 + 3, 0, 1, None, 0, 4),
              schema.restart_record(T0 + 4, 0, 2, 5, 5, 1),
              schema.restart_record(T0 + 5, 1, 3, 6, 4, 2),  # no fault record announced it
              schema.fault_record(T0 + 6, "replica", 2, "injected", "z")]
    assert [row[1:3] + row[4:] for row in faults.fault_rows(stream, T0)] == [
        ["replica 0", "died", "restarted as replica 2: 5 steps done, 5 owed"],
        ["shard 0", "died", "restored as incarnation 1 from the initial parameters at version 0: "
                            "4 updates lost"],
        ["replica 1", "no fault record", "restarted as replica 3: 6 steps done, 4 owed"],
        ["replica 2", "injected", "no restart or restore recorded"]]


def test_top_follows_a_resumed_run_whose_summary_is_the_previous_sessions(tmp_path, capsys):
    import io
    import time

    from ps.obs.top import watch_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "interrupted"}')  # the first session's
    now = time.time()
    log = events.EventLog(run / schema.LOG_NAME)
    log.append([{**HEADER, "t": now - 60}, schema.resume_record(now + 1, 0, [9, 9], 2, 2, [100, 50], 9)])
    log.close()
    out = io.StringIO()
    assert watch_run_dir(run, 0.0, 3, out) == 0
    assert out.getvalue().count("[running]") == 3  # not ended by the old summary
