"""E2: lambda x mu invariance (Gupta et al. 2016; Zhang et al. 2016).

3 epochs in simulation, PS momentum 0.9, alpha0 fixed at the value tuned for batch 120 (E1's).
Constant lambda mu = 128: (lambda, mu) in {(4, 32), (8, 16), (16, 8), (32, 4)}; growing:
(32, 32) and (32, 128). Protocols: 1-softsync and lambda-softsync with alpha0 / tau.
"""

import tempfile
from pathlib import Path

from experiments.e1 import ALPHA0
from experiments.harness import (
    Check,
    Result,
    accuracy,
    mean_std,
    pyplot,
    save_figure,
    simulated,
)

TITLE = "lambda x mu invariance (Gupta et al. 2016)"
CONSTANT = ((4, 32), (8, 16), (16, 8), (32, 4))
GROWING = ((32, 32), (32, 128))
PROTOCOLS = ("1-softsync", "lambda-softsync")


def consistency(protocol: str, learners: int) -> str:
    return "softsync:n=1" if protocol == "1-softsync" else f"softsync:n={learners}"


def run(out_dir: Path, quick: bool = False) -> Result:
    seeds, epochs = ((0,), 1) if quick else ((0, 1, 2), 3)
    acc = {}
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in PROTOCOLS:
            for lam, mu in CONSTANT + GROWING:
                for seed in seeds:
                    summary = simulated(Path(tmp) / f"{protocol}-{lam}x{mu}-{seed}", replicas=lam,
                                        batch_size=mu, epochs=epochs, lr=ALPHA0, optimizer="momentum",
                                        lr_rule="inverse", consistency=consistency(protocol, lam),
                                        seed=seed)
                    acc.setdefault((protocol, lam, mu), []).append(accuracy(summary))
    mean = {k: mean_std(v)[0] for k, v in acc.items()}
    checks = []
    for protocol in PROTOCOLS:
        rows = [mean[protocol, lam, mu] for lam, mu in CONSTANT]
        spread = max(rows) - min(rows)
        checks.append(Check(f"{protocol}: spread of the constant lambda mu = 128 rows <= 1.5 points",
                            spread <= 1.5, f"{spread:.2f} points (" + ", ".join(
                                f"{lam}x{mu} {mean[protocol, lam, mu]:.2f}%" for lam, mu in CONSTANT) + ")"))
        small, large = mean[protocol, 32, 4], mean[protocol, 32, 32]
        checks.append(Check(f"{protocol}: lambda mu = 1024 at least 2 points below lambda mu = 128",
                            large <= small - 2,
                            f"32x4 {small:.2f}%, 32x32 {large:.2f}%, 32x128 {mean[protocol, 32, 128]:.2f}%"))
    figures = {"accuracy": {f"{p} {lam}x{mu}": v for (p, lam, mu), v in acc.items()},
               "alpha0": ALPHA0, "seeds": list(seeds), "epochs": epochs}
    return Result("E2", TITLE, checks, figures, plot(acc, out_dir))


def plot(acc: dict, out_dir: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4.5))
    configs = CONSTANT + GROWING
    for protocol in PROTOCOLS:
        stats = [mean_std(acc[protocol, lam, mu]) for lam, mu in configs]
        ax.errorbar(range(len(configs)), [s[0] for s in stats], yerr=[s[1] for s in stats],
                    marker="o", capsize=3, label=protocol)
    ax.set(xticks=range(len(configs)), xticklabels=[f"{lam}x{mu}\n(={lam * mu})" for lam, mu in configs],
           xlabel="learners x batch", ylabel="test accuracy (%)",
           title="3 epochs, alpha0/tau, PS momentum 0.9")
    ax.legend()
    return save_figure(fig, out_dir / "e2.png")
