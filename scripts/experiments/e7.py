"""E7: asynchrony acts as implicit momentum (Mitliagkas et al. 2016).

Pure async (c = 1) with M in {1, 4, 16} learners of batch 32, eta = 0.02, explicit PS momentum in
{0, 0.5, 0.9}, 2 epochs, 3 seeds, in simulation (the harness's step times: tau about M - 1).
"""

import tempfile
from pathlib import Path

from experiments.harness import (
    Check,
    Result,
    accuracy,
    mean_std,
    pyplot,
    save_figure,
    simulated,
)

TITLE = "asynchrony acts as implicit momentum (Mitliagkas et al. 2016)"
MS, MOMENTA, BATCH, ETA = (1, 4, 16), (0.0, 0.5, 0.9), 32, 0.02


def optimizer(momentum: float) -> str:
    return f"momentum:momentum={momentum:g}" if momentum else "sgd"


def run(out_dir: Path, quick: bool = False) -> Result:
    seeds, epochs = ((0,), 1) if quick else ((0, 1, 2), 2)
    acc = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in MS:
            for mu in MOMENTA:
                for seed in seeds:
                    summary = simulated(Path(tmp) / f"m{m}-mu{mu}-s{seed}", replicas=m, batch_size=BATCH,
                                        epochs=epochs, lr=ETA, optimizer=optimizer(mu), seed=seed)
                    acc.setdefault((m, mu), []).append(accuracy(summary))
    mean = {k: mean_std(v)[0] for k, v in acc.items()}
    best = {m: max(MOMENTA, key=lambda mu: mean[m, mu]) for m in MS}
    table = "; ".join(f"M={m}: " + ", ".join(f"mu {mu:g} {mean[m, mu]:.2f}%" for mu in MOMENTA) for m in MS)
    checks = [
        Check("argmax momentum at M = 16 is below that at M = 1", best[16] < best[1],
              f"best momentum M=1 {best[1]:g}, M=4 {best[4]:g}, M=16 {best[16]:g} ({table})"),
        Check("at M = 16, momentum 0.9 diverges or ends >= 2 points below momentum 0.5",
              mean[16, 0.9] <= mean[16, 0.5] - 2 or mean[16, 0.9] < 20,
              f"M=16: mu 0.9 {mean[16, 0.9]:.2f}%, mu 0.5 {mean[16, 0.5]:.2f}%"),
    ]
    figures = {"accuracy": {f"M={m} mu={mu:g}": v for (m, mu), v in acc.items()},
               "best_momentum": best, "seeds": list(seeds), "epochs": epochs}
    return Result("E7", TITLE, checks, figures, plot(acc, out_dir))


def plot(acc: dict, out_dir: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for m in MS:
        stats = [mean_std(acc[m, mu]) for mu in MOMENTA]
        ax.errorbar(MOMENTA, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                    capsize=3, label=f"M = {m}")
    ax.set(xlabel="explicit PS momentum", ylabel="test accuracy (%)", xticks=MOMENTA,
           title=f"pure async, batch {BATCH}, eta {ETA}")
    ax.legend()
    return save_figure(fig, out_dir / "e7.png")
