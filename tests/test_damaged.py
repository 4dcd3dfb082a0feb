"""Damaged run directories: every reader says what it could read in one line, none a traceback.

A log that ends early (torn or corrupt tail) is a warning and status 0; a log or summary nothing
can be read from is one `downpour: error:` line and status 2. No Ray: the runs are built by hand.
"""

import json
import os
import random

import msgpack
import pytest

from ps.cli import main
from ps.common import rundir, schema
from ps.common.errors import UserError
from ps.obs import events

PUSHES = 20
READERS = ("staleness", "report", "top")
EMPTY = "is empty: the run stopped before its actors started"


def push(i: int) -> dict:
    return schema.push_record(i % 2, 1.0 + i, i % 2, i, i + 1, 1, 1.0, True, None, 0.5)


def make_run(tmp_path, summary="{\"status\": \"completed\"}\n"):
    """A finished run of PUSHES accepted pushes (tau 1), two shards and two replicas."""
    run = tmp_path / "run"
    run.mkdir()
    log = events.EventLog(run / schema.LOG_NAME)
    log.append([schema.header_record(0.0, 2, 2, [10, 10], batch_size=4, n_push=1)])
    log.append([push(i) for i in range(PUSHES)])
    log.close()
    if summary is not None:
        (run / rundir.SUMMARY_NAME).write_text(summary)
    return run


def cli(capsys, command: str, run) -> tuple[int, str, list[str]]:
    argv = [command, str(run)] + (["--interval", "0.01"] if command == "top" else [])
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err.splitlines()


def assert_output(command: str, out: str, pushes: int) -> None:
    """The command still did its job, on the pushes that could be read."""
    if command == "staleness":
        assert f"all shards: pushes {pushes} " in out
    elif command == "report":
        assert out.startswith("wrote ") and out.strip().endswith("report.md")
    else:
        assert "downpour top  run  [completed]" in out


def log_of(run):
    return run / schema.LOG_NAME


# --- a log that ends early: a warning line, the output, status 0 ------------------------------------

@pytest.mark.parametrize("command", READERS)
def test_a_torn_log_is_read_up_to_the_tear_with_one_warning_line(tmp_path, capsys, command):
    run = make_run(tmp_path)
    data = log_of(run).read_bytes()
    log_of(run).write_bytes(data[:-5])  # a crash 5 bytes before the end of the last push
    skipped = len(msgpack.packb(push(PUSHES - 1))) - 5
    rc, out, err = cli(capsys, command, run)
    assert rc == 0
    assert err == [f"downpour: warning: {log_of(run)} ends early: read {PUSHES} records, then skipped "
                   f"the last {skipped} bytes (a torn record, as a crash mid-write leaves); "
                   f"the results cover those {PUSHES} records only"]
    assert_output(command, out, PUSHES - 1)


@pytest.mark.parametrize("garbage", [b"\xc1\xc1garbage", b"\x01\x02\x03"], ids=["undecodable", "not-maps"])
@pytest.mark.parametrize("command", READERS)
def test_a_corrupt_tail_is_skipped_with_one_warning_line(tmp_path, capsys, command, garbage):
    run = make_run(tmp_path)
    with open(log_of(run), "ab") as f:
        f.write(garbage)
    rc, out, err = cli(capsys, command, run)
    assert rc == 0
    assert err == [f"downpour: warning: {log_of(run)} ends early: read {PUSHES + 1} records, then "
                   f"skipped the last {len(garbage)} bytes (not a valid record: the file is corrupt); "
                   f"the results cover those {PUSHES + 1} records only"]
    assert_output(command, out, PUSHES)


def test_the_report_itself_says_its_log_ends_early(tmp_path, capsys):
    run = make_run(tmp_path)
    log_of(run).write_bytes(log_of(run).read_bytes()[:-5])
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    text = (run / "report" / "report.md").read_text()
    assert f"**Warning:** {log_of(run)} ends early: read {PUSHES} records" in text
    assert "| event log | 19 pushes (0 rejected)" in text


def test_top_of_a_running_job_does_not_call_a_half_written_record_damage(tmp_path, capsys):
    run = make_run(tmp_path, summary=None)  # still running: the writer may finish the record
    log_of(run).write_bytes(log_of(run).read_bytes()[:-5])
    assert main(["top", str(run), "--frames", "1"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "[running]" in out


def test_read_events_without_a_callback_still_warns(tmp_path):
    run = make_run(tmp_path)
    log_of(run).write_bytes(log_of(run).read_bytes()[:-5])
    with pytest.warns(UserWarning, match="ends early: read 20 records"):
        assert len(list(events.read_events(log_of(run)))) == PUSHES


def test_read_events_reports_the_damage_to_its_callback(tmp_path):
    run = make_run(tmp_path)
    with open(log_of(run), "ab") as f:
        f.write(b"\xc1")
    seen = []
    assert len(list(events.read_events(log_of(run), on_damage=seen.append))) == PUSHES + 1
    assert seen == [events.LogDamage(log_of(run), PUSHES + 1, 1, corrupt=True)]


# --- a damaged summary.json -------------------------------------------------------------------------

def test_top_on_an_invalid_summary_draws_the_log_and_warns(tmp_path, capsys):
    run = make_run(tmp_path, summary='{"status": "completed",\n  "wall_time_s": \n')
    rc, out, err = cli(capsys, "top", run)
    assert rc == 0
    assert err == [f"downpour: warning: {run / rundir.SUMMARY_NAME} is not valid JSON (line 3): the "
                   "run's summary is damaged; the view shows what the event log holds"]
    assert "downpour top  run  [summary unreadable]" in out


def test_report_on_an_invalid_summary_warns_and_writes_the_report(tmp_path, capsys):
    run = make_run(tmp_path, summary="{")
    rc, out, err = cli(capsys, "report", run)
    assert rc == 0 and out.startswith("wrote ")
    assert err == [f"downpour: warning: {run / rundir.SUMMARY_NAME} is not valid JSON (line 1): the "
                   "run's summary is damaged; the report shows what the event log holds"]


@pytest.mark.parametrize("text, words", [("{", "is not valid JSON (line 1)"),
                                         ("[1, 2]", "is not a JSON object"),
                                         (b"\xff\xfe{}", "is not valid JSON (not UTF-8 text)")])
def test_read_summary_names_the_damaged_file(tmp_path, text, words):
    path = tmp_path / rundir.SUMMARY_NAME
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError) as caught:
        rundir.read_summary(tmp_path)
    assert str(caught.value) == (f"{path} {words}: the run's summary is damaged; its event log still "
                                 "works with `downpour report`")


def eval_run(tmp_path, summary: str):
    """A run folder `downpour eval` accepts up to its summary: a real MLP model.pt on synthetic data."""
    import torch

    from replicas.models import build_model

    run = tmp_path / "run"
    run.mkdir()
    torch.save(build_model("mlp", seed=0).state_dict(), run / rundir.MODEL_NAME)
    (run / "model.json").write_text(json.dumps({"model": "mlp", "seed": 0}))
    (run / rundir.CONFIG_NAME).write_text("dataset: synthetic\nseed: 0\n")
    (run / rundir.SUMMARY_NAME).write_text(summary)
    return run


@pytest.mark.parametrize("summary, words", [('{"test_samples": 10', "is not valid JSON (line 1)"),
                                            ("[10]", "is not a JSON object")])
def test_eval_on_a_damaged_summary_exits_2_with_one_line(tmp_path, capsys, summary, words):
    run = eval_run(tmp_path, summary)
    rc, _, err = cli(capsys, "eval", run)
    assert rc == 2
    assert err == [f"downpour: error: {run / rundir.SUMMARY_NAME} {words}: the run's summary is "
                   "damaged; its event log still works with `downpour report`"]


# --- logs nothing can be read from: one error line, status 2, the same from every reader -------------

@pytest.mark.parametrize("command", READERS)
def test_an_empty_log_is_one_error_line_from_every_reader(tmp_path, capsys, command):
    run = make_run(tmp_path)
    log_of(run).write_bytes(b"")
    rc, out, err = cli(capsys, command, run)
    assert (rc, out, err) == (2, "", [f"downpour: error: {log_of(run)} {EMPTY}"])


@pytest.mark.parametrize("command", READERS)
def test_a_torn_header_is_one_error_line_from_every_reader(tmp_path, capsys, command):
    run = make_run(tmp_path)
    header = msgpack.packb(schema.header_record(0.0, 2, 2, [10, 10]))
    log_of(run).write_bytes(header[:-3])
    rc, out, err = cli(capsys, command, run)
    assert (rc, out) == (2, "")
    assert err == [f"downpour: error: {log_of(run)} holds no complete record ({len(header) - 3} bytes, "
                   "a torn header): the run stopped before its actors started"]


@pytest.mark.parametrize("command", READERS)
def test_a_log_without_a_header_is_one_error_line_from_every_reader(tmp_path, capsys, command):
    run = make_run(tmp_path)
    log_of(run).write_bytes(msgpack.packb(push(0)))
    rc, out, err = cli(capsys, command, run)
    assert (rc, out) == (2, "")
    assert err == [f"downpour: error: {log_of(run)} does not start with a downpour header record"]


@pytest.mark.parametrize("command", READERS)
def test_a_log_of_random_bytes_is_one_error_line(tmp_path, capsys, command):
    run = make_run(tmp_path)
    for seed in range(20):  # seeded: each a different first byte, so a different msgpack failure
        log_of(run).write_bytes(random.Random(seed).randbytes(4096))
        rc, out, err = cli(capsys, command, run)
        assert (rc, out, len(err)) == (2, "", 1), (seed, err)
        assert err[0].startswith(f"downpour: error: {log_of(run)} "), (seed, err)


@pytest.mark.parametrize("command", READERS)
def test_a_log_that_is_a_directory_is_one_error_line(tmp_path, capsys, command):
    run = make_run(tmp_path)
    log_of(run).unlink()
    log_of(run).mkdir()
    rc, out, err = cli(capsys, command, run)
    assert (rc, out) == (2, "")
    assert err == [f"downpour: error: {log_of(run)} is not a file: the event log is damaged or was replaced"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads a file whatever its mode")
@pytest.mark.parametrize("command", READERS)
def test_an_unreadable_log_is_one_error_line(tmp_path, capsys, command):
    run = make_run(tmp_path)
    log_of(run).chmod(0)
    try:
        rc, out, err = cli(capsys, command, run)
    finally:
        log_of(run).chmod(0o644)
    assert (rc, out) == (2, "")
    assert err == [f"downpour: error: cannot read {log_of(run)} (Permission denied)"]


def test_top_with_frames_ends_on_a_run_that_has_written_no_record_yet(tmp_path):
    import io

    from ps.obs.top import watch_run_dir

    run = tmp_path / "starting"
    run.mkdir()
    (run / "events.msgpack").write_bytes(b"")  # the job has opened its log, nothing more
    out = io.StringIO()
    assert watch_run_dir(run, 0.0, 2, out) == 0  # used to wait forever
    assert out.getvalue().count("[starting: no records yet]") == 2
