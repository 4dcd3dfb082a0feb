"""The experiments' model, as the protocol preprocesses its inputs (docs/experiments.md).

The protocol's MLP sees mean-subtracted pixels on [0, 1]; downpour's data layer hands every model
(x/255 - MEAN)/STD. `mlp128_centred` undoes the division by STD in its first operation, so it
trains on x/255 - MEAN, the protocol's scale, and the protocol's learning rates keep their
meaning. A user plug-in model (`--model experiments.models:mlp128_centred`), not a built-in.
"""

from torch import nn

from replicas.data import STD


class Rescale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def mlp128_centred(num_classes: int = 10) -> nn.Module:
    """784-128-10 (101,770 parameters) on x/255 - MEAN."""
    return nn.Sequential(Rescale(STD), nn.Flatten(), nn.Linear(28 * 28, 128), nn.ReLU(),
                         nn.Linear(128, num_classes))
