"""Staleness statistics and text histograms: pure functions over arrays of tau and event records.

Percentiles are nearest-rank (numpy's inverted_cdf): p90 is the smallest tau that at least 90% of
pushes do not exceed, always an observed integer.
"""

from typing import Iterable

import numpy as np

PERCENTILES = (50, 90, 99)
BAR_WIDTH = 40


def summarize(taus) -> dict:
    """mean, p50, p90, p99, max and count of an array of staleness values (None when empty)."""
    taus = np.asarray(taus, dtype=np.int64)
    if taus.size == 0:
        return {"count": 0, "mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    pcts = np.percentile(taus, PERCENTILES, method="inverted_cdf")
    return {"count": int(taus.size), "mean": float(taus.mean()),
            **{f"p{p}": int(v) for p, v in zip(PERCENTILES, pcts)}, "max": int(taus.max())}


def histogram(taus) -> list[tuple[int, int]]:
    """(tau, count) for every tau from 0 to the max, zeros included, so gaps show."""
    taus = np.asarray(taus, dtype=np.int64)
    if taus.size == 0:
        return []
    counts = np.bincount(taus)
    return [(tau, int(n)) for tau, n in enumerate(counts)]


def taus_by(records: Iterable[dict], key: str) -> dict[int, np.ndarray]:
    """tau of accepted pushes grouped by record[key] ('shard' or 'replica'), keys sorted."""
    groups: dict[int, list[int]] = {}
    for r in records:
        if r.get("kind") == "push" and r.get("accepted"):
            groups.setdefault(r[key], []).append(r["tau"])
    return {k: np.asarray(groups[k], dtype=np.int64) for k in sorted(groups)}


def format_summary(stats: dict) -> str:
    if not stats["count"]:
        return "no accepted pushes"
    return (f"pushes {stats['count']}  mean {stats['mean']:.2f}  p50 {stats['p50']}  "
            f"p90 {stats['p90']}  p99 {stats['p99']}  max {stats['max']}")


def format_histogram(taus, width: int = BAR_WIDTH) -> str:
    """One line per tau: value, count, share, and a bar scaled to the largest count."""
    rows = histogram(taus)
    if not rows:
        return "  (empty)"
    total, top = sum(n for _, n in rows), max(n for _, n in rows)
    lines = []
    for tau, n in rows:
        bar = "#" * (round(width * n / top) if n else 0)
        lines.append(f"  tau {tau:>4} {n:>9} {100 * n / total:6.2f}% {bar}")
    return "\n".join(lines)


def format_report(groups: dict[int, np.ndarray], label: str) -> str:
    """The `downpour staleness` text: per group a summary line and its histogram, then all together."""
    parts = []
    for key, taus in groups.items():
        parts.append(f"{label} {key}: {format_summary(summarize(taus))}\n{format_histogram(taus)}")
    everything = np.concatenate(list(groups.values())) if groups else np.zeros(0, np.int64)
    parts.append(f"all {label}s: {format_summary(summarize(everything))}")
    return "\n\n".join(parts)
