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
        r.update(compute_ms=bench.spread([3.0]), overhead_ms=bench.spread([1.5]))
    return r


def test_the_markdown_report_holds_every_measured_row(tmp_path):
    names = ["torch 1 thread", "torch 2 threads", "torch 1 thread, 2 processes at once", "DDP gloo 2x1",
             "Ray PS example, 2 workers", "downpour 2x2", "downpour 2x2, every 4 steps", "downpour 4x2"]
    results = {m: {n: run_result(100.0 + i, n.startswith("downpour")) for i, n in enumerate(names)}
               for m in ("mlp", "cnn")}
    report = {"command": "python scripts/bench.py", "date": "2026-11-22", "machine": {"cores": 2},
              "reps": 3, "steps": {"mlp": 1000, "cnn": 300}, "results": results,
              "ratios": {m: bench.ratios(m, results[m]) for m in results},
              "time_to_accuracy": {"torch 2 threads": {"seconds": 50.0, "epochs": 1.5, "accuracy": 0.9},
                                   "downpour 4x2, inverse": {"seconds": None, "epochs": 3, "accuracy": 0.89}},
              "scaling_steps": 2000, "scaling": [{"replicas": r, "shards": s, "samples_per_s": 10.0 * r + s}
                          for r in bench.SCALING_REPLICAS for s in bench.SCALING_SHARDS],
              "micro": {"bandwidth": [{"floats": 1000, "pull_push_GBps": 0.01, "memcpy_GBps": 5.0,
                                       "ratio": 0.002}], "pushes_per_s_100k": 640.0,
                        "pushes_per_s_100k_from_actors": {"2": 700.0},
                        "call_cost": {"empty": {"wall_ms": 2.0, "caller_cpu_ms": 0.9, "actor_cpu_ms": 0.8}}}}
    bench.write_markdown(tmp_path / "b.md", report)
    text = (tmp_path / "b.md").read_text()
    sections = {part.split(",")[0]: part for part in text.split("\n## ")[1:]}
    for model in ("MLP", "CNN"):
        for name in names:
            assert f"| {name} |" in sections[model], (model, name)
    assert "| downpour 2x2 | 105 | 103 to 107 | 3.00 | 1.50 |" in text
    assert "| downpour 2x2 / DDP gloo 2x1 | 1.02 | >= 1.25 |" in text  # 105 / 103
    assert "| downpour 4x2, inverse | not reached | 3.00 | 0.8900 | - |  |" in text
    assert "| 8 | 81 | 82 | 84 |" in text
    assert "| 1,000 | 0.010 | 5.00 | 0.002 |" in text and "**640 per second**" in text
    assert "700 from 2 actors at once" in text and "| empty | 2.00 | 0.90 | 0.80 |" in text
