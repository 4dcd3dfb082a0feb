"""One backward pass of a replica: the gradient of the mean cross-entropy over a batch, into the
flat gradient buffer. Shared by the Ray replica and the simulator's logical learners, so both
compute bitwise the same gradients from the same parameters and batch."""

import numpy as np
import torch
import torch.nn.functional as F

from replicas.data import normalise
from replicas.flat import FlatParams


def backward(model: torch.nn.Module, flat: FlatParams, images: np.ndarray, labels: np.ndarray,
             batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """Fills `flat.grads`; returns the batch's loss (detached, not synchronised)."""
    x = torch.from_numpy(normalise(images[batch])).to(device, non_blocking=True)
    y = torch.from_numpy(labels[batch]).to(device, non_blocking=True)
    flat.grads.zero_()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach()
