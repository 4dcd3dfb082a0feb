"""Live Ray metrics of a shard (ray.util.metrics), exported by each node's Prometheus endpoint.

Names as Prometheus shows them (Ray adds the `ray_` prefix):
  ray_downpour_staleness         histogram of tau of accepted pushes, tags run and shard
  ray_downpour_pushes_total      counter of pushes received, tags run, shard, outcome (accepted|rejected)
  ray_downpour_shard_version     gauge of the shard's version, tags run and shard
Ray histograms need positive bucket bounds, so tau = k falls in the bucket `le="k.5"`.
"""

# One bucket per tau up to 8 (the usual range with a handful of replicas), then coarser.
TAU_BUCKETS = [k + 0.5 for k in (*range(9), 12, 16, 24, 32, 48, 64, 128, 256)]


class ShardMetrics:
    """Created inside the shard's actor. A push costs one histogram observation (about 6 us here);
    the counters and the gauge are brought up to date by `flush`, which the shard calls when the
    job drains its events (about once a second). Ray's core worker ships the values to the node's
    metrics agent on its own thread: no I/O on the push path."""

    def __init__(self, run: str, shard_id: int):
        from ray.util.metrics import (  # only inside a Ray worker
            Counter,
            Gauge,
            Histogram,
        )

        tags = {"run": run, "shard": str(shard_id)}
        self.tau = Histogram("downpour_staleness", description="staleness tau of accepted pushes "
                             "(updates between fetch and apply)", boundaries=TAU_BUCKETS,
                             tag_keys=("run", "shard"))
        self.pushes = Counter("downpour_pushes", description="pushes a shard received",
                              tag_keys=("run", "shard", "outcome"))
        self.version = Gauge("downpour_shard_version", description="updates a shard has applied",
                             tag_keys=("run", "shard"))
        for metric in (self.tau, self.pushes, self.version):
            metric.set_default_tags(tags)
        self.unflushed_taus: list[int] = []
        self.unflushed_rejected = 0

    def accepted(self, tau: int) -> None:
        self.unflushed_taus.append(tau)

    def rejected(self) -> None:
        self.unflushed_rejected += 1

    def flush(self, version: int) -> None:
        """Hands Ray what happened since the last flush. Ray's histogram takes one value per call;
        calling it here, in a tight loop, costs a fifth of what it costs between pushes."""
        for tau in self.unflushed_taus:
            self.tau.observe(tau)
        for outcome, n in (("accepted", len(self.unflushed_taus)), ("rejected", self.unflushed_rejected)):
            if n:
                self.pushes.inc(n, tags={"outcome": outcome})
        self.unflushed_taus, self.unflushed_rejected = [], 0
        self.version.set(version)
