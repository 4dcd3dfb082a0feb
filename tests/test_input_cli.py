"""One line and exit 2 for what argparse and Ray would otherwise answer with pages: mistyped
flags and commands (with a did-you-mean), a local Ray that cannot start; and what a run says
about itself at the start (its data), with no Ray warning before it."""

import os
import subprocess
import sys

import pytest

from ps.cli import main


@pytest.mark.parametrize("argv, hint", [
    (["train", "--replica", "4"], "did you mean --replicas?"),
    (["train", "--shard=3"], "did you mean --shards?"),
    (["trian"], "did you mean train?"),
    (["top", "--frame", "3"], "did you mean --frames?"),
    (["train", "--lr"], "see `downpour train --help`"),
    (["staleness"], "see `downpour staleness --help`"),
])
def test_a_parse_error_is_one_line_with_a_hint(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("downpour: error: ") and hint in err, err
    assert "usage:" not in err


def test_a_local_ray_that_cannot_start_is_one_line_and_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    """Ray's own start-up failure (here: ray.init raising, as it does when a node times out under
    load) becomes a UserError; the unit under test is our translation, so Ray is stood in for."""
    import ray

    from ps.common.config import TrainConfig

    def fails(**_):
        raise Exception("The current node timed out during startup. This could happen because "
                        "some of the Ray processes failed to startup.\nmore text")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fails)
    from ps.common.errors import UserError
    from ps.driver.train import train

    run_dir = tmp_path / "never"
    with pytest.raises(UserError, match="could not start a local Ray .*timed out during startup"):
        train(TrainConfig(dataset="synthetic", model="mlp", dry_run=True, run_dir=str(run_dir)))
    assert not run_dir.exists()


@pytest.mark.ray
def test_a_local_run_says_its_data_and_nothing_from_ray_before_its_own_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # as a user's shell has it
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", "from ps.cli import main; raise SystemExit(main())",
                           "train", "--dataset", "synthetic",
                           "--dry-run", "--model", "mlp", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines()
             if line.strip() and not line.lstrip().startswith("[")]
    assert all(line.startswith("downpour: ") for line in lines), lines  # no Ray warning among them
    assert "downpour: data: synthetic (generated from seed 0, no files)" in lines
    import json

    assert json.loads((run_dir / "summary.json").read_text())["data_source"] is None
