"""A rolling view of a running job, built from its event records: what `downpour top`, the progress
line and the TensorBoard scalars show. Pure: records in, a snapshot dict out, a frame of text.

Rates and percentiles cover the last `window_s` seconds of events, ending at the newest event (the
job drains events about once a second, so "now" would undercount the last second).
"""

import collections
from typing import Iterable, Optional

import numpy as np

from ps.obs.faults import FaultTally, format_line
from ps.obs.staleness import summarize

WINDOW_S = 10.0


class LiveStats:
    """Fed the records in log order. The shard table is of the shards the latest header or `resume`
    record names; a resumed job's shards are new actors, so their counts start again there."""

    def __init__(self, header: dict, window_s: float = WINDOW_S):
        self.window_s = window_s
        self.t_start = self.t_latest = header["t"]
        # Each push to shard 0 stands for n_push steps of one replica; older logs lack the sizes.
        batch, n_push = header.get("batch_size"), header.get("n_push", 1)
        self.samples_per_push = batch * n_push if batch else None
        self.recent_steps: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        self.last_spread: dict[int, int] = {}
        self.last_eval: Optional[dict] = None
        self.faults = FaultTally()
        self._new_layout(header)

    def _new_layout(self, r: dict) -> None:
        """A header or resume record; a resume without a re-shard starts at its checkpoint's versions."""
        self.replicas, shards = r["replicas"], r["shards"]
        versions = r.get("versions") or []
        self.versions = list(versions) if len(versions) == shards else [0] * shards
        self.rejected = [0] * shards
        self.recent_pushes = [collections.deque() for _ in range(shards)]  # (t, tau)

    def _grow(self, s: int) -> None:
        """A shard id the layout did not name (a newer writer's log) gets a row rather than an IndexError."""
        while len(self.versions) <= s:
            self.versions.append(0)
            self.rejected.append(0)
            self.recent_pushes.append(collections.deque())

    @property
    def shards(self) -> int:
        return len(self.versions)

    def ingest(self, records: Iterable[dict]) -> None:
        for r in records:
            kind = r.get("kind")
            if kind == "push":
                self._push(r)
            elif kind == "fetch":
                self.last_spread[r["replica"]] = r["spread"]
            elif kind == "eval":
                self.last_eval = r
            elif kind == "resume":
                self._new_layout(r)
            elif kind == "restore":  # the shard went back to its checkpoint's version
                self._grow(r["shard"])
                self.versions[r["shard"]] = r["version"]
            elif kind == "restart":  # the dead replica's row goes once its window empties
                self.last_spread.pop(r["replica"], None)
            self.faults.ingest(r)
            self.t_latest = max(self.t_latest, r.get("t", self.t_latest))

    def _push(self, r: dict) -> None:
        s = r["shard"]
        self._grow(s)
        if not r["accepted"]:
            self.rejected[s] += 1
            return
        self.versions[s] = max(self.versions[s], r["applied"] + 1)
        self.recent_pushes[s].append((r["t"], r["tau"]))
        if s == 0:
            self.recent_steps[r["replica"]].append(r["t"])

    def snapshot(self) -> dict:
        """Per shard: version, accepted pushes/s, tau p50/p99, rejected; per replica: samples/s
        (or pushes/s when the log lacks batch sizes) and the version spread of its last fetch;
        "faults": ps.obs.faults.FaultTally's counts, None (or absent, from an older writer) when
        there were no faults, fenced pushes, checkpoints or resumes."""
        since = self.t_latest - self.window_s
        span = max(min(self.window_s, self.t_latest - self.t_start), 1e-9)
        for q in self.recent_pushes:
            while q and q[0][0] <= since:
                q.popleft()
        for q in self.recent_steps.values():
            while q and q[0] <= since:
                q.popleft()
        shards = [self._shard_row(s, span) for s in range(self.shards)]
        per_push = self.samples_per_push or 1
        replicas = [{"replica": r, "rate": len(self.recent_steps.get(r, ())) * per_push / span,
                     "last_spread": self.last_spread.get(r)}
                    for r in sorted(set(self.recent_steps) | set(self.last_spread))]
        window_taus = np.asarray([tau for q in self.recent_pushes for _, tau in q], dtype=np.int64)
        return {"elapsed_s": self.t_latest - self.t_start, "window_s": min(self.window_s, span),
                "rate_unit": "samples/s" if self.samples_per_push else "pushes/s",
                "rate": sum(r["rate"] for r in replicas), "tau": summarize(window_taus),
                "shards": shards, "replicas": replicas,
                "eval": None if self.last_eval is None else
                {k: self.last_eval[k] for k in ("accuracy", "loss")},
                "faults": self.faults.snapshot()}

    def _shard_row(self, s: int, span: float) -> dict:
        taus = summarize([tau for _, tau in self.recent_pushes[s]])
        return {"shard": s, "version": self.versions[s], "pushes_per_s": len(self.recent_pushes[s]) / span,
                "tau_p50": taus["p50"], "tau_p99": taus["p99"], "rejected": self.rejected[s]}


def render(snap: dict, title: str) -> str:
    """One frame of `downpour top`: a heading, a faults line if any, a shard and a replica table."""
    tau, ev = snap["tau"], snap["eval"]
    acc = "-" if ev is None else f"{ev['accuracy']:.4f}"
    lines = [f"{title}   {snap['elapsed_s']:.0f} s   {snap['rate']:.0f} {snap['rate_unit']}   "
             f"tau p50 {_dash(tau['p50'])} p99 {_dash(tau['p99'])}   accuracy {acc}",
             f"(rates and tau over the last {snap['window_s']:.0f} s)"]
    faults = format_line(snap.get("faults"))  # absent from an older driver's snapshot
    lines += [faults] if faults else []
    lines += ["", f"{'shard':>5} {'version':>9} {'pushes/s':>9} {'tau p50':>8} {'tau p99':>8} {'rejected':>9}"]
    for row in snap["shards"]:
        lines.append(f"{row['shard']:>5} {row['version']:>9} {row['pushes_per_s']:>9.1f} "
                     f"{_dash(row['tau_p50']):>8} {_dash(row['tau_p99']):>8} {row['rejected']:>9}")
    lines += ["", f"{'replica':>7} {snap['rate_unit']:>11} {'last fetch spread':>18}"]
    for row in snap["replicas"]:
        lines.append(f"{row['replica']:>7} {row['rate']:>11.1f} {_dash(row['last_spread']):>18}")
    return "\n".join(lines)


def _dash(value) -> str:
    return "-" if value is None else str(value)
