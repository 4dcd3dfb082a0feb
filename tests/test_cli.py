"""The `downpour` command: user errors (status 2, one line, no Ray), the console script, and end-to-end runs."""

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ps.cli import main
from ps.driver import ray_session as cluster
from replicas.models import build_model

DOWNPOUR = Path(sys.executable).with_name("downpour")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _idx(magic: int, dims: tuple, payload: bytes) -> bytes:
    return gzip.compress(struct.pack(f">I{len(dims)}I", magic, *dims) + payload)


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """A scratch folder holding every input the error cases need; also the working directory."""
    monkeypatch.chdir(tmp_path)
    # Any path that wrongly reaches Fashion-MNIST lookup fails here instead of downloading 30 MB.
    monkeypatch.setenv("DOWNPOUR_DATA", str(tmp_path / "no-data-here"))
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "fashion"
    bad.mkdir()
    images, labels = _idx(0x803, (10, 28, 28), bytes(7840)), _idx(0x801, (10,), bytes(range(10)))
    for name in FASHION_FILES:
        (bad / name).write_bytes(images if "images" in name else labels)
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip\n")
    (tmp_path / "unknown.yaml").write_text("replicas: 2\nreplica: 3\n")
    (tmp_path / "wrongtype.yaml").write_text('replicas: "four"\n')
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    return tmp_path


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the command gets as far as connecting to Ray."""
    def connect(*args, **kwargs):
        pytest.fail("a bad input reached cluster.connect: Ray would have started")
    monkeypatch.setattr(cluster, "connect", connect)


SYN = ["--dataset", "synthetic"]
TRAIN_ERRORS = {
    "replicas-zero": (["--replicas", "0"], ["replicas is 0", "--replicas", "1 or more"]),
    "shards-zero": (["--shards", "0"], ["shards is 0", "--shards", "1 or more"]),
    "more-shards-than-elements": (["--model", "mlp", "--shards", "10000000", *SYN],
                                  ["shards is 10000000", "at most 4096"]),
    "batch-larger-than-partition": ([*SYN, "--batch-size", "100000"],
                                    ["batch_size 100000", "1500 samples with 4 replicas", "--batch-size"]),
    "unknown-model": (["--model", "resnet"], ["model is 'resnet'", "mlp, cnn", "package.module"]),
    "unknown-lr-rule": (["--lr-rule", "linear"], ["lr_rule is 'linear'", "constant, inverse, inverse_mean, exponential"]),
    "bad-rule-parameter": (["--lr-rule", "exponential:gamma=2"], ["lr_rule 'exponential'", "gamma=2.0", "gamma <= 1.0"]),
    "unknown-optimizer": (["--optimizer", "rmsprop"], ["optimizer is 'rmsprop'", "sgd, momentum, adagrad, adam"]),
    "unknown-sharding": (["--sharding", "random"], ["sharding is 'random'", "balanced, range"]),
    "unknown-device": (["--device", "tpu"], ["device is 'tpu'", "auto, cpu, cuda"]),
    "empty-data-dir": (["--data-dir", "{tmp}/empty"], ["{tmp}/empty", "--data-dir", *FASHION_FILES]),
    "corrupt-data-file": (["--data-dir", "{tmp}/fashion"],
                          ["{tmp}/fashion/t10k-labels-idx1-ubyte.gz", "not a valid gzip file", "fetch it again"]),
    "config-unknown-key": (["--config", "{tmp}/unknown.yaml"], ["unknown.yaml", "unknown key 'replica'", "did you mean 'replicas'?"]),
    "config-wrong-type": (["--config", "{tmp}/wrongtype.yaml"], ["wrongtype.yaml", "replicas is 'four'", "expected int"]),
    "config-missing": (["--config", "{tmp}/nope.yaml"], ["config file {tmp}/nope.yaml", "cannot read it"]),
    "run-dir-holds-a-run": ([*SYN, "--run-dir", "{tmp}/old"], ["run_dir {tmp}/old already holds a run", "--run-dir"]),
}


@pytest.mark.parametrize("argv, words", TRAIN_ERRORS.values(), ids=TRAIN_ERRORS.keys())
def test_train_bad_input_exits_2_with_one_line_and_no_ray(tmp, no_ray, capsys, argv, words):
    rc = main(["train", *(a.format(tmp=tmp) for a in argv)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    # In-process, stderr also carries what the test session's Ray logs about earlier tests'
    # actors: those lines are not this command's.
    lines = [line for line in err.splitlines() if "(raylet)" not in line]
    assert len(lines) == 1 and lines[0].startswith("downpour: error: "), err
    for word in words:
        assert word.format(tmp=tmp) in lines[0]


def test_corrupt_data_file_message_names_only_the_bad_file(tmp, no_ray, capsys):
    assert main(["train", "--data-dir", str(tmp / "fashion")]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels" in err and "train-images" not in err and "t10k-images" not in err


def test_run_dir_holding_a_run_is_left_untouched(tmp, no_ray, capsys):
    assert main(["train", *SYN, "--run-dir", str(tmp / "old")]) == 2
    assert sorted(p.name for p in (tmp / "old").iterdir()) == ["summary.json"]
    assert (tmp / "old" / "summary.json").read_text() == "{}"


@pytest.mark.parametrize("argv, words", [
    (["train", "--replicas", "abc"], ["--replicas", "invalid int value: 'abc'"]),
    (["train", "--lr", "fast"], ["--lr", "invalid float value"]),
    (["train", "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (["staleness", "x", "--by", "epoch"], ["--by", "invalid choice: 'epoch'"]),
])
def test_argparse_errors_exit_2(tmp, capsys, argv, words):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words)


def test_config_with_a_non_string_key_is_a_user_error(tmp, no_ray, capsys):
    (tmp / "intkey.yaml").write_text("1: 2\n")
    assert main(["train", "--config", str(tmp / "intkey.yaml")]) == 2
    assert "unknown key '1'" in capsys.readouterr().err


def _script(*args, cwd):
    return subprocess.run([str(DOWNPOUR), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_console_script_train_replicas_zero_exits_2(tmp_path):
    proc = _script("train", "--replicas", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("downpour: error: replicas is 0")
    assert not (tmp_path / "runs").exists()


def test_console_script_staleness_on_missing_folder_exits_2(tmp_path):
    proc = _script("staleness", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"downpour: error: run directory {tmp_path / 'missing'} does not exist: "
        "give the folder `downpour train` printed"]


def test_console_script_plan_prints_one_row_per_shard_and_imbalance(tmp_path):
    proc = _script("plan", "--model", "cnn", "--shards", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.split() and ln.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert sum(int(r[1].replace(",", "")) for r in rows) == 421_642
    imbalance = [ln for ln in lines if ln.startswith("imbalance max/mean ")]
    assert len(imbalance) == 1 and 1.0 <= float(imbalance[0].split()[-1]) < 1.5


def test_run_folder_label_has_no_colon_or_slash(tmp_path):
    from ps.common import rundir

    path = rundir.create(None, "my_models.nets:wide/v2-r4s2", root=str(tmp_path))
    assert path.parent == tmp_path and path.name.endswith("-my_models.nets_wide_v2-r4s2")
    assert ":" not in path.name and rundir.safe_label("a::b//c") == "a_b_c"


def test_obs_imports_only_common_never_driver_cli_or_ray():
    """ps.obs reads run directories and event logs: the layer below the driver and the CLI."""
    import ast

    bad = []
    for module in sorted((Path(__file__).resolve().parents[1] / "ps" / "obs").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{module.name}: {n}" for n in names
                    if n.split(".")[0] == "ray" or n.startswith(("ps.driver", "ps.cli", "ps.server"))]
    assert bad == []


def _staleness_run(tmp_path) -> Path:
    from ps.common import schema
    from ps.obs import events

    log = events.EventLog(tmp_path / schema.LOG_NAME)
    log.append([schema.header_record(1000.0, 2, 2, [100, 50])])
    log.append([schema.push_record(i % 2, 1000.0 + i, i % 2, 10, 10 + i % 5, i % 5, 1.0, True, None, 1.0)
                for i in range(200)])
    log.close()
    return tmp_path


def test_console_script_staleness_into_a_closed_pipe_exits_quietly(tmp_path):
    """`downpour staleness RUN | head`: the reader has gone before anything is written."""
    import os

    run = _staleness_run(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all: the first write fails with EPIPE, whatever the timing
    try:
        proc = subprocess.run([str(DOWNPOUR), "staleness", str(run), "--by", "replica"], cwd=tmp_path,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141


def test_eval_on_a_bad_run_dir_exits_2_with_one_line(tmp, capsys):
    for target, words in ((tmp / "missing", "does not exist"), (tmp / "empty", "holds no model.pt")):
        assert main(["eval", str(target)]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("downpour: error: ") and words in lines[0], lines


# Ray-using tests stay last: the error tests above assert that Ray was never initialised.

@pytest.mark.ray
def test_train_end_to_end_on_synthetic_then_reload_config_and_staleness(ray_session, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--dataset", "synthetic", "--model", "mlp", "--replicas", "2", "--shards", "2",
               "--epochs", "2", "--batch-size", "64", "--run-dir", str(run), "--lr", "0.003"])
    assert rc == 0
    assert {"config.yaml", "summary.json", "events.msgpack", "model.pt"} <= {p.name for p in run.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["test_accuracy"] >= 0.9, summary["test_accuracy"]
    assert summary["train_samples"] == 2 * 2 * (3000 // 64) * 64
    assert len(summary["updates"]) == 2 and all(u > 0 for u in summary["updates"])
    state = torch.load(run / "model.pt")
    assert state.keys() == build_model("mlp", 0).state_dict().keys()
    assert yaml.safe_load((run / "config.yaml").read_text())["run_dir"] == str(run)

    run2 = tmp_path / "run2"
    assert main(["train", "--config", str(run / "config.yaml"), "--run-dir", str(run2), "--dry-run"]) == 0
    reloaded = yaml.safe_load((run2 / "config.yaml").read_text())
    assert reloaded["run_dir"] == str(run2) and reloaded["lr"] == 0.003 and reloaded["model"] == "mlp"
    assert json.loads((run2 / "summary.json").read_text())["dry_run"] is True
    assert json.loads((run / "summary.json").read_text()) == summary  # the first run is untouched

    capsys.readouterr()
    assert main(["staleness", str(run)]) == 0
    out = capsys.readouterr().out
    assert "shard 0:" in out and "shard 1:" in out and "all shards:" in out and "shard 2:" not in out
    assert main(["staleness", str(run), "--by", "replica"]) == 0
    out = capsys.readouterr().out
    assert "replica 0:" in out and "replica 1:" in out and "all replicas:" in out


@pytest.mark.ray
def test_dry_run_on_synthetic_takes_three_steps_per_replica(ray_session, tmp_path):
    run = tmp_path / "dry"
    rc = main(["train", "--dataset", "synthetic", "--model", "mlp", "--replicas", "2", "--shards", "2",
               "--batch-size", "32", "--dry-run", "--run-dir", str(run)])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dry_run"] is True
    assert summary["train_samples"] == 2 * 3 * 32
    assert summary["test_samples"] == 500
