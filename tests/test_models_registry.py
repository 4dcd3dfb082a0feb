"""The built-in MLPs the experiments use: they build, have the documented size and shape."""

import pytest
import torch

from replicas.models import MODELS, build_model


@pytest.mark.parametrize("name, params", [("mlp128", 101_770), ("mlp512x3", 932_362)])
def test_builtin_mlp(name, params):
    assert name in MODELS
    model = build_model(name, seed=0)
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10)


def test_num_classes_and_seed():
    a, b = build_model("mlp512x3", seed=3, num_classes=5), build_model("mlp512x3", seed=3, num_classes=5)
    assert a(torch.zeros(1, 1, 28, 28)).shape == (1, 5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
