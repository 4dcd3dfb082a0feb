"""`downpour simulate`: determinism, the modes' invariants on simulated time, and its run directory
read by `downpour staleness` and `report` (no Ray: every learner runs in this process)."""

import collections
import io
import json

import numpy as np
import pytest
from tests_support import big_batch_sgd, final_values

from ps.cli import main
from ps.common import schema
from ps.common.config import TrainConfig
from ps.obs import events
from ps.sim.run import SimSettings, simulate

SEED, BATCH = 3, 8


def run(tmp_path, name: str, settings: SimSettings = SimSettings(), **overrides):
    config = TrainConfig(**{"dataset": "synthetic", "model": "mlp", "replicas": 4, "shards": 2,
                            "steps": 20, "batch_size": BATCH, "eval_every": 0.0, "seed": SEED,
                            "optimizer": "sgd", "lr": 0.05, "run_dir": str(tmp_path / name),
                            **overrides})
    path, summary = simulate(config, settings, out=io.StringIO())
    records = list(events.read_events(path / schema.LOG_NAME))
    return path, summary, records


def pushes(records, shard=None):
    return [r for r in records if r["kind"] == "push" and shard in (None, r["shard"])]


def test_a_simulation_is_a_function_of_its_configuration_and_seed(tmp_path):
    settings = SimSettings(delay="exp:mean=0.01", order="shuffled")
    a, sa, ra = run(tmp_path, "a", settings)
    b, sb, rb = run(tmp_path, "b", settings)
    np.testing.assert_array_equal(final_values(a, "mlp", SEED), final_values(b, "mlp", SEED))
    key = [(r["shard"], r["replica"], r["fetched"], r["tau"]) for r in pushes(ra)]
    assert key == [(r["shard"], r["replica"], r["fetched"], r["tau"]) for r in pushes(rb)]
    assert sa["staleness"] == sb["staleness"] and sa["simulation"] == {**sb["simulation"],
                                                                       "wall_s": sa["simulation"]["wall_s"]}
    _, sc, rc = run(tmp_path, "c", SimSettings(delay="exp:mean=0.01", order="shuffled"), seed=SEED + 1)
    assert [r["replica"] for r in pushes(rc)] != [r["replica"] for r in pushes(ra)]


def test_sync_equals_single_process_sgd_with_batch_n_times_b(tmp_path):
    path, summary, records = run(tmp_path, "sync", SimSettings(delay="straggler"),
                                 consistency="sync", lr_rule="constant", lr_schedule="constant", steps=10)
    assert summary["updates"] == [10, 10] and summary["rejected_pushes"] == 0
    assert {r["tau"] for r in pushes(records)} == {0}
    np.testing.assert_allclose(final_values(path, "mlp", SEED),
                               big_batch_sgd("mlp", SEED, BATCH, 4, 10, 0.05), rtol=1e-4, atol=1e-5)


def test_softsync_with_one_gradient_per_update_is_async_bitwise(tmp_path):
    a, _, ra = run(tmp_path, "async", SimSettings(delay="uniform"), lr_rule="constant")
    c, _, rc = run(tmp_path, "c1", SimSettings(delay="uniform"), lr_rule="constant",
                   consistency="softsync:c=1")
    np.testing.assert_array_equal(final_values(a, "mlp", SEED), final_values(c, "mlp", SEED))
    assert [r["tau"] for r in pushes(ra)] == [r["tau"] for r in pushes(rc)]


def test_dcasgd_with_lambda_zero_is_async_bitwise(tmp_path):
    a, _, _ = run(tmp_path, "async", SimSettings(delay="uniform"))
    d, summary, _ = run(tmp_path, "dc0", SimSettings(delay="uniform"),
                        gradient_transform="dcasgd:lambda=0")
    np.testing.assert_array_equal(final_values(a, "mlp", SEED), final_values(d, "mlp", SEED))
    assert summary["consistency"]["transform_state_bytes"] > 0  # the backups are kept all the same


@pytest.mark.parametrize("n, order", [(2, "delay"), (4, "delay"), (4, "shuffled"), (12, "shuffled")])
def test_n_softsync_staleness_is_about_n(tmp_path, n, order):
    """Zhang et al.: with c = N/n gradients per update, <tau> ~ n and tau rarely exceeds 2n."""
    _, summary, records = run(tmp_path, f"n{n}", SimSettings(delay="uniform:jitter=0.1", order=order),
                              replicas=24, shards=1, steps=40, consistency=f"softsync:n={n}")
    taus = np.array([r["tau"] for r in pushes(records) if r["accepted"]])
    assert len(taus) == 24 * 40 and summary["consistency"]["per_update"] == [24 // n]
    assert 0.8 * n <= taus.mean() <= 1.2 * n, taus.mean()
    assert (taus > 2 * n).mean() < 1e-3


@pytest.mark.parametrize("bound", [0, 1, 3])
def test_ssp_never_runs_a_learner_past_its_bound(tmp_path, bound):
    """From the event log alone: when a learner fetches for its step c, every learner still
    training has pushed at least c - bound steps."""
    _, summary, records = run(tmp_path, f"ssp{bound}", SimSettings(delay="straggler:p=0.3,factor=4"),
                              consistency=f"ssp:bound={bound}", shards=1, steps=30)
    done = collections.Counter()
    fetched_once = set()
    for r in records:
        if r["kind"] == "push":
            done[r["replica"]] += 1
        elif r["kind"] == "fetch":
            training = [q for q in range(4) if done[q] < 30]
            assert done[r["replica"]] - min(done[q] for q in training) <= bound, (r, dict(done))
            fetched_once.add(r["replica"])
    assert sum(done.values()) == 4 * 30 and fetched_once == set(range(4))
    ssp = summary["consistency"]["ssp"]
    assert ssp["violations"] == 0 and ssp["max_gap"] <= bound and ssp["waits"] > 0


def test_backup_never_applies_a_late_gradient(tmp_path):
    path, summary, records = run(tmp_path, "backup", SimSettings(delay="straggler:p=0.2,factor=3"),
                                 consistency="backup:b=1", steps=30, lr_rule="constant")
    late = [r for r in pushes(records) if r["fetched"] < r["applied"]]
    assert late and all(not r["accepted"] and r["reason"].startswith("late") for r in late)
    for shard in (0, 1):
        accepted = [r for r in pushes(records, shard) if r["accepted"]]
        assert all(r["tau"] == 0 for r in accepted)
        rounds = collections.Counter(r["fetched"] for r in accepted)
        # every update is a round of N - b = 3 gradients on one version, but the last ones once
        # learners finished (a round never waits for a learner that will not push again)
        assert set(rounds) == set(range(summary["updates"][shard]))
        assert all(1 <= k <= 3 for k in rounds.values())
        full = [v for v in sorted(rounds) if rounds[v] == 3]
        assert full == list(range(len(full))) and len(full) >= summary["updates"][shard] - 4
    assert summary["consistency"]["late_dropped"] == len(late) == summary["rejected_pushes"]


def test_async_local_sgd_pushes_one_delta_per_h_steps(tmp_path):
    _, summary, records = run(tmp_path, "local", local_steps=5, optimizer="nesterov", lr=0.7,
                              local_lr=0.05, steps=20)
    assert len(pushes(records)) == 2 * 4 * 20 // 5 and summary["rejected_pushes"] == 0
    assert summary["consistency"]["local_steps"] == 5 and summary["train_samples"] == 4 * 20 * BATCH


MODES = {"async": [], "softsync": ["--consistency", "softsync:n=2"], "sync": ["--consistency", "sync"],
         "backup": ["--consistency", "backup:b=1"], "ssp": ["--consistency", "ssp:bound=2"],
         "hogwild": ["--consistency", "hogwild"],
         "dcasgd": ["--gradient-transform", "dcasgd:lambda=0.04,adaptive=1"],
         "local": ["--local-steps", "4", "--optimizer", "delayed_nesterov:delay=2", "--lr", "0.5",
                   "--local-lr", "0.05"]}


@pytest.mark.parametrize("mode", list(MODES))
def test_staleness_and_report_read_a_simulated_run_of_every_mode(tmp_path, capsys, mode):
    run_dir = tmp_path / mode
    status = main(["simulate", "--dataset", "synthetic", "--replicas", "3", "--shards", "2",
                   "--steps", "16", "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.05",
                   "--eval-every", "0.02", "--delay", "straggler", "--run-dir", str(run_dir),
                   *MODES[mode]])
    assert status == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["simulation"]["delay"] == "straggler"
    assert len(summary["evaluations"]) >= 1 and summary["test_accuracy"] is not None
    capsys.readouterr()
    assert main(["staleness", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "all shards: pushes" in out and "shard 1:" in out
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report" / "report.md").is_file()


ARGPARSE_ERRORS = ("--order", "--inject-faults")  # refused by the parser: it exits


@pytest.mark.parametrize("argv, words", [
    (["--delay", "gamma"], ["delay is 'gamma'", "uniform"]),
    (["--delay", "uniform:mean=0"], ["mean=0", "> 0"]),
    (["--delay", "straggler:p=2"], ["p=2", "[0, 1]"]),
    (["--delay", "uniform:speed=2"], ["no parameter 'speed'"]),
    (["--delay", "replay:no-such-run"], ["no-such-run", "does not exist"]),
    (["--order", "random"], ["invalid choice", "shuffled"]),
    (["--inject-faults", "replica:0@1"], ["unrecognized arguments", "--inject-faults"]),
    (["--n-fetch", "2"], ["n_fetch = n_push"]),
    (["--consistency", "softsync:n=9"], ["n=9", "out of range"]),
    (["--budget", "jobs"], ["budget is 'jobs'", "replica, job"]),
    (["--consistency", "sync", "--budget", "job"], ["every round waits", "drop --budget job"]),
    (["--delay", "slow:count=0.5"], ["count=0.5", "whole number"]),
])


def test_bad_input_exits_2_with_one_line_and_no_run_directory(tmp_path, capsys, argv, words):
    run_dir = tmp_path / "run"
    status = main(["simulate", "--dataset", "synthetic", "--replicas", "3", "--steps", "4",
                   "--run-dir", str(run_dir), *argv]) if argv[0] not in ARGPARSE_ERRORS else None
    if status is None:
        with pytest.raises(SystemExit) as exc:
            main(["simulate", "--dataset", "synthetic", "--run-dir", str(run_dir), *argv])
        status = exc.value.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("downpour: error:"), err
    assert all(w in err[0] for w in words), err[0]
    assert not run_dir.exists()


def test_replay_takes_a_recorded_runs_step_times(tmp_path):
    source, _, records = run(tmp_path, "source", SimSettings(delay="straggler:p=0.3,factor=5"),
                             replicas=3, shards=1, steps=12)
    again, summary, replayed = run(tmp_path, "replay", SimSettings(delay=f"replay:{source}"),
                                   replicas=3, shards=1, steps=12)
    for q in range(3):  # each learner's steps take the recorded replica's step times, in order
        recorded = np.diff([r["t"] for r in pushes(records) if r["replica"] == q])
        pushed = [replayed[0]["t"]] + [r["t"] for r in pushes(replayed) if r["replica"] == q]
        expected = [recorded[k % len(recorded)] for k in range(12)]
        np.testing.assert_allclose(np.diff(pushed), expected, rtol=1e-6)
    assert summary["simulation"]["delay"].startswith("replay:")


def test_warmstart_lets_learner_0_train_alone_first(tmp_path):
    """Dean et al.'s warmstart: the first W steps are learner 0's, on top of its share."""
    _, summary, records = run(tmp_path, "warm", SimSettings(warmstart=0.02), shards=1, steps=20)
    warm = round(0.02 * (6000 // 4 // BATCH) * 4)  # 0.02 epoch of the synthetic data's 6000
    assert [r["replica"] for r in pushes(records)][:warm] == [0] * warm
    assert summary["replica_stats"][0]["steps"] == 20 + warm
    assert all(r["steps"] == 20 for r in summary["replica_stats"][1:])
    curve = summary["simulation"]["train_loss"]
    assert 50 <= len(curve) <= 100 and all(np.isfinite(loss) for _, loss in curve)
    assert [e for e, _ in curve] == sorted(e for e, _ in curve)


@pytest.mark.parametrize("budget", ["replica", "job"])
def test_a_job_budget_ends_the_learners_together_and_keeps_the_runs_steps(tmp_path, budget):
    """Learner 0 is 3 times as slow. With its own share it goes on alone long after the others;
    sharing the job's steps, no learner starts a round once they ran out, so after the first
    learner's last push each other one pushes at most once more."""
    _, summary, records = run(tmp_path, budget, SimSettings(delay="slow:factor=3"), shards=1,
                              budget=budget)
    steps = [r["steps"] for r in summary["replica_stats"]]
    assert sum(steps) == 4 * 20 and summary["updates"] == [80]
    order = [r["replica"] for r in pushes(records)]
    first_done = min(max(k for k, q in enumerate(order) if q == i) for i in range(4))
    after = collections.Counter(order[first_done + 1:])
    if budget == "job":
        assert steps[0] < min(steps[1:]) and max(after.values()) <= 1
    else:
        assert steps == [20] * 4 and after[0] > 1


def test_a_simulation_refuses_what_only_ray_can_do(tmp_path):
    from ps.common.errors import UserError
    config = TrainConfig(dataset="synthetic", replicas=2, steps=2, inject_faults="replica:0@1",
                         run_dir=str(tmp_path / "run"))
    with pytest.raises(UserError, match="inject_faults is set, but a simulated job cannot use it"):
        simulate(config, SimSettings(), out=io.StringIO())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "submit", "simulate", "staleness", "report"])
def test_help_prints_and_exits_0(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0 and f"usage: downpour {command}" in capsys.readouterr().out
