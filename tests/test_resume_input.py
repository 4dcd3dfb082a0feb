"""`downpour train --resume RUN_DIR` before Ray starts (ps.driver.resume.prepare_resume): run
directories made by hand in tmp_path, the happy paths (same plan, re-shard, more replicas) and
every bad input, which must be one UserError line with nothing in the folder changed."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ps.cli import main
from ps.common import rundir, schema
from ps.common.config import TrainConfig, to_dict
from ps.common.errors import UserError
from ps.driver.budget import ceil_div
from ps.driver.prepare import prepare
from ps.driver.resume import prepare_resume
from ps.obs.events import EventLog
from ps.server import checkpoint
from ps.server.shard import ParameterShard

DOWNPOUR = Path(sys.executable).with_name("downpour")
CONFIG = TrainConfig(dataset="synthetic", model="mlp", replicas=2, shards=2, steps=50)
PUSHES = 4  # per shard before the checkpoint


def make_states(config: TrainConfig, pushes: int = PUSHES, seed: int = 0) -> list:
    """Real shard states: the plan's split of the model's initial values, a few pushes each."""
    p = prepare(config)
    rng = np.random.default_rng(seed)
    shards = [ParameterShard(s, part, p.optimizer, config.lr, config.lr_rule, config.lr_schedule,
                             p.budget.planned_updates) for s, part in enumerate(p.plan.split(p.initial))]
    for shard in shards:
        for k in range(pushes):
            g = rng.standard_normal(shard.size).astype(np.float32)
            assert shard.push(g, shard.version, replica_id=k % config.replicas).accepted
    return [s.export_state() for s in shards]


def job_dict(config: TrainConfig, states: list, steps_done: int, **extra) -> dict:
    """What the driver's Job._job_state writes into each set's job.json."""
    return {"config": to_dict(config), "model": config.model, "sharding": config.sharding,
            "shard_sizes": [st.values.size for st in states], "steps_done": steps_done,
            "generation": 0, "train_samples": steps_done * config.batch_size,
            "evaluations": [{"epochs": 0.5, "accuracy": 0.5, "loss": 1.5}], "wall_time_s": 12.5,
            **extra}


def make_run(path: Path, config: TrainConfig = CONFIG, steps_done: int = 20, sets: int = 1) -> list:
    """A run directory as `downpour train` leaves it: config.yaml, events.msgpack (header and a few
    pushes) and `sets` checkpoint sets; returns the states of the newest set."""
    path.mkdir(parents=True, exist_ok=True)
    rundir.write_config(path, to_dict(config))
    states = make_states(config)
    log = EventLog(path / schema.LOG_NAME)
    log.append([schema.header_record(time.time(), config.replicas, config.shards,
                                     [st.values.size for st in states], model=config.model,
                                     batch_size=config.batch_size, n_fetch=config.n_fetch,
                                     n_push=config.n_push)])
    log.append([schema.push_record(0, time.time(), 0, 0, 0, 0, 1.0, True, None, 1.0)])
    log.close()
    for seq in range(sets):
        states = make_states(config, pushes=PUSHES + seq, seed=seq)
        checkpoint.save_set(path / "checkpoints", seq, states,
                            job_dict(config, states, steps_done + seq), keep=3)
    return states


def listing(root: Path) -> list:
    """Every entry under root (root's own too), with its size and mtime: to prove nothing changed."""
    entries = [root, *sorted(root.rglob("*"))] if root.exists() else []
    return [(str(p.relative_to(root)), p.is_dir(), p.stat().st_size if p.is_file() else None,
             p.stat().st_mtime_ns) for p in entries]


def flip_byte(file: Path, at: int = None) -> None:
    data = bytearray(file.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0xFF
    file.write_bytes(bytes(data))


class Warnings(list):
    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Runs built once (building one takes a second): copied into each test's tmp_path."""
    root = tmp_path_factory.mktemp("templates")
    make_run(root / "run")
    make_run(root / "two-sets", sets=2)
    make_run(root / "done", steps_done=100)
    return root


@pytest.fixture
def copy_run(templates, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOWNPOUR_DATA", str(tmp_path / "no-data-here"))  # synthetic only

    def copy(name: str) -> Path:
        return Path(shutil.copytree(templates / name, tmp_path / name))
    return copy


@pytest.fixture
def run(copy_run):
    return copy_run("run")


def flat(states: list, plan) -> np.ndarray:
    return plan.assemble([st.values for st in states], np.empty(plan.total, np.float32))


def assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---- happy paths -----------------------------------------------------------------------------------
def test_resume_with_the_same_plan_continues_from_the_checkpoint(run):
    saved, job = checkpoint.load_set(run / "checkpoints" / "000000")
    warn = Warnings()
    size_before, before = (run / schema.LOG_NAME).stat().st_size, listing(run)
    prepared, path, log_end = prepare_resume(str(run), {}, "flags", warn)
    assert listing(run) == before  # preparing writes nothing
    r = prepared.resume
    assert warn == []
    assert path == run and prepared.config.run_dir == str(run)
    assert log_end == size_before  # the log ends with complete records: nothing to cut
    assert r.seq == 0 and r.generation == 1
    assert r.versions == [st.version for st in saved] == [PUSHES, PUSHES]
    total = prepared.budget.total_steps
    assert total == 100
    assert r.share == ceil_div(total - 20, 2) == 40
    assert r.parts == [(2, 0, 1), (2, 1, 1)]
    assert r.prior == {"steps": 20, "train_samples": 20 * 32, "evaluations": job["evaluations"],
                       "wall_time_s": 12.5}
    for new, old in zip(r.states, saved):
        assert_bitwise(new.values, old.values)
        assert new.optim.keys() == old.optim.keys()
        for key in old.optim:
            assert_bitwise(new.optim[key], old.optim[key])
        assert new.planned_updates == new.version + ceil_div(r.share, 1) * 2
    # the states fit the resumed job's shards
    c = prepared.config
    for s, st in enumerate(r.states):
        shard = ParameterShard(s, np.zeros(prepared.plan.shard_numel(s), np.float32), prepared.optimizer,
                               c.lr, c.lr_rule, c.lr_schedule, state=st)
        assert shard.version == PUSHES
    assert prepared.asked == job["config"]


def test_resume_onto_three_shards_re_splits_values_and_state_bitwise(run):
    saved, _ = checkpoint.load_set(run / "checkpoints" / "000000")
    old_plan = prepare(CONFIG).plan
    prepared, _, _ = prepare_resume(str(run), {"shards": 3}, "flags", Warnings())
    new_plan, states = prepared.plan, prepared.resume.states
    assert new_plan.num_shards == 3 and len(states) == 3
    assert [st.shard for st in states] == [0, 1, 2]
    assert [st.values.size for st in states] == [new_plan.shard_numel(s) for s in range(3)]
    assert_bitwise(flat(states, new_plan), flat(saved, old_plan))
    for key in saved[0].optim:
        if saved[0].optim[key].ndim:
            old = old_plan.assemble([st.optim[key] for st in saved], np.empty(old_plan.total, np.float32))
            new = new_plan.assemble([st.optim[key] for st in states], np.empty(new_plan.total, np.float32))
            assert_bitwise(new, old)
    assert prepared.config.shards == 3
    assert prepared.asked["shards"] == 3


def test_resume_on_three_replicas_gives_three_parts_of_the_next_generation(run):
    prepared, _, _ = prepare_resume(str(run), {"replicas": 3}, "flags", Warnings())
    r = prepared.resume
    assert r.parts == [(3, 0, 1), (3, 1, 1), (3, 2, 1)]
    assert r.share == ceil_div(prepared.budget.total_steps - 20, 3)
    assert prepared.config.replicas == 3


def test_resume_may_repeat_unchangeable_keys_with_their_saved_values(run):
    prepared, _, _ = prepare_resume(str(run), {"model": "mlp", "lr": 0.003, "optimizer": "adam",
                                               "run_dir": str(run)}, "flags", Warnings())
    assert prepared.config.model == "mlp"


def test_resume_with_the_same_config_file_whose_lr_yaml_reads_as_a_string(run):
    # YAML 1.1 reads `lr: 3e-3` as the string "3e-3"; the run's own config file (same lr) must not
    # count as changing lr. ps.common.config._coerce turns it into 0.003 for a fresh run.
    (run.parent / "job.yaml").write_text("model: mlp\nlr: 3e-3\n")
    from ps.common.config import load_yaml
    values = load_yaml(str(run.parent / "job.yaml"))
    assert values["lr"] == "3e-3"
    prepared, _, _ = prepare_resume(str(run), values, "config file job.yaml", Warnings())
    assert prepared.config.lr == 0.003


def test_resume_with_more_steps_continues_a_run_whose_steps_were_all_done(copy_run):
    prepared, _, _ = prepare_resume(str(copy_run("done")), {"steps": 80}, "flags", Warnings())
    assert prepared.resume.share == ceil_div(160 - 100, 2)


def test_newest_set_corrupt_falls_back_to_the_older_one_and_warns_once(copy_run):
    path = copy_run("two-sets")
    flip_byte(checkpoint.shard_file(path / "checkpoints" / "000001", 1))
    older, _ = checkpoint.load_set(path / "checkpoints" / "000000")
    before = listing(path)
    warn = Warnings()
    prepared, _, _ = prepare_resume(str(path), {}, "flags", warn)
    assert prepared.resume.seq == 0
    assert prepared.resume.prior["steps"] == 20
    assert [st.version for st in prepared.resume.states] == [st.version for st in older]
    assert len(warn) == 1 and "000001" in warn[0] and "000000" in warn[0]
    assert listing(path) == before


# ---- bad input: one UserError line, nothing changed -----------------------------------------------
def assert_refused(run_dir, overrides=None, *words, root=None):
    root = Path(root or Path(run_dir).parent)
    before = listing(root)
    with pytest.raises(UserError) as exc:
        prepare_resume(str(run_dir), overrides or {}, "flags", Warnings())
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for word in words:
        assert word in msg, msg
    assert listing(root) == before
    return msg


def test_a_folder_that_does_not_exist(tmp_path):
    assert_refused(tmp_path / "nope", None, "does not exist", str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()


def test_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("hello\n")
    assert_refused(tmp_path / "file.txt", None, "is a file")


def test_a_folder_without_an_event_log(run):
    (run / schema.LOG_NAME).unlink()
    assert_refused(run, None, schema.LOG_NAME)


def test_a_folder_without_config_yaml(run):
    (run / rundir.CONFIG_NAME).unlink()
    assert_refused(run, None, rundir.CONFIG_NAME)


def test_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(tmp_path / "empty", None, schema.LOG_NAME)


def test_an_event_log_of_another_schema(run):
    (run / schema.LOG_NAME).unlink()
    log = EventLog(run / schema.LOG_NAME)
    log.append([{**schema.header_record(time.time(), 2, 2, [1, 1]), "schema": 99}])
    log.close()
    assert_refused(run, None, "schema 99")


@pytest.mark.parametrize("content", [b"", b"not msgpack at all \xc1\xc1", b"\x93\x01\x02\x03"])
def test_an_event_log_without_a_readable_header(run, content):
    (run / schema.LOG_NAME).write_bytes(content)
    assert_refused(run, None, schema.LOG_NAME)


def test_no_checkpoints_folder(run):
    for _, set_path in checkpoint.list_sets(run / "checkpoints"):
        checkpoint._remove_set(set_path)
    (run / "checkpoints").rmdir()
    assert_refused(run, None, "no checkpoint", "checkpoints")


def test_an_empty_checkpoints_folder(run):
    for _, set_path in checkpoint.list_sets(run / "checkpoints"):
        checkpoint._remove_set(set_path)
    assert_refused(run, None, "no checkpoint")


@pytest.mark.parametrize("where", ["middle", "start", "end"])
def test_the_only_checkpoint_corrupt(run, where):
    file = checkpoint.shard_file(run / "checkpoints" / "000000", 0)
    size = file.stat().st_size
    flip_byte(file, {"middle": size // 2, "start": 0, "end": size - 1}[where])
    assert_refused(run, None, "no checkpoint")


def test_the_only_checkpoint_incomplete(run):
    (run / "checkpoints" / "000000" / checkpoint.JOB_FILE).unlink()
    assert_refused(run, None, "no checkpoint")


@pytest.mark.parametrize("key, value", [("model", "cnn"), ("lr", 0.01), ("optimizer", "sgd"),
                                        ("optimizer", "adam:beta1=0.8"), ("seed", 1),
                                        ("batch_size", 16), ("dataset", "fashion-mnist"),
                                        ("run_dir", "elsewhere")])
def test_overrides_of_what_cannot_change(run, key, value):
    msg = assert_refused(run, {key: value}, key, "cannot change")
    assert "replicas" in msg  # says what may change


def test_overrides_that_are_bad_values_of_what_may_change(run):
    assert_refused(run, {"replicas": 0}, "replicas")
    assert_refused(run, {"checkpoint_every": "5m"}, "checkpoint_every")
    assert_refused(run, {"inject_faults": "replica:7@10"}, "inject_faults")
    assert_refused(run, {"no_such_key": 1}, "no_such_key")


def test_a_run_whose_steps_are_all_done(copy_run):
    assert_refused(copy_run("done"), None, "--epochs", "--steps", "100")


def test_a_job_json_without_the_keys_resume_reads(run):
    # a hand-edited or foreign job.json: the user gets one line, not a KeyError traceback
    job_file = run / "checkpoints" / "000000" / checkpoint.JOB_FILE
    job = json.loads(job_file.read_text())
    for key in ("config", "steps_done", "shard_sizes"):
        job.pop(key)
    job_file.write_text(json.dumps(job))
    assert_refused(run)


# ---- the command -------------------------------------------------------------------------------------
def stderr_lines(capsys) -> list:
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    return err.splitlines()


@pytest.mark.parametrize("bad", ["nope", "file.txt", "empty"])
def test_cli_resume_of_bad_folders_exits_2_with_one_line(tmp_path, monkeypatch, capsys, bad):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    before = listing(tmp_path)
    assert main(["train", "--resume", bad]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("downpour: error: ") and bad in lines[0], lines
    assert listing(tmp_path) == before


def test_cli_resume_changing_the_model_exits_2_with_one_line(run, capsys):
    before = listing(run)
    assert main(["train", "--resume", str(run), "--model", "cnn"]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("downpour: error: ") and "model" in lines[0], lines
    assert listing(run) == before


def test_cli_resume_with_the_only_checkpoint_corrupt_warns_then_errs(run, capsys):
    flip_byte(checkpoint.shard_file(run / "checkpoints" / "000000", 1))
    before = listing(run)
    assert main(["train", "--resume", str(run)]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 2, lines
    assert lines[0].startswith("downpour: warning: checkpoint 000000") and "shard-1.ckpt" in lines[0]
    assert lines[1].startswith("downpour: error: ") and "no checkpoint" in lines[1]
    assert listing(run) == before


def test_console_script_resume_of_a_missing_folder_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([str(DOWNPOUR), "train", "--resume", "nope"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("downpour: error: run directory nope does not exist")
    assert list(tmp_path.iterdir()) == []


def test_a_torn_last_event_record_is_cut_off_by_the_offset_not_by_preparing(run):
    log = run / schema.LOG_NAME
    good_end = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b"\x85\xa4kind\xa4push\xa1t")  # a record a crash cut short
    before = listing(run)
    _, _, log_end = prepare_resume(str(run), {}, "flags", Warnings())
    assert log_end == good_end
    assert listing(run) == before


def test_submit_resume_runs_train_resume_on_the_head_node():
    from ps.cli.submission import entrypoint

    assert entrypoint({"replicas": 3, "tensorboard": True}, "~/downpour-runs/r1", resume=True) == \
        "downpour train --replicas 3 --tensorboard --address auto --resume ~/downpour-runs/r1"
    assert entrypoint({}, "runs/a b", resume=True).endswith("--resume 'runs/a b'")


def test_a_run_directory_has_one_driver_at_a_time(tmp_path):
    with rundir.driver_lock(tmp_path):
        with pytest.raises(UserError, match="being written by a running downpour"):
            with rundir.driver_lock(tmp_path):
                pass
    assert not (tmp_path / rundir.LOCK_NAME).exists()  # released
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / rundir.LOCK_NAME).write_text(str(dead.pid))  # left by a driver that died
    with rundir.driver_lock(tmp_path):
        assert (tmp_path / rundir.LOCK_NAME).read_text() == str(os.getpid())
