"""Evaluator: pulls a fresh copy of the parameters from every shard and scores it on the test set.

A plain class the job runs as an actor on the driver's node, so parameters never pass through the
driver, yet `save` can write model.pt (and model.json, what it takes to use it) into the run
directory there. `score` is the one scoring function, shared with `downpour eval`.
"""

import json
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import ray
import torch
import torch.nn.functional as F

from replicas.data import MEAN, STD, normalise
from replicas.flat import FlatParams
from replicas.models import build_model
from sharding import ShardPlan

EVAL_BATCH = 1000
META_NAME = "model.json"  # beside model.pt
INPUT_SHAPE = (1, 28, 28)  # one sample as the model takes it: (C, H, W), after `normalise`
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # Fashion-MNIST's labels 0..9
LOAD_SNIPPET = """\
import json, torch
from replicas.models import build_model
meta = json.load(open("model.json"))
model = build_model(meta["model"], meta["seed"])
model.load_state_dict(torch.load("model.pt"))
model.eval()
# x: uint8 (B, 28, 28) -> ((x / 255 - mean) / std) as float32 (B, 1, 28, 28)
"""


def score(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
          batch: int = EVAL_BATCH) -> tuple[float, Optional[float]]:
    """(accuracy, mean cross-entropy) of `model` on uint8 images (N, 28, 28) and int64 labels (N,).

    The loss is None when it is not finite (a diverged model). Batches of `batch` in order, so
    the Evaluator and `downpour eval` get bitwise the same numbers from the same parameters.
    """
    n = len(labels)
    if n == 0:
        raise ValueError("score needs at least one test sample")
    labels = np.array(labels)  # a writable copy keeps torch.from_numpy free of read-only warnings
    correct, loss_sum = 0, 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch):
            x = torch.from_numpy(normalise(images[start:start + batch]))
            y = torch.from_numpy(labels[start:start + batch])
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    loss = loss_sum / n
    return correct / n, (loss if math.isfinite(loss) else None)


def model_meta(model: torch.nn.Module, name: str, seed: int, versions: Optional[list]) -> dict:
    """What model.json says: enough to rebuild, feed and check the saved state_dict."""
    return {
        "model": name, "seed": seed, "input_shape": list(INPUT_SHAPE), "classes": list(CLASSES),
        "normalise": {"mean": MEAN, "std": STD, "formula": "(uint8 / 255 - mean) / std"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "shard_versions": versions,
        "software": {"downpour": _version("downpour"), "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "load": LOAD_SNIPPET,
    }


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class Evaluator:
    def __init__(self, model: str, seed: int, plan: ShardPlan, shards: Sequence,
                 test_images: np.ndarray, test_labels: np.ndarray, timeout_s: float, threads: int = 1):
        torch.set_num_threads(threads)
        self.model_name, self.seed = model, seed
        self.model = build_model(model, seed)
        self.versions: Optional[list[int]] = None  # of the last `evaluate`
        self.flat = FlatParams(self.model, torch.device("cpu"))
        self.plan, self.shards, self.timeout_s = plan, list(shards), timeout_s
        self.images, self.labels = test_images, np.asarray(test_labels)

    def evaluate(self, max_samples: Optional[int] = None) -> dict:
        """Blocks for one pull from every shard and a pass over (up to max_samples of) the test set."""
        self.versions, pulled_at = self._pull(), time.time()
        n = len(self.labels) if max_samples is None else min(max_samples, len(self.labels))
        accuracy, loss = score(self.model, self.images[:n], self.labels[:n], EVAL_BATCH)
        return {"accuracy": accuracy, "loss": loss, "versions": self.versions, "test_samples": n,
                "pulled_at": pulled_at}

    def _pull(self) -> list[int]:
        replies = ray.get([s.pull.remote() for s in self.shards], timeout=self.timeout_s)
        self.plan.assemble([values for _, values in replies], self.flat.host_values())
        return [version for version, _ in replies]

    def use_shards(self, shards: Sequence) -> None:
        """From the job, after a shard was recreated: pull from these from now on."""
        self.shards = list(shards)

    def save(self, path: str) -> None:
        """Writes the parameters of the last `evaluate` (see `write_model`)."""
        write_model(self.model, self.model_name, self.seed, self.versions, path)


def write_model(model: torch.nn.Module, name: str, seed: int, versions: Optional[list],
                path: str) -> None:
    """The parameters as a plain torch state_dict at `path`, and model.json beside it."""
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    meta = model_meta(model, name, seed, versions)
    Path(path).with_name(META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
