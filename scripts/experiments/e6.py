"""E6: backup workers for synchronous SGD (Chen et al. 2016), on a local Ray.

Sync with N + b replicas, (N, b) in {(4, 0), (3, 1), (4, 1)}: `--consistency sync` with 4
replicas, `backup:b=1` with 4 and with 5. Each compute is followed by a heavy-tailed injected
delay (lognormal, mean 5 ms, sigma 1). 2 epochs' worth of steps, 3 seeds. Late gradients are
dropped and counted.
"""

import collections
import tempfile
from pathlib import Path

import numpy as np
from experiments.harness import (
    Check,
    Result,
    accuracy,
    mean_std,
    pyplot,
    save_figure,
    trained,
)

TITLE = "backup workers for synchronous SGD (Chen et al. 2016)"
DELAY = "lognormal:mean=0.005,sigma=1"
BATCH, LR = 32, 0.05
CONFIGS = {"(4,0)": (4, "sync"), "(3,1)": (4, "backup:b=1"), "(4,1)": (5, "backup:b=1")}


def run(out_dir: Path, quick: bool = False) -> Result:
    seeds, epochs = ((0,), 0.25) if quick else ((0, 1, 2), 2)
    rows = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name, (replicas, mode) in CONFIGS.items():
                # equal epochs: every config trains on 2 epochs of samples
                steps = int(epochs * 60000 / replicas / BATCH)
                where = Path(tmp) / f"{name}-{seed}"
                summary = trained(where, replicas=replicas, batch_size=BATCH, steps=steps, lr=LR,
                                  consistency=mode, inject_delay=DELAY, seed=seed, prefetch=False)
                rows[name].append({"accuracy": accuracy(summary), **iterations(where),
                                   "late": summary["consistency"]["late_dropped"],
                                   "status": summary["status"]})
    return judge(rows, seeds, epochs, out_dir)


def iterations(run_dir: Path) -> dict:
    """From shard 0's pushes in the event log: each round's length (from the push that closed
    the round before to the one that closed it), and whether any late push was accepted."""
    from ps.common import schema
    from ps.obs.events import read_events
    closed, late_applied, accepted = {}, 0, collections.Counter()
    for r in read_events(run_dir / schema.LOG_NAME):
        if r.get("kind") != "push" or r["shard"] != 0:
            continue
        if r["accepted"]:
            closed[r["fetched"]] = r["t"]  # the last accepted push of a round closes it
            accepted[r["fetched"]] += 1
        late_applied += r["accepted"] and r["fetched"] < r["applied"]
    ends = np.array([closed[v] for v in sorted(closed)])
    gaps = np.diff(ends)
    return {"iter_mean_s": float(gaps.mean()), "iter_p99_s": float(np.percentile(gaps, 99)),
            "late_applied": int(late_applied), "iter_s": gaps.tolist()}


def judge(rows: dict, seeds, epochs, out_dir: Path) -> Result:
    mean = {n: float(np.mean([r["iter_mean_s"] for r in v])) for n, v in rows.items()}
    p99 = {n: float(np.mean([r["iter_p99_s"] for r in v])) for n, v in rows.items()}
    acc = {n: mean_std([r["accuracy"] for r in v])[0] for n, v in rows.items()}
    base = "(4,0)"
    checks = [
        Check("mean iteration time of (3,1) <= 0.75x (4,0), and its p99 <= 0.5x (4,0)",
              mean["(3,1)"] <= 0.75 * mean[base] and p99["(3,1)"] <= 0.5 * p99[base],
              ", ".join(f"{n}: mean {1e3 * mean[n]:.1f} ms ({mean[n] / mean[base]:.2f}x), p99 "
                        f"{1e3 * p99[n]:.1f} ms ({p99[n] / p99[base]:.2f}x)" for n in rows)),
        Check("accuracy at equal epochs within 1 point", max(acc.values()) - min(acc.values()) <= 1,
              ", ".join(f"{n} {acc[n]:.2f}%" for n in rows)),
        Check("no dropped gradient is ever applied",
              all(r["late_applied"] == 0 for v in rows.values() for r in v),
              ", ".join(f"{n}: {sum(r['late'] for r in v)} late dropped, "
                        f"{sum(r['late_applied'] for r in v)} applied" for n, v in rows.items())),
    ]
    figures = {"rows": {n: [{k: x for k, x in r.items() if k != "iter_s"} for r in v]
                        for n, v in rows.items()},
               "delay": DELAY, "seeds": list(seeds), "epochs": epochs}
    return Result("E6", TITLE, checks, figures, plot(rows, out_dir))


def plot(rows: dict, out_dir: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for name, v in rows.items():
        times = np.sort(np.concatenate([r["iter_s"] for r in v])) * 1e3
        ax.plot(times, 1 - np.arange(len(times)) / len(times), label=name)
    ax.set(xscale="log", yscale="log", xlabel="iteration time (ms)", ylabel="P(iteration > t)",
           title="sync with N + b replicas, lognormal step delay (sigma 1)")
    ax.legend()
    return save_figure(fig, out_dir / "e6.png")
