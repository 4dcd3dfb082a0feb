"""Staleness statistics and text histograms: pure functions over arrays of tau and event records.

Percentiles are nearest-rank (numpy's inverted_cdf): p90 is the smallest tau that at least 90% of
pushes do not exceed, always an observed integer.
"""

import math
from typing import Iterable, Optional, Sequence

import numpy as np

from ps.common.errors import UserError

PERCENTILES = (50, 90, 99)
BAR_WIDTH = 40
MAX_ROWS = 32  # histogram rows in the terminal; wider tau ranges share a row


def summarize(taus, percentiles: Sequence[float] = PERCENTILES) -> dict:
    """count, mean, the percentiles (keys p50, p99.9, ...) and max of staleness values (None when empty)."""
    taus = np.asarray(taus, dtype=np.int64)
    keys = [f"p{p:g}" for p in percentiles]
    if taus.size == 0:
        return {"count": 0, "mean": None, **dict.fromkeys(keys), "max": None}
    pcts = np.percentile(taus, list(percentiles), method="inverted_cdf")
    return {"count": int(taus.size), "mean": float(taus.mean()),
            **{k: int(v) for k, v in zip(keys, pcts)}, "max": int(taus.max())}


def parse_percentiles(text: str) -> tuple[float, ...]:
    """'50,90,99.9' -> (50.0, 90.0, 99.9); each in (0, 100]."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v <= 100 for v in values):
        raise UserError(f"--percentiles {text!r}: give numbers in (0, 100] separated by commas, "
                        "e.g. 50,90,99")
    return values


def parse_window(text: str) -> tuple[Optional[float], Optional[float]]:
    """'START:END' in seconds since the run started, either side may be empty: '60:', ':120'."""
    start, sep, end = text.partition(":")
    try:
        bounds = tuple(float(v) if v.strip() else None for v in (start, end))
    except ValueError:
        bounds = ()
    if not sep or len(bounds) != 2 or (None not in bounds and bounds[0] >= bounds[1]):
        raise UserError(f"--window {text!r}: give START:END in seconds since the run started, "
                        "START below END, either may be left out (e.g. 60:120 or 60:)")
    return bounds


def in_window(records: Iterable[dict], t0: float, start: Optional[float],
              end: Optional[float]) -> list[dict]:
    """The push and fetch records whose time, in seconds since t0, lies in [start, end)."""
    lo = -math.inf if start is None else start
    hi = math.inf if end is None else end
    return [r for r in records if r.get("kind") in ("push", "fetch") and lo <= r["t"] - t0 < hi]


def histogram(taus) -> list[tuple[int, int]]:
    """(tau, count) for every tau from 0 to the max, zeros included, so gaps show."""
    taus = np.asarray(taus, dtype=np.int64)
    if taus.size == 0:
        return []
    counts = np.bincount(taus)
    return [(tau, int(n)) for tau, n in enumerate(counts)]


def taus_by(records: Iterable[dict], key: str) -> dict[int, np.ndarray]:
    """tau of accepted pushes grouped by record[key] ('shard' or 'replica'), keys sorted.

    Shard ids are taken as logged: after a `resume` that re-shards, shard k is the new job's k, so
    its group mixes two slices of the parameters (docs/event-log.md, "Faults and checkpoints").
    An undefined tau (-1: a push without a valid version, or a fenced one) is never counted."""
    groups: dict[int, list[int]] = {}
    for r in records:
        if r.get("kind") == "push" and r.get("accepted") and r.get("tau", -1) >= 0:
            groups.setdefault(r[key], []).append(r["tau"])
    return {k: np.asarray(groups[k], dtype=np.int64) for k in sorted(groups)}


def format_summary(stats: dict) -> str:
    if not stats["count"]:
        return "no accepted pushes"
    pcts = "  ".join(f"{k} {v}" for k, v in stats.items() if k.startswith("p"))
    return f"pushes {stats['count']}  mean {stats['mean']:.2f}  {pcts}  max {stats['max']}"


def binned(rows: list[tuple[int, int]], max_rows: int = MAX_ROWS) -> list[tuple[str, int]]:
    """Up to max_rows rows of one tau each; beyond that, equal-width ranges ('32..47')."""
    width = -(-len(rows) // max_rows)
    out = []
    for i in range(0, len(rows), width):
        chunk = rows[i:i + width]
        first, last = chunk[0][0], chunk[-1][0]
        out.append((str(first) if first == last else f"{first}..{last}", sum(n for _, n in chunk)))
    return out


def format_histogram(taus, width: int = BAR_WIDTH) -> str:
    """One line per tau (or range of tau): value, count, share, and a bar scaled to the largest count."""
    rows = binned(histogram(taus))
    if not rows:
        return "  (empty)"
    total, top = sum(n for _, n in rows), max(n for _, n in rows)
    lines = []
    for label, n in rows:
        bar = "#" * (round(width * n / top) if n else 0)
        lines.append(f"  tau {label:>4} {n:>9} {100 * n / total:6.2f}% {bar}")
    return "\n".join(lines)


def format_report(groups: dict[int, np.ndarray], label: str,
                  percentiles: Sequence[float] = PERCENTILES) -> str:
    """The `downpour staleness` text: per group a summary line and its histogram, then all together."""
    parts = []
    for key, taus in groups.items():
        summary = format_summary(summarize(taus, percentiles))
        parts.append(f"{label} {key}: {summary}\n{format_histogram(taus)}")
    everything = np.concatenate(list(groups.values())) if groups else np.zeros(0, np.int64)
    parts.append(f"all {label}s: {format_summary(summarize(everything, percentiles))}")
    return "\n\n".join(parts)
