"""Bad input to the consistency modes, gradient transforms and async local SGD, through the real
`downpour train` entry in-process: exit 2, one `downpour: error:` line naming the field, and
nothing started: no Ray, no run directory (docs/consistency.md has the table of these refusals)."""

import pytest

from ps.cli import main
from ps.driver import ray_session as cluster

SYN = ["--dataset", "synthetic"]


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    """Fails the test if the command gets as far as connecting to Ray."""
    def connect(*args, **kwargs):
        pytest.fail("a bad input reached cluster.connect: Ray would have started")
    monkeypatch.setattr(cluster, "connect", connect)
    # Any path that wrongly reaches Fashion-MNIST lookup fails at once instead of reading files.
    monkeypatch.setenv("DOWNPOUR_DATA", str(tmp_path / "no-data-here"))


# id -> (flags, words the one error line must hold: the field first)
REFUSED = {
    "softsync-n-zero": (["--consistency", "softsync:n=0"],
                        ["consistency softsync", "n=0", "out of range", "n=1..4"]),
    "softsync-n-above-replicas": (["--replicas", "3", "--consistency", "softsync:n=4"],
                                  ["consistency softsync", "n=4", "with 3 replicas", "n=1..3"]),
    "softsync-c-zero": (["--consistency", "softsync:c=0"], ["consistency softsync", "c=0", "c=1..4"]),
    "softsync-n-and-c": (["--consistency", "softsync:n=2,c=2"],
                         ["consistency softsync", "one of n=", "c="]),
    "softsync-n-fraction": (["--consistency", "softsync:n=1.5"],
                            ["consistency 'softsync'", "n=1.5", "whole number"]),
    "ssp-bound-negative": (["--consistency", "ssp:bound=-1"],
                           ["consistency ssp", "bound= 0 or more", "ssp:bound=3"]),
    "ssp-no-bound": (["--consistency", "ssp"], ["consistency ssp", "bound="]),
    "backup-b-equals-replicas": (["--replicas", "4", "--consistency", "backup:b=4"],
                                 ["consistency backup", "b=4", "out of range", "b=1..3"]),
    "backup-b-above-replicas": (["--replicas", "2", "--consistency", "backup:b=5"],
                                ["consistency backup", "b=5", "b=1..1"]),
    "inject-delay-unknown": (["--inject-delay", "gamma:mean=1"], ["inject_delay is 'gamma'", "uniform"]),
    "inject-delay-negative-mean": (["--inject-delay", "uniform:mean=-1"], ["inject_delay", "mean=-1", "> 0"]),
    "inject-delay-replay": (["--inject-delay", "replay:runs/x"], ["inject_delay", "downpour simulate"]),
    "hogwild-with-sgd-parameters": (["--consistency", "hogwild", "--optimizer", "sgd:weight_decay=0.1"],
                                    ["not 'sgd:weight_decay=0.1'"]),
    "unknown-mode": (["--consistency", "eventual"],
                     ["consistency is 'eventual'", "async, softsync, sync, backup, ssp, hogwild"]),
    "unknown-mode-parameter": (["--consistency", "async:n=2"],
                               ["consistency 'async'", "no parameter 'n'"]),
    "dcasgd-with-hogwild": (["--optimizer", "sgd", "--consistency", "hogwild",
                             "--gradient-transform", "dcasgd:lambda=0.04"],
                            ["consistency hogwild", "gradient_transform", "drop one"]),
    "hogwild-with-adam": (["--consistency", "hogwild", "--optimizer", "adam"],
                          ["consistency hogwild", "plain sgd", "'adam'", "--optimizer sgd"]),
    "hogwild-with-the-default-optimizer": (["--consistency", "hogwild"],
                                           ["consistency hogwild", "'adam'", "--optimizer sgd"]),
    "hogwild-with-transport-shm": (["--optimizer", "sgd", "--consistency", "hogwild",
                                    "--transport", "shm"],
                                   ["consistency hogwild", "Ray calls", "--transport auto or ray"]),
    "sync-with-n-push-4": (["--consistency", "sync", "--n-push", "4"],
                           ["consistency sync", "n_fetch = n_push = 1", "1 and 4"]),
    "ssp-with-n-fetch-2": (["--consistency", "ssp:bound=2", "--n-fetch", "2"],
                           ["consistency ssp", "n_fetch = n_push = 1", "2 and 1"]),
    "sync-with-transport-shm": (["--consistency", "sync", "--transport", "shm"],
                                ["consistency sync", "Ray calls", "--transport auto or ray"]),
    "backup-with-transport-shm": (["--consistency", "backup:b=1", "--transport", "shm"],
                                  ["consistency backup", "Ray calls", "--transport auto or ray"]),
    "sync-with-pipeline": (["--consistency", "sync", "--pipeline"],
                           ["consistency sync", "--pipeline"]),
    "plugin-transform-factory-without-size": (
        ["--gradient-transform", "failing_plugins:transform_without_size"],
        ["gradient_transform 'failing_plugins:transform_without_size'",
         "cannot be called as factory(size=...", "unexpected keyword argument 'size'"]),
    "plugin-transform-unknown-parameter": (
        ["--gradient-transform", "failing_plugins:TransformWithShortApply:beta=2"],
        ["gradient_transform 'failing_plugins:TransformWithShortApply'", "factory(size=..., beta=)",
         "unexpected keyword argument 'beta'"]),
    "plugin-transform-apply-with-a-wrong-signature": (
        ["--gradient-transform", "failing_plugins:TransformWithShortApply"],
        ["gradient_transform 'failing_plugins:TransformWithShortApply'", "failed on a test push",
         "positional argument"]),
    "plugin-transform-missing-module": (["--gradient-transform", "no_such_module_here:Factory"],
                                        ["gradient_transform", "cannot import module"]),
    "local-steps-zero": (["--local-steps", "0"],
                         ["local_steps is 0", "--local-steps to 1 or more"]),
    "local-steps-negative": (["--local-steps", "-3"],
                             ["local_steps is -3", "--local-steps to 1 or more"]),
    "local-steps-with-n-push": (["--local-steps", "4", "--n-push", "2"],
                                ["local_steps 4", "n_fetch and n_push", "drop --n-fetch and --n-push"]),
    "local-steps-with-sync": (["--local-steps", "4", "--consistency", "sync"],
                              ["consistency sync", "n_fetch = n_push = 1", "--local-steps"]),
    "local-optimizer-bogus": (["--local-steps", "4", "--local-optimizer", "bogus"],
                              ["local_optimizer is 'bogus'", "sgd, adam"]),
    "dcasgd-lambda-negative": (["--gradient-transform", "dcasgd:lambda=-0.1"],
                               ["gradient_transform 'dcasgd'", "lambda=-0.1", ">= 0"]),
    "dcasgd-without-lambda": (["--gradient-transform", "dcasgd"],
                              ["gradient_transform 'dcasgd'", "needs lambda"]),
    "dcasgd-m-without-adaptive": (["--gradient-transform", "dcasgd:lambda=0.1,m=0.5"],
                                  ["gradient_transform 'dcasgd'", "adaptive=1"]),
    "unknown-transform": (["--gradient-transform", "adagrad_fix"],
                          ["gradient_transform is 'adagrad_fix'", "dcasgd, gap_aware"]),
}

# A transform keeping what each replica fetched needs Ray calls: refused by check_modes too
AFTER_RAY = {
    "dcasgd-with-transport-shm": (["--gradient-transform", "dcasgd:lambda=0.1", "--transport", "shm"],
                                  ["--transport shm", "gradient_transform", "Ray calls"]),
    "gap-aware-with-transport-shm": (["--gradient-transform", "gap_aware", "--transport", "shm"],
                                     ["--transport shm", "gradient_transform", "Ray calls"]),
}
CASES = [pytest.param(*v, id=k) for k, v in REFUSED.items()] + [
    pytest.param(*v, id=k) for k, v in AFTER_RAY.items()]


@pytest.mark.parametrize("argv, words", CASES)
def test_bad_mode_input_exits_2_with_one_line_before_anything_starts(no_ray, tmp_path, capsys,
                                                                     argv, words):
    run_dir = tmp_path / "run"
    rc = main(["train", *SYN, "--run-dir", str(run_dir), *argv])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert out == ""
    assert "Traceback" not in err
    # In-process, stderr may also carry what a session Ray of earlier tests logs: not this command's.
    lines = [line for line in err.splitlines() if "(raylet)" not in line]
    assert len(lines) == 1 and lines[0].startswith("downpour: error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert not run_dir.exists()


@pytest.mark.parametrize("argv", [
    ["--consistency", "softsync:n=4"], ["--consistency", "softsync:c=1"], ["--consistency", "sync"],
    ["--consistency", "backup:b=3"], ["--consistency", "ssp:bound=0"],
    ["--consistency", "hogwild", "--optimizer", "sgd"],
    ["--gradient-transform", "dcasgd:lambda=0.1,adaptive=1,m=0.9"],
    ["--local-steps", "4", "--local-optimizer", "adam", "--optimizer", "delayed_nesterov:delay=2"],
], ids=["softsync-n-N", "softsync-c-1", "sync", "backup-N-1", "ssp-bound-0", "hogwild-sgd",
        "dcasgd-adaptive", "local-steps"])
def test_the_edges_of_each_range_pass_every_check_up_to_ray(no_ray, tmp_path, capsys, argv):
    """The boundary values are accepted: the command gets as far as connecting to Ray."""
    with pytest.raises(pytest.fail.Exception, match="reached cluster.connect"):
        main(["train", *SYN, "--replicas", "4", "--run-dir", str(tmp_path / "run"), *argv])
    assert "downpour: error" not in capsys.readouterr().err
