"""Asynchronous local SGD (Liu et al. 2024; DiLoCo-style): a replica's own optimizer steps.

From each fetch (the anchor) the replica takes H steps of its own optimizer on its own data, then
pushes the parameter delta anchor - now as a pseudo-gradient; the shards' optimizer is the outer
one (`--optimizer nesterov` or `delayed_nesterov`, `--lr` its outer learning rate). This is
Downpour with n_fetch = n_push = H whose replica steps with a real optimizer and pushes what it
moved rather than the sum of its gradients. The inner optimizer's state lives across rounds.
"""

import torch

from replicas.flat import FlatParams

INNER = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


class LocalSteps:
    def __init__(self, flat: FlatParams, lr: float, optimizer: str):
        self.flat = flat
        # a Parameter over the flat buffer itself: the inner optimizer moves the model's weights
        self.param = torch.nn.Parameter(flat.values, requires_grad=False)
        self.param.grad = flat.grads
        self.inner = INNER[optimizer]([self.param], lr=lr)
        self._anchor = torch.empty_like(flat.values)
        self._delta = torch.empty_like(flat.values)

    def anchor(self) -> None:
        """The parameters just installed: the H steps start here."""
        self._anchor.copy_(self.flat.values)

    def step(self) -> None:
        self.inner.step()

    def delta(self) -> torch.Tensor:
        """anchor - now: what the last H steps moved, pushed as a gradient would be."""
        return torch.sub(self._anchor, self.flat.values, out=self._delta)
