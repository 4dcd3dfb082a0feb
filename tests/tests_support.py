"""Helpers shared by the tests that watch a real job while it runs."""

import io
import threading


class ProgressWatch(io.StringIO):
    """The job's output stream; `started` is set at the first progress line, when the actors run."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()

    def write(self, text: str) -> int:
        if "samples/s" in text:
            self.started.set()
        return super().write(text)


def final_values(path, model: str, seed: int):
    """The flat parameters of a run directory's model.pt."""
    import torch

    from replicas.models import build_model
    net = build_model(model, seed)
    net.load_state_dict(torch.load(path / "model.pt"))
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy()


def big_batch_sgd(model: str, seed: int, batch_size: int, replicas: int, steps: int, lr: float):
    """Single-process SGD on the synthetic data whose step k takes every replica's batch k,
    concatenated in replica order: what sync with N replicas of batch B must equal."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from replicas.data import epoch_batches, load_dataset, normalise, partition
    from replicas.models import build_model
    torch.set_num_threads(1)
    data = load_dataset("synthetic", None, seed)
    net = build_model(model, seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    orders = [epoch_batches(partition(len(data.train_labels), replicas, r, seed), batch_size, 0,
                            seed, r) for r in range(replicas)]
    for k in range(steps):
        batch = np.concatenate([order[k] for order in orders])
        opt.zero_grad()
        x = torch.from_numpy(normalise(data.train_images[batch]))
        F.cross_entropy(net(x), torch.from_numpy(data.train_labels[batch])).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy()
