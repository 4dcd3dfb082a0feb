"""Pure functions over event-log records (as `ps.obs.events.read_events` yields them): kinds,
the run's clock, the shard layouts, time bins and rates. Shared by the figures and the report."""

from typing import Callable, Iterable, Optional

import numpy as np

TIME_BINS = 60


def of_kind(records: Iterable[dict], kind: str) -> list[dict]:
    """Records of one kind; kinds this module does not know are ignored everywhere."""
    return [r for r in records if r.get("kind") == kind]


def header_of(records: list[dict]) -> dict:
    headers = of_kind(records, "header")
    return headers[0] if headers else {}


def layouts(records: Iterable[dict]) -> list[dict]:
    """The header and every `resume` record, in log order: each gives the shards and replicas of
    the records after it (a resume with a re-shard changes `shards` and `shard_sizes`)."""
    return [r for r in records if r.get("kind") in ("header", "resume")]


def shard_count(records: list[dict]) -> int:
    """The most shards any layout had: per-shard tables get a row for every id ever used, so a
    re-shard 3 -> 2 keeps shard 2's row for the pushes before it."""
    return max((r.get("shards") or 0 for r in layouts(records)), default=0)


def replica_count(records: list[dict]) -> int:
    return max((r.get("replicas") or 0 for r in layouts(records)), default=0)


def shard_sizes(records: list[dict]) -> list[Optional[int]]:
    """Elements of each shard id, from the latest layout that has that id (None if none says)."""
    sizes: list[Optional[int]] = [None] * shard_count(records)
    for layout in layouts(records):
        for shard, size in enumerate(layout.get("shard_sizes") or []):
            if shard < len(sizes):
                sizes[shard] = size
    return sizes


def run_clock(records: list[dict]) -> tuple[float, float]:
    """(start, span): the header's time, and seconds from it to the last record of any kind."""
    times = [r["t"] for r in records if isinstance(r.get("t"), (int, float))]
    start = header_of(records).get("t", min(times, default=0.0))
    span = max(times, default=start) - start
    return start, max(span, 1e-3)  # a run whose records share one time still gets a drawable axis


def time_edges(span: float, bins: int = TIME_BINS) -> np.ndarray:
    return np.linspace(0.0, span, bins + 1)


def rate_per_bin(times, edges: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Events (times `weight`) per second in each time bin."""
    counts, _ = np.histogram(np.asarray(times, dtype=float), bins=edges)
    return counts * weight / np.diff(edges)


def stat_per_bin(times, values, edges: np.ndarray,
                 stat: Callable[[np.ndarray], float]) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, stat of the values in each bin) for the bins holding any value."""
    times, values = np.asarray(times, dtype=float), np.asarray(values)
    index = np.clip(np.digitize(times, edges) - 1, 0, len(edges) - 2)
    centres, stats = [], []
    for b in np.unique(index):
        centres.append((edges[b] + edges[b + 1]) / 2)
        stats.append(stat(values[index == b]))
    return np.asarray(centres), np.asarray(stats)


def nearest_rank(p: float) -> Callable[[np.ndarray], float]:
    """The same percentile as ps.staleness (an observed value, not an interpolation)."""
    return lambda values: float(np.percentile(values, p, method="inverted_cdf"))


def samples_per_push(header: dict) -> Optional[int]:
    """n_push x batch_size when the header says both; older logs do not."""
    batch, n_push = header.get("batch_size"), header.get("n_push")
    return batch * n_push if batch and n_push else None


def push_times(records: list[dict], key: str, shard: Optional[int] = None) -> dict[int, list[float]]:
    """Times of pushes grouped by record[key] (keys sorted), optionally only those to one shard."""
    groups: dict[int, list[float]] = {}
    for r in of_kind(records, "push"):
        if shard is None or r["shard"] == shard:
            groups.setdefault(r[key], []).append(r["t"])
    return {k: groups[k] for k in sorted(groups)}


def active_rate(times: list[float], per_event: float = 1.0) -> Optional[float]:
    """Events after the first over the time from first to last: the first only marks the start."""
    if len(times) < 2 or max(times) == min(times):
        return None if len(times) < 2 else 0.0
    return (len(times) - 1) * per_event / (max(times) - min(times))
