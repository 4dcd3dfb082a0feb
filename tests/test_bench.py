"""The benchmark baselines run and measure something (their speed is the harness's business)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import baselines  # noqa: E402

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
