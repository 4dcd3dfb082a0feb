"""Evaluator: pulls a fresh copy of the parameters from every shard and scores it on the test set.

A plain class the job runs as an actor on the driver's node, so parameters never pass through the
driver, yet `save` can write model.pt into the run directory there.
"""

import math
import time
from typing import Optional, Sequence

import numpy as np
import ray
import torch
import torch.nn.functional as F

from replicas.data import normalise
from replicas.flat import FlatParams
from replicas.models import build_model
from sharding import ShardPlan

EVAL_BATCH = 1000


class Evaluator:
    def __init__(self, model: str, seed: int, plan: ShardPlan, shards: Sequence,
                 test_images: np.ndarray, test_labels: np.ndarray, timeout_s: float, threads: int = 1):
        torch.set_num_threads(threads)
        self.model = build_model(model, seed)
        self.flat = FlatParams(self.model, torch.device("cpu"))
        self.plan, self.shards, self.timeout_s = plan, list(shards), timeout_s
        # labels are small: a writable copy keeps torch.from_numpy free of read-only warnings
        self.images, self.labels = test_images, np.array(test_labels)

    def evaluate(self, max_samples: Optional[int] = None) -> dict:
        """Blocks for one pull from every shard and a pass over (up to max_samples of) the test set."""
        versions, pulled_at = self._pull(), time.time()
        n = len(self.labels) if max_samples is None else min(max_samples, len(self.labels))
        correct, loss_sum = 0, 0.0
        self.model.eval()
        with torch.no_grad():
            for start in range(0, n, EVAL_BATCH):
                x = torch.from_numpy(normalise(self.images[start:min(n, start + EVAL_BATCH)]))
                y = torch.from_numpy(self.labels[start:min(n, start + EVAL_BATCH)])
                logits = self.model(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
        loss = loss_sum / n
        return {"accuracy": correct / n, "loss": loss if math.isfinite(loss) else None,
                "versions": versions, "test_samples": n, "pulled_at": pulled_at}

    def _pull(self) -> list[int]:
        replies = ray.get([s.pull.remote() for s in self.shards], timeout=self.timeout_s)
        self.plan.assemble([values for _, values in replies], self.flat.host_values())
        return [version for version, _ in replies]

    def save(self, path: str) -> None:
        """Writes the parameters of the last `evaluate` as a plain torch state_dict."""
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch.save(state, path)
