"""FlatParams: re-homes a model's trainable parameters and gradients into two flat buffers.

Loading pulled values and cutting gradients for pushes then touch one contiguous vector each,
with no per-tensor copies; the layout is the order of `model.parameters()` (see models.named_shapes).
"""

from typing import Optional

import numpy as np
import torch
from torch import nn


class DeviceSync:
    """Orders host-side work against a device's asynchronous stream. On CPU every copy is
    synchronous, so this base class does nothing; CudaSync is the GPU one, and tests pass a fake."""

    def record(self) -> None:
        """Marks the end of the asynchronous upload just enqueued from the host buffer."""

    def wait(self) -> None:
        """Blocks until the last recorded upload has read the host buffer."""

    def synchronize(self) -> None:
        """Blocks until all queued device work is done (before reading the clock)."""


class CudaSync(DeviceSync):
    def __init__(self, device: torch.device):
        self.device, self._uploaded = device, None

    def record(self) -> None:
        self._uploaded = torch.cuda.Event()
        self._uploaded.record(torch.cuda.current_stream(self.device))

    def wait(self) -> None:
        if self._uploaded is not None:
            self._uploaded.synchronize()
            self._uploaded = None

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


def device_sync(device: torch.device) -> DeviceSync:
    return CudaSync(device) if device.type == "cuda" else DeviceSync()


class FlatParams:
    def __init__(self, model: nn.Module, device: torch.device, sync: Optional[DeviceSync] = None):
        params = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in params)
        self.device = device
        self.sync = sync if sync is not None else device_sync(device)
        self.values = torch.empty(total, dtype=torch.float32, device=device)
        self.grads = torch.zeros(total, dtype=torch.float32, device=device)
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                self.values[offset:offset + n].copy_(p.detach().reshape(-1))
                p.data = self.values[offset:offset + n].view_as(p)
                # autograd accumulates in place into an existing .grad, so backward fills self.grads
                p.grad = self.grads[offset:offset + n].view_as(p)
                offset += n
        on_cpu = device.type == "cpu"
        # On a GPU, pulls and pushes go through page-locked host copies for fast transfers.
        self._host_values = self.values if on_cpu else torch.empty(total, pin_memory=True)
        self._host_grads = self.grads if on_cpu else torch.empty(total, pin_memory=True)

    @property
    def total(self) -> int:
        return self.values.numel()

    def host_values(self) -> np.ndarray:
        """Writable numpy view that pulled pieces are assembled into; call `upload` afterwards.
        Blocks until the previous upload has finished reading it, or the parameters on the device
        could be a torn mix of two fetches."""
        self.sync.wait()
        return self._host_values.numpy()

    def upload(self) -> None:
        if self._host_values is not self.values:
            self.values.copy_(self._host_values, non_blocking=True)
        self.sync.record()  # the copy may still be reading the host buffer: see host_values

    def host_grads(self, source: torch.Tensor) -> np.ndarray:
        """numpy view of `source` (a flat gradient on the model's device) in host memory."""
        if source.device.type == "cpu":
            return source.numpy()
        self._host_grads.copy_(source)  # synchronous: the push serialises these bytes next
        return self._host_grads.numpy()
