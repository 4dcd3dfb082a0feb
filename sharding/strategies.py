"""The sharding strategies ("balanced", "range") and make_plan, which validates input and builds a ShardPlan."""

import heapq
from numbers import Integral
from typing import Sequence

from sharding.plan import Piece, PlanError, ShardPlan, TensorSpec

STRATEGIES = ("balanced", "range")


def make_plan(named_shapes: Sequence[tuple[str, Sequence[int]]], num_shards: int,
              strategy: str = "balanced", itemsize: int = 4) -> ShardPlan:
    """Split the model's flat parameter vector (tensors back to back, in the given order) over num_shards."""
    if strategy not in STRATEGIES:
        raise PlanError(f"sharding is {strategy!r}: set --sharding to one of {', '.join(STRATEGIES)}")
    if not _is_int(itemsize) or itemsize < 1:
        raise PlanError(f"itemsize is {itemsize!r}: give the bytes per parameter element, 1 or more (4 for float32)")
    tensors = _layout(named_shapes)
    total = tensors[-1].stop if tensors else 0
    if total == 0:
        raise PlanError(f"the model has {len(tensors)} parameter tensors and 0 elements: "
                        "nothing to shard; check the model definition")
    _check_shards(num_shards, total)
    if strategy == "range":
        shards = _range_shards(total, int(num_shards))
    else:
        shards = _balanced_shards(tensors, int(num_shards), itemsize)
    return ShardPlan(strategy=strategy, tensors=tensors, shards=shards)


def _is_int(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _check_shards(num_shards: int, total: int) -> None:
    if not _is_int(num_shards):
        raise PlanError(f"shards is {num_shards!r}: set --shards to a whole number, 1 or more")
    if num_shards < 1:
        raise PlanError(f"shards is {num_shards}: set --shards to 1 or more")
    if num_shards > total:
        raise PlanError(f"shards is {num_shards} but the model has only {total} parameter elements: "
                        f"set --shards to at most {total}")


def _layout(named_shapes: Sequence[tuple[str, Sequence[int]]]) -> tuple[TensorSpec, ...]:
    """Give each tensor its offset in the flat vector, rejecting bad names and dimensions."""
    tensors, seen, offset = [], set(), 0
    for name, shape in named_shapes:
        if not isinstance(name, str) or not name:
            raise PlanError(f"tensor name {name!r} is not a non-empty string: name every parameter tensor")
        if name in seen:
            raise PlanError(f"tensor name {name!r} appears twice: parameter names must be unique")
        dims = tuple(shape)
        if not all(_is_int(d) and d >= 0 for d in dims):
            raise PlanError(f"tensor {name!r} has shape {dims}: dimensions must be whole numbers >= 0")
        spec = TensorSpec(name=name, shape=tuple(int(d) for d in dims), offset=offset)
        tensors.append(spec)
        seen.add(name)
        offset = spec.stop
    return tuple(tensors)


def _range_shards(total: int, num_shards: int) -> tuple[tuple[Piece, ...], ...]:
    """Equal contiguous slices like numpy.array_split: the first total % n shards get one extra element."""
    base, extra = divmod(total, num_shards)
    shards, start = [], 0
    for i in range(num_shards):
        stop = start + base + (1 if i < extra else 0)
        shards.append((Piece(start, stop),))
        start = stop
    return tuple(shards)


def _chunks(t: TensorSpec, fair: int) -> list[Piece]:
    """Cut a tensor bigger than the fair share on row boundaries, or per element if one row is too big."""
    if t.numel == 0:
        return []  # a zero-size tensor owns no elements, so no shard needs it
    if t.numel <= fair:
        return [Piece(t.offset, t.stop)]
    row = t.numel // t.shape[0]  # numel > fair >= 1 implies at least one dimension
    step = max(1, fair // row) * row if row <= fair else fair
    return [Piece(s, min(s + step, t.stop)) for s in range(t.offset, t.stop, step)]


def _balanced_shards(tensors: tuple[TensorSpec, ...], num_shards: int,
                     itemsize: int) -> tuple[tuple[Piece, ...], ...]:
    """Greedy largest-first placement onto the lightest shard, then fill empty shards and tidy up."""
    total = tensors[-1].stop
    fair = -(-total // num_shards)
    pieces = [p for t in tensors for p in _chunks(t, fair)]
    pieces.sort(key=lambda p: (-p.size, p.start))
    shards: list[list[Piece]] = [[] for _ in range(num_shards)]
    heap = [(0, i) for i in range(num_shards)]  # (bytes, shard index): ties go to the lowest index
    for p in pieces:
        load, i = heapq.heappop(heap)
        shards[i].append(p)
        heapq.heappush(heap, (load + p.size * itemsize, i))
    _fill_empty(shards, itemsize)
    return tuple(_merge(s) for s in shards)


def _fill_empty(shards: list[list[Piece]], itemsize: int) -> None:
    """With fewer pieces than shards some shard stays empty: halve big pieces of heavy shards to feed it."""
    loads = [sum(p.size for p in s) * itemsize for s in shards]
    # Max-heap of donor candidates keyed (-bytes, index), so ties go to the lowest index; entries whose
    # bytes no longer match `loads` are stale and skipped, which keeps this O(n log n), not O(n^2).
    heap = [(-load, i) for i, load in enumerate(loads) if any(p.size > 1 for p in shards[i])]
    heapq.heapify(heap)
    for empty in [i for i, s in enumerate(shards) if not s]:
        donor = _pop_donor(heap, loads)  # num_shards <= total guarantees one exists
        big = max((p for p in shards[donor] if p.size > 1), key=lambda p: (p.size, -p.start))
        mid = big.start + big.size // 2
        shards[donor].remove(big)
        shards[donor].append(Piece(big.start, mid))
        shards[empty].append(Piece(mid, big.stop))
        for i in (donor, empty):
            loads[i] = sum(p.size for p in shards[i]) * itemsize
            if any(p.size > 1 for p in shards[i]):
                heapq.heappush(heap, (-loads[i], i))


def _pop_donor(heap: list[tuple[int, int]], loads: list[int]) -> int:
    """The heaviest shard that still has a piece of size > 1 (lowest index on ties)."""
    while True:
        neg, i = heapq.heappop(heap)
        if -neg == loads[i]:
            return i


def _merge(pieces: list[Piece]) -> tuple[Piece, ...]:
    """Sort by start and join touching pieces, so split can return views more often."""
    merged: list[Piece] = []
    for p in sorted(pieces, key=lambda p: p.start):
        if merged and merged[-1].stop == p.start:
            merged[-1] = Piece(merged[-1].start, p.stop)
        else:
            merged.append(p)
    return tuple(merged)
