"""Shard-plan data types: which ranges of the flat parameter vector each parameter-server shard owns,
and how to split a flat vector into per-shard arrays and assemble them back."""

from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property
from math import prod
from typing import Sequence

import numpy as np


class PlanError(ValueError):
    """A sharding request that cannot be satisfied; the message names the field and the fix."""


@dataclass(frozen=True)
class TensorSpec:
    """One named parameter tensor and where it starts in the flat parameter vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return prod(self.shape)  # prod(()) == 1, which is right for a scalar

    @property
    def stop(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class Piece:
    """The half-open range [start, stop) of the flat parameter vector."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ShardPlan:
    """The pieces of the flat parameter vector owned by each shard (each shard's pieces sorted by start)."""

    strategy: str
    tensors: tuple[TensorSpec, ...]
    shards: tuple[tuple[Piece, ...], ...]

    def __post_init__(self) -> None:
        # A bad plan would silently drop or double-apply gradient elements, so refuse to build one.
        _check_layout(self.tensors)
        _check_cover(self.shards, self.total)

    @property
    def total(self) -> int:
        return self.tensors[-1].stop if self.tensors else 0

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def shard_numel(self, shard: int) -> int:
        return sum(p.size for p in self.shards[shard])

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """One 1-D array per shard; a single-piece shard gets a view of `flat`, not a copy."""
        self._check_flat(flat, "flat")
        parts = []
        for pieces in self.shards:
            if len(pieces) == 1:
                parts.append(flat[pieces[0].start:pieces[0].stop])
            else:
                parts.append(np.concatenate([flat[p.start:p.stop] for p in pieces]))
        return parts

    def assemble(self, parts: Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
        """Inverse of split: write every shard's values into `out` and return it."""
        if len(parts) != self.num_shards:
            raise ValueError(f"assemble got {len(parts)} parts but the plan has {self.num_shards} shards: "
                             "pass exactly one array per shard, in shard order")
        self._check_flat(out, "out")
        for shard, values in enumerate(parts):
            self.assemble_shard(shard, values, out)
        return out

    def assemble_shard(self, shard: int, values: np.ndarray, out: np.ndarray) -> None:
        """Write one shard's values into `out` at that shard's pieces (replies may arrive one by one)."""
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard is {shard} but the plan has {self.num_shards} shards: use 0..{self.num_shards - 1}")
        self._check_flat(out, "out")
        values = np.asarray(values)
        expected = self.shard_numel(shard)
        if values.size != expected:
            raise ValueError(f"shard {shard} values have {values.size} elements but the shard owns {expected}: "
                             "send back exactly the array that split produced for this shard")
        values = values.reshape(-1)
        pos = 0
        for p in self.shards[shard]:
            out[p.start:p.stop] = values[pos:pos + p.size]
            pos += p.size

    def shard_tensors(self, shard: int) -> list[tuple[str, int, int]]:
        """(tensor name, first element, stop element) within each tensor the shard touches, in flat order.

        A tensor appears once per contiguous range, so twice if the shard holds two separate chunks of it.
        """
        found = []
        for p in self.shards[shard]:
            # Start at the last tensor beginning at or before the piece; offsets are sorted.
            i = bisect_right(self._offsets, p.start) - 1
            while i < len(self.tensors) and self.tensors[i].offset < p.stop:
                t = self.tensors[i]
                lo, hi = max(p.start, t.offset), min(p.stop, t.stop)
                if lo < hi:
                    found.append((t.name, lo - t.offset, hi - t.offset))
                i += 1
        return found

    @cached_property
    def _offsets(self) -> list[int]:
        return [t.offset for t in self.tensors]

    def _check_flat(self, arr: np.ndarray, what: str) -> None:
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.shape[0] != self.total:
            got = arr.shape if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ValueError(f"{what} must be a 1-D numpy array of length {self.total} (the flat parameter "
                             f"vector), got {got}")


def _check_layout(tensors: tuple[TensorSpec, ...]) -> None:
    """Tensors must be laid out back to back from 0, in order, with unique names."""
    pos, seen = 0, set()
    for t in tensors:
        if t.name in seen:
            raise PlanError(f"tensor name {t.name!r} appears twice: parameter names must be unique")
        if t.offset != pos or any(d < 0 for d in t.shape):
            raise PlanError(f"tensor {t.name!r} has offset {t.offset} and shape {t.shape}: "
                            f"expected offset {pos} and non-negative dimensions")
        seen.add(t.name)
        pos = t.stop


def _check_cover(shards: tuple[tuple[Piece, ...], ...], total: int) -> None:
    """Every shard non-empty, pieces sorted, and all pieces together tile [0, total) exactly once."""
    for i, pieces in enumerate(shards):
        if not pieces or any(p.size <= 0 for p in pieces):
            raise PlanError(f"shard {i} is empty or has an empty piece: every shard must own elements")
        if any(a.stop > b.start for a, b in zip(pieces, pieces[1:])):
            raise PlanError(f"shard {i} pieces overlap or are not sorted by start")
    pos = 0
    for p in sorted((p for pieces in shards for p in pieces), key=lambda p: p.start):
        if p.start != pos:
            raise PlanError(f"pieces leave a gap or overlap at element {min(pos, p.start)}: "
                            "every element must belong to exactly one shard")
        pos = p.stop
    if pos != total:
        raise PlanError(f"pieces cover {pos} of {total} elements: every element must belong to a shard")
