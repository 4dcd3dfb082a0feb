"""E3: Downpour SGD: Adagrad on the PS, warmstart, n_fetch / n_push (Dean et al. 2012).

Pure Downpour (c = 1, n_fetch = n_push = 1) with lambda in {16, 30} learners of batch 8, 3 epochs,
3 seeds, in simulation (the harness's step times and job budget). PS optimizer: fixed eta in {0.5, 1, 2} x the best
hardsync eta (tuned here on batch lambda x 8), or Adagrad with gamma in {0.003, 0.01, 0.03}; at
lambda = 30 each with and without warmstart (learner 0 alone for the first 0.25 epoch). Second
sweep: n_fetch = n_push in {1, 4, 16} with the client's local steps (local_lr = eta).
"""

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
    simulated,
)

TITLE = "Downpour: Adagrad on the PS, warmstart, n_push (Dean et al. 2012)"
BATCH, WARMSTART = 8, 0.25
GAMMAS = (0.003, 0.01, 0.03)
DIVERGED = 20.0  # test accuracy (%) at or below which a run counts as diverged


def spike(summary: dict) -> float:
    """The largest first-epoch rise of the training-loss curve above its running minimum."""
    curve = [loss for epochs, loss in summary["simulation"]["train_loss"] if epochs <= 1.0]
    if not curve or not np.all(np.isfinite(curve)):
        return float("inf")
    low = np.minimum.accumulate(curve)
    return float(np.max(np.asarray(curve) - low))


def run(out_dir: Path, quick: bool = False) -> Result:
    seeds, epochs = ((0,), 1) if quick else ((0, 1, 2), 3)
    with tempfile.TemporaryDirectory() as tmp:
        n = 0

        def sim(**config):
            nonlocal n
            n += 1
            return simulated(Path(tmp) / f"run{n}", **{"epochs": epochs, "batch_size": BATCH, **config})

        tuned = {eta: mean_std([accuracy(sim(replicas=1, batch_size=30 * BATCH, lr=eta, seed=s))
                                for s in seeds])[0] for eta in (0.05, 0.1, 0.2, 0.4)}
        best = max(tuned, key=tuned.get)
        optimizers = {f"eta {f:g}x": {"optimizer": "sgd", "lr": f * best} for f in (0.5, 1, 2)}
        optimizers.update({f"adagrad {g:g}": {"optimizer": "adagrad", "lr": g} for g in GAMMAS})
        rows = {}
        for lam in (16, 30):
            for warm in ((0.0, WARMSTART) if lam == 30 else (0.0,)):
                for name, opt in optimizers.items():
                    for seed in seeds:
                        summary = sim(replicas=lam, seed=seed, warmstart=warm, **opt)
                        rows.setdefault((lam, warm, name), []).append(
                            {"accuracy": accuracy(summary), "spike": spike(summary)})
        sweep = {}
        for k in (1, 4, 16):
            for seed in seeds:
                summary = sim(replicas=30, seed=seed, n_fetch=k, n_push=k, optimizer="adagrad",
                              lr=0.01, local_lr=0.01)
                pushes = summary["staleness"]["count"] + summary["rejected_pushes"]
                sweep.setdefault(k, []).append({"accuracy": accuracy(summary),
                                                "pushes_per_epoch": pushes / epochs})
    return judge(tuned, best, rows, sweep, seeds, epochs, out_dir)


def judge(tuned, best, rows, sweep, seeds, epochs, out_dir: Path) -> Result:
    acc = {k: mean_std([r["accuracy"] for r in v])[0] for k, v in rows.items()}
    hardsync = tuned[best]
    adagrad = max((acc[30, 0.0, f"adagrad {g:g}"], g) for g in GAMMAS)
    fixed = acc[30, 0.0, "eta 1x"]
    checks = [Check("Adagrad at n = 30 within 2 points of hardsync, while fixed alpha0 diverges",
                    adagrad[0] >= hardsync - 2 and fixed <= DIVERGED,
                    f"hardsync (batch 240, eta {best:g}) {hardsync:.2f}%, best Adagrad (gamma "
                    f"{adagrad[1]:g}) {adagrad[0]:.2f}%, fixed eta {best:g} {fixed:.2f}%")]
    diverged = {w: sum(r["accuracy"] <= DIVERGED for k, v in rows.items() if k[0] == 30 and k[1] == w
                       for r in v) for w in (0.0, WARMSTART)}
    stable = [f for f in (2, 1, 0.5) if all(r["accuracy"] > DIVERGED for r in rows[30, 0.0, f"eta {f:g}x"])]
    if stable:
        name = f"eta {stable[0]:g}x"
        cold = np.mean([r["spike"] for r in rows[30, 0.0, name]])
        warm = np.mean([r["spike"] for r in rows[30, WARMSTART, name]])
        spike_ok, spike_text = warm <= 0.7 * cold, (f"largest stable fixed eta ({name}): first-epoch "
                                                   f"loss spike {cold:.3f} cold, {warm:.3f} warm")
    else:
        spike_ok, spike_text = False, "no fixed eta was stable at n = 30: no spike to compare"
    checks.append(Check("warmstart never raises the count of diverged seeds, and cuts the largest "
                        "first-epoch loss spike by >= 30% for the largest stable fixed eta",
                        diverged[WARMSTART] <= diverged[0.0] and spike_ok,
                        f"diverged runs {diverged[0.0]} cold, {diverged[WARMSTART]} warm; {spike_text}"))
    per = {k: mean_std([r["pushes_per_epoch"] for r in v])[0] for k, v in sweep.items()}
    sacc = {k: mean_std([r["accuracy"] for r in v])[0] for k, v in sweep.items()}
    scaling = all(abs(per[k] * k / per[1] - 1) <= 0.05 for k in per)
    checks.append(Check("PS messages per epoch scale as 1/n_push, accuracy within 2 points at n_push = 4",
                        scaling and sacc[4] >= sacc[1] - 2,
                        ", ".join(f"n_push {k}: {per[k]:.0f} pushes/epoch, {sacc[k]:.2f}%" for k in per)))
    figures = {"hardsync_tuning": tuned, "accuracy": {f"lambda={k[0]} warm={k[1]:g} {k[2]}": [
        r["accuracy"] for r in v] for k, v in rows.items()},
        "spike": {f"lambda={k[0]} warm={k[1]:g} {k[2]}": [r["spike"] for r in v] for k, v in rows.items()},
        "n_push_sweep": {k: v for k, v in sweep.items()}, "seeds": list(seeds), "epochs": epochs}
    return Result("E3", TITLE, checks, figures, plot(acc, sacc, out_dir),
                  notes=["warmstart's 0.25 epoch is added to learner 0's steps (runs with it train "
                         "0.25 epoch more)", f"a run at or below {DIVERGED:g}% test accuracy counts "
                         "as diverged (the shards reject non-finite updates, so none turns NaN)"])


def plot(acc, sacc, out_dir: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = sorted({k[2] for k in acc})
    for lam, warm in sorted({(k[0], k[1]) for k in acc}):
        left.plot(range(len(names)), [acc[lam, warm, n] for n in names], marker="o",
                  label=f"lambda {lam}" + (" warmstart" if warm else ""))
    left.set(xticks=range(len(names)), xticklabels=names, ylabel="test accuracy (%)",
             title="Downpour PS optimizers, 3 epochs")
    left.tick_params(axis="x", rotation=30)
    left.legend()
    right.plot(list(sacc), list(sacc.values()), marker="o")
    right.set(xscale="log", xticks=list(sacc), xticklabels=[str(k) for k in sacc],
              xlabel="n_fetch = n_push", ylabel="test accuracy (%)", title="lambda 30, Adagrad 0.01")
    return save_figure(fig, out_dir / "e3.png")
