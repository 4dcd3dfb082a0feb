"""What a run's summary.json says, from the shards' own counters and the replicas' progress.

Staleness and rejections come from the shards' counters (`ParameterShard.stats`), so they are the
same with or without the event log; only fetch statistics need the log's fetch records.
"""

from collections import Counter
from typing import Optional

import numpy as np

from ps.common.config import TrainConfig
from ps.obs.staleness import summarize

EVAL_KEYS = ("epochs", "accuracy", "loss", "versions", "pulled_at")


class RunStats:
    """Collects, while the job runs, what the summary reports."""

    def __init__(self, shards: int, prior: Optional[dict] = None):
        """`prior`: of a resumed run, what its earlier sessions did: steps, train_samples,
        evaluations, wall_time_s (from the checkpoint it resumes)."""
        self.shard_stats: list[Optional[dict]] = [None] * shards  # the latest answer of each shard
        self.replicas: dict[int, dict] = {}  # id -> latest progress(), then its run's result
        self.fetch_spreads: list[int] = []
        self.evals: list[dict] = []
        prior = prior or {}
        self.prior_steps, self.prior_samples = prior.get("steps", 0), prior.get("train_samples", 0)
        self.prior_evals, self.prior_wall_s = prior.get("evaluations", []), prior.get("wall_time_s", 0.0)

    def ingest(self, records: list[dict]) -> None:
        self.fetch_spreads += [r["spread"] for r in records if r["kind"] == "fetch"]

    def update_replica(self, row: dict, final: bool = False) -> None:
        """A progress() row, or (final) a run's result, which later progress never overwrites."""
        current = self.replicas.get(row["replica"])
        if final or current is None or not current.get("final"):
            self.replicas[row["replica"]] = {**row, "final": final}

    def samples(self) -> tuple[int, Optional[float]]:
        """Samples trained by every replica so far, and the seconds from the first to the last step."""
        rows = list(self.replicas.values())
        started = [r for r in rows if r.get("t_first") is not None]
        span = (max(r["t_last"] for r in started) - min(r["t_first"] for r in started)) if started else None
        return sum(r["samples"] for r in rows), span

    def steps_done(self, batch_size: int) -> int:
        """Steps of the whole run so far: earlier sessions' and this one's replicas'."""
        return self.prior_steps + self.samples()[0] // batch_size

    def total_samples(self) -> int:
        return self.prior_samples + self.samples()[0]

    def eval_rows(self) -> list[dict]:
        """Every evaluation of the run, earlier sessions' first, as the summary lists them."""
        return self.prior_evals + [{k: e[k] for k in EVAL_KEYS} for e in self.evals]

    def push_losses(self) -> dict:
        """Pushes that died with a shard, and pushes a recreated shard fenced, over the replicas
        whose runs returned (a dead replica's own counts die with it)."""
        rows = self.replicas.values()
        return {"lost_pushes": sum(r.get("lost", 0) for r in rows),
                "fenced_pushes": sum(r.get("fenced", 0) for r in rows)}

    def summary(self, c: TrainConfig, head: dict, final: dict, wall_time_s: float,
                event_log: bool) -> dict:
        """`head`: run, status, error, stop_reason, nodes, data_source (the data's folder)."""
        samples, train_s = self.samples()
        known = [s for s in self.shard_stats if s is not None]
        per_shard = [_taus(s) for s in self.shard_stats]
        spreads = np.asarray(self.fetch_spreads, dtype=np.int64)
        return {
            **{k: head[k] for k in ("run", "status", "error", "stop_reason")}, "dry_run": c.dry_run,
            "test_accuracy": final.get("accuracy"), "test_loss": final.get("loss"),
            "test_samples": final.get("test_samples"), "test_versions": final.get("versions"),
            "wall_time_s": round(wall_time_s, 3), "train_time_s": train_s and round(train_s, 3),
            "train_samples": self.prior_samples + samples,
            "samples_per_s": round(samples / train_s, 1) if train_s else None,
            "replicas": c.replicas, "shards": c.shards, "model": c.model, "dataset": c.dataset,
            "data_source": head.get("data_source"),
            "updates": [s["version"] if s else None for s in self.shard_stats] if known else None,
            "nodes": head["nodes"],
            "rejected_pushes": sum(sum(s["rejected"].values()) for s in known),
            "rejected_by_reason": _merge([s["rejected"] for s in known]),
            "staleness": {**summarize(np.concatenate(per_shard)), "per_shard": [summarize(t) for t in per_shard]},
            "fetches": {"count": int(spreads.size), "mixed_versions": int((spreads > 0).sum()),
                        "max_spread": int(spreads.max()) if spreads.size else None} if event_log else None,
            "transport": {"asked": c.transport, "replicas": _count(r.get("transport")
                                                                   for r in self.replicas.values())},
            "evaluations": self.eval_rows(),
            "replica_stats": [{k: v for k, v in r.items() if k != "final"}
                              for _, r in sorted(self.replicas.items())],
        }


def consistency_summary(mode: str, shard_stats: list, pacer: Optional[dict], c: TrainConfig) -> dict:
    """The summary's "consistency": the mode, what its rounds and pacing did (`pacer`: the SSP
    clock table's stats), and the gradient transform's memory."""
    known = [s for s in shard_stats if s]
    return {"mode": mode,
            "per_update": [s["round"]["per_update"] if s.get("round") else 1 for s in known],
            "late_dropped": sum(s["rejected"].get("late", 0) for s in known),
            "ssp": pacer, "gradient_transform": c.gradient_transform,
            "transform_state_bytes": sum(s.get("transform_state_bytes", 0) for s in known),
            "local_steps": c.local_steps}


def _count(values) -> dict:
    """value -> how many, leaving out None (a replica that never reported)."""
    found: dict = {}
    for v in values:
        if v is not None:
            found[v] = found.get(v, 0) + 1
    return found


def _taus(stats: Optional[dict]) -> np.ndarray:
    """The accepted pushes' tau values of one shard, from its histogram."""
    if not stats or not stats["tau_counts"]:
        return np.zeros(0, dtype=np.int64)
    taus, counts = zip(*sorted(stats["tau_counts"].items()))
    return np.repeat(np.asarray(taus, dtype=np.int64), counts)


def _merge(counters: list[dict]) -> dict:
    return dict(sum(map(Counter, counters), Counter()))


WARN_REJECTED = 0.1  # a share of rejected pushes worth a line even when the run does not fail
_FIX = {"nonfinite": "lower --lr or set --clip-norm", "overflow": "lower --lr or set --clip-norm",
        "fenced": "expected after a shard restore; lower --checkpoint-every to lose less",
        "version": "a replica sent a bad version: a bug worth reporting"}


def rejection_verdict(summary: dict, limit: float) -> tuple[bool, Optional[str]]:
    """(fail the run?, the line to say) from the share of pushes the shards rejected: a run whose
    pushes were mostly rejected learned little, whatever its status says."""
    accepted = summary["staleness"].get("count") or 0
    # backup workers' late gradients are dropped by design (--consistency backup), not a fault
    rejected = summary["rejected_pushes"] - summary["rejected_by_reason"].get("late", 0)
    total = accepted + rejected
    if not total or rejected / total <= min(limit, WARN_REJECTED):
        return False, None
    reasons = sorted(((r, n) for r, n in summary["rejected_by_reason"].items() if r != "late"),
                     key=lambda kv: -kv[1])
    top = ", ".join(f"{n} {reason}" for reason, n in reasons[:3])
    fix = _FIX.get(reasons[0][0], "check --lr-rule and --lr") if reasons else "check --lr"
    return rejected / total > limit, f"{rejected} of {total} pushes were rejected ({top}): {fix}"

