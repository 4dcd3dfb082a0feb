"""The dataset layer: Fashion-MNIST or a synthetic stand-in, per-replica partitions and batches.

Pure numpy + stdlib, so the parameter server and CLI can import it without torch or ray.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fashion_mnist import (
    FASHION_MNIST_SHA256,
    FASHION_MNIST_URL,
    DataError,
    find_fashion_mnist,
    load_fashion_mnist_arrays,
    read_idx,
)

__all__ = [
    "DATASETS", "FASHION_MNIST_SHA256", "FASHION_MNIST_URL", "MEAN", "STD", "DataError", "Dataset",
    "epoch_batches", "find_fashion_mnist", "load_dataset", "normalise", "partition", "read_idx",
    "synthetic",
]

DATASETS = ("fashion-mnist", "synthetic")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel mean/std on [0, 1]
NUM_CLASSES = 10
_SIDE = 28
# Prototypes come from a fixed seed so every `seed` samples the same task;
# the seed only changes which noisy samples are drawn.
_PROTOTYPE_SEED = 20240611
# One lookup table instead of per-batch float maths: exact and a single gather.
_NORMALISE_LUT = ((np.arange(256, dtype=np.float64) / 255.0 - MEAN) / STD).astype(np.float32)


# eq=False: field-wise == on arrays is ambiguous and would also make instances unhashable.
@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int = NUM_CLASSES
    source: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.shape[1:] != (_SIDE, _SIDE):
                got = f"{images.dtype} {images.shape}"
                raise ValueError(f"{split}_images must be uint8 (N, 28, 28), got {got}")
            if labels.dtype != np.int64 or labels.shape != (len(images),):
                got = f"{labels.dtype} {labels.shape}"
                raise ValueError(f"{split}_labels must be int64 ({len(images)},), got {got}")

    def __repr__(self) -> str:  # the default repr would print the arrays
        return (
            f"Dataset(name={self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"num_classes={self.num_classes}, source={self.source!r})"
        )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    environ: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    system_dir: Path | None = None,
    download: bool = True,
) -> Dataset:
    """Load dataset `name`; `seed` only affects "synthetic", the lookup arguments only "fashion-mnist"."""
    if name == "synthetic":
        return synthetic(seed)
    if name != "fashion-mnist":
        raise DataError(f"dataset is {name!r}: choose one of {', '.join(DATASETS)}")
    folder = find_fashion_mnist(
        data_dir, environ=environ, cache_dir=cache_dir, system_dir=system_dir, download=download
    )
    return Dataset(name=name, source=str(folder), **load_fashion_mnist_arrays(folder))


def synthetic(seed: int, train_size: int = 6000, test_size: int = 1000) -> Dataset:
    """Ten noisy classes around fixed random prototypes: learnable by an MLP, not by one pixel."""
    if train_size < NUM_CLASSES or test_size < NUM_CLASSES:
        raise ValueError(f"train_size and test_size must be >= {NUM_CLASSES} so every class appears")
    prototypes = _prototypes()
    rng = np.random.default_rng(seed)
    train_images, train_labels = _synthetic_split(rng, prototypes, train_size)
    test_images, test_labels = _synthetic_split(rng, prototypes, test_size)
    return Dataset(
        name="synthetic",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source=f"synthetic seed={seed}",
    )


def _prototypes() -> np.ndarray:
    """(10, 28, 28) float prototypes in [0, 1], smoothed so they look like blobs, not static."""
    raw = np.random.default_rng(_PROTOTYPE_SEED).random((NUM_CLASSES, _SIDE + 2, _SIDE + 2))
    # 3x3 box blur: neighbouring pixels correlate, so no single pixel carries the class alone.
    blurred = sum(raw[:, i : i + _SIDE, j : j + _SIDE] for i in range(3) for j in range(3)) / 9.0
    lo = blurred.min(axis=(1, 2), keepdims=True)
    hi = blurred.max(axis=(1, 2), keepdims=True)
    return (blurred - lo) / (hi - lo)


def _synthetic_split(
    rng: np.random.Generator, prototypes: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    # Balanced: class counts differ by at most one, in a shuffled order.
    labels = rng.permutation(np.arange(size, dtype=np.int64) % NUM_CLASSES)
    contrast = rng.uniform(0.6, 1.0, size=(size, 1, 1))  # per-sample brightness variation
    # Tuned so a linear model reaches ~98% after one epoch (not 100%), while
    # the best single pixel stays near 15%; the mean pixel is close to MEAN.
    noise = rng.normal(0.0, 0.4, size=(size, _SIDE, _SIDE))
    pixels = 0.1 + 0.5 * contrast * prototypes[labels] + noise
    images = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(images), labels


def _count(value: object, name: str, minimum: int) -> int:
    """`value` as an int >= minimum (numpy integers welcome, bools and floats not)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def partition(num_samples: int, num_parts: int, part: int, seed: int) -> np.ndarray:
    """Indices of part `part` of `num_parts` disjoint, covering parts; all replicas must share `seed`."""
    num_samples = _count(num_samples, "num_samples", 1)
    num_parts = _count(num_parts, "num_parts", 1)
    part = _count(part, "part", 0)
    seed = _count(seed, "seed", 0)
    if num_parts > num_samples:
        raise ValueError(
            f"num_parts ({num_parts}) exceeds num_samples ({num_samples}): a part would be empty"
        )
    if part >= num_parts:
        raise ValueError(f"part must be in 0..{num_parts - 1}, got {part}")
    order = np.random.default_rng(seed).permutation(num_samples)
    return np.array_split(order, num_parts)[part].astype(np.int64)


def epoch_batches(
    indices: np.ndarray, batch_size: int, epoch: int, seed: int, replica: int
) -> list[np.ndarray]:
    """Shuffled batches of exactly `batch_size` for one epoch; the incomplete tail is dropped.

    Returns [] when there are fewer than `batch_size` indices.
    """
    batch_size = _count(batch_size, "batch_size", 1)
    key = [_count(seed, "seed", 0), _count(replica, "replica", 0), _count(epoch, "epoch", 0)]
    indices = np.asarray(indices)
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
    shuffled = np.random.default_rng(key).permutation(indices)
    full = len(shuffled) // batch_size
    return [shuffled[i * batch_size : (i + 1) * batch_size] for i in range(full)]


def normalise(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (B, 28, 28) -> float32 (B, 1, 28, 28) as (x/255 - MEAN)/STD."""
    images = np.asarray(images_uint8)
    # Refuse floats: an already-scaled batch would silently be normalised twice.
    if images.dtype != np.uint8:
        raise ValueError(f"normalise expects uint8 pixels, got {images.dtype}")
    if images.shape[-2:] != (_SIDE, _SIDE):
        raise ValueError(f"normalise expects (B, 28, 28) images, got shape {images.shape}")
    return _NORMALISE_LUT[images].reshape(-1, 1, _SIDE, _SIDE)
