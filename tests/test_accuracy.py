"""Training on the real Fashion-MNIST: a short check by default, the full targets under -m slow."""

import pytest

from ps.common.config import TrainConfig
from ps.driver.train import train

pytestmark = pytest.mark.ray


def run(tmp_path, fashion_dir, **overrides):
    config = TrainConfig(data_dir=str(fashion_dir), run_dir=str(tmp_path / "run"), **overrides)
    _, summary = train(config)
    assert summary["status"] == "completed", summary["error"]
    return summary


def test_mlp_learns_fashion_mnist_in_one_epoch(ray_session, tmp_path, fashion_dir):
    summary = run(tmp_path, fashion_dir, model="mlp", replicas=2, shards=2, epochs=1, eval_every=0)
    assert summary["test_accuracy"] >= 0.80
    assert summary["train_samples"] == 2 * (30000 // 32) * 32


@pytest.mark.slow
def test_cnn_four_replicas_three_epochs_inverse_reaches_090(ray_session, tmp_path, fashion_dir):
    summary = run(tmp_path, fashion_dir, model="cnn", replicas=4, shards=2, epochs=3, lr_rule="inverse")
    assert summary["test_accuracy"] >= 0.90


@pytest.mark.slow
def test_mlp_four_replicas_three_epochs_reaches_086(ray_session, tmp_path, fashion_dir):
    summary = run(tmp_path, fashion_dir, model="mlp", replicas=4, epochs=3)
    assert summary["test_accuracy"] >= 0.86
