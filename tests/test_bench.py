"""The benchmark baselines run and measure something (their speed is the harness's business), and
the report holds every row it was given."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import baselines  # noqa: E402
import bench  # noqa: E402

from replicas.data import load_dataset  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", None, 0)


def test_single_process_torch_trains_and_reports_a_rate(data):
    assert baselines.single_process(data, "mlp", 32, steps=3, threads=1) > 0


def test_batches_follow_the_replica_partition(data):
    x, y = next(baselines.batches_of(data, 2, 1, 16))
    assert tuple(x.shape) == (16, 1, 28, 28) and tuple(y.shape) == (16,)


@pytest.mark.ray
def test_the_ray_parameter_server_pattern_runs(ray_session, data):
    assert baselines.ray_ps_example(data, "mlp", 32, steps=4, workers=2) > 0


def test_two_single_thread_processes_at_once_report_their_summed_rate(data):
    assert baselines.concurrent_single(data, "mlp", 32, steps=3, processes=2) > 0


def test_time_to_accuracy_stops_at_the_target_or_says_it_was_not_reached(data):
    reached = baselines.time_to_accuracy(data, "mlp", 32, 1, target=0.0, max_epochs=1, eval_every=0.1)
    assert reached["seconds"] > 0 and reached["epochs"] <= 0.1
    missed = baselines.time_to_accuracy(data, "mlp", 32, 1, target=1.01, max_epochs=0.2, eval_every=0.1)
    assert missed["seconds"] is None and missed["epochs"] >= 0.2 and 0 <= missed["accuracy"] <= 1


def run_result(rate, per_step=False):
    r = {"samples_per_s": bench.spread([rate, rate + 2, rate - 2])}
    if per_step:
        r.update({key: bench.spread([1.0 + i / 2]) for i, key in enumerate(bench.STEP_KEYS)})
    return r


def fake_results(names):
    return {m: {n: run_result(100.0 + i, n.startswith("downpour")) for i, n in enumerate(names)}
            for m in ("mlp", "cnn")}


def fake_micro():
    return {"bandwidth": [{"floats": 1000, "ray_GBps": 0.01, "shm_GBps": 0.05, "memcpy_GBps": 5.0,
                           "ray_ratio": 0.002, "shm_ratio": 0.01},
                          {"floats": 10_000_000, "ray_GBps": 1.2, "shm_GBps": 2.4, "memcpy_GBps": 6.0,
                           "ray_ratio": 0.2, "shm_ratio": 0.4}],
            "pushes_per_s_100k": {"ray": {"driver": 640.0, "1": 600.0, "2": 700.0, "4": 710.0},
                                  "shm": {"1": 4000.0, "2": 5500.0, "4": 5200.0}},
            "call_cost": {"empty": {"wall_ms": 2.0, "caller_cpu_ms": 0.9, "actor_cpu_ms": 0.8}}}


def fake_report(names, **parts):
    results = fake_results(names)
    report = {"command": "python scripts/bench.py", "date": "2026-11-22", "machine": {"cores": 2},
              "reps": 3, "steps": {"mlp": 1000, "cnn": 300}, "results": results,
              "ratios": {m: bench.ratios(m, results[m]) for m in results}, **parts}
    report["targets"] = bench.targets(report)
    return report


def render(tmp_path, report) -> str:
    bench.write_markdown(tmp_path / "b.md", report)
    return (tmp_path / "b.md").read_text()


DOWNPOUR = ["downpour 2x2 (ray)", "downpour 2x2 (shm)", "downpour 2x2 (ray), every 4 steps",
            "downpour 2x2 (shm), every 4 steps", "downpour 4x2 (shm)"]  # each shm beside its ray


def test_the_full_run_measures_both_transports_and_the_targeted_rows():
    names = list(bench.downpour_systems(None, "mlp", 100, compare=False))
    assert names == DOWNPOUR
    assert {row for _, row, _ in bench.TARGETS} <= set(names)
    compare = list(bench.downpour_systems(None, "mlp", 100, compare=True))
    assert compare == [bench.downpour_name(r, s, e, t) for r, s, e in bench.SETTINGS for t in ("ray", "shm")]


def test_the_per_step_breakdown_leaves_the_rest_of_the_time_to_other():
    stats = [{"steps": 10, "t_first": 0.0, "t_last": 1.0, "compute_s": 0.5, "fetch_wait_s": 0.2,
              "push_s": 0.1, "push_wait_s": 0.1},
             {"steps": 10, "t_first": 0.0, "t_last": 1.0, "compute_s": 0.5, "fetch_wait_s": 0.2}]
    ms = bench.per_step_ms(stats)
    assert ms == pytest.approx({"compute_ms": 50.0, "fetch_wait_ms": 20.0, "push_ms": 5.0,
                                "push_wait_ms": 5.0, "other_ms": 20.0})


def test_the_markdown_report_holds_every_measured_row(tmp_path):
    names = ["torch 1 thread", "torch 2 threads", "torch 1 thread, 2 processes at once", "DDP gloo 2x1",
             "Ray PS example, 2 workers", *DOWNPOUR]
    tta = {"torch 2 threads": {"seconds": 50.0, "epochs": 1.5, "accuracy": 0.9},
           "downpour 4x2 (shm), inverse": {"seconds": 45.0, "epochs": 1.4, "accuracy": 0.9},
           "downpour 4x2 (ray), inverse": {"seconds": None, "epochs": 3, "accuracy": 0.89}}
    report = fake_report(names, time_to_accuracy=tta, scaling_steps=2000,
                         scaling=[{"replicas": r, "shards": s, "samples_per_s": 10.0 * r + s}
                                  for r in bench.SCALING_REPLICAS for s in bench.SCALING_SHARDS],
                         micro=fake_micro())
    text = render(tmp_path, report)
    sections = {part.splitlines()[0].split(",")[0]: part for part in text.split("\n## ")[1:]}
    for model in ("MLP", "CNN"):
        for name in names:
            assert f"| {name} |" in sections[model], (model, name)
        for name in DOWNPOUR:  # every downpour row against the ceiling of two workers
            assert f"| {name} / torch 1 thread, 2 processes at once |" in sections[model], (model, name)
    # 2x2 (shm) is the 7th row: 106 samples/s; its breakdown is 1.0, 1.5, 2.0, 2.5, 3.0
    assert "| downpour 2x2 (shm) | 106 | 104 to 108 | 1.00 | 1.50 | 2.00 | 2.50 | 3.00 |" in text
    assert "| torch 1 thread | 100 | 98 to 102 |  |  |  |  |  |" in text
    assert "| downpour 2x2 (shm) / DDP gloo 2x1 | 1.03 | >= 1.15 |" in sections["CNN"]  # 106 / 103
    assert "| downpour 2x2 (shm) / Ray PS example, 2 workers | 1.02 | >= 3 |" in sections["MLP"]
    assert "| downpour 2x2 (shm) / downpour 2x2 (ray) | 1.01 | - |" in text  # 106 / 105
    assert "| downpour 4x2 (ray), inverse | not reached | 3.00 | 0.8900 | - |  |" in text
    assert "| downpour 4x2 (shm), inverse | 45 | 1.40 | 0.9000 | 0.90 |  |" in text
    assert "| 8 | 81 | 82 | 84 |" in text
    assert "| 10,000,000 | 1.200 | 2.400 | 6.00 | 0.200 | 0.400 |" in text
    assert "| the driver | 640 | - |" in text and "| 1 actor | 600 | 4000 |" in text
    assert "| 2 actors at once | 700 | 5500 |" in text
    assert "| empty | 2.00 | 0.90 | 0.80 |" in text
    targets = sections["Targets"]
    assert len([line for line in targets.splitlines() if line.endswith((" yes |", " no |"))]) == 7
    assert "| CNN: downpour 2x2 (shm) / DDP gloo 2x1 | 1.03 | >= 1.15 | no |" in targets
    assert "| one shard: pushes/s of 100K floats from 2 actors at once (shm) | 5500 | >= 5000 | yes |" in targets
    assert "| one shard: 10,000,000 floats fetch+push (shm) / memcpy | 0.40 | >= 0.3 | yes |" in targets
    assert "downpour 4x2 (shm), inverse: time to 0.90 / torch 2 threads | 0.90 | <= 1.0 | yes |" in targets


def test_a_compare_report_renders_shm_against_ray_and_no_targets(tmp_path):
    report = fake_report(list(bench.downpour_systems(None, "mlp", 100, compare=True)), mode="compare")
    assert report["targets"] == []
    text = render(tmp_path, report)
    assert "## Targets" not in text and "`--compare`" in text
    assert "| downpour 4x2 (shm) / downpour 4x2 (ray) | 1.01 | - |" in text  # 105 / 104
