"""E4: DC-ASGD against ASGD and SSGD (Zheng et al. 2017, Table 1 analogue).

M learners of batch 32, plain SGD at eta = 0.2 on the PS, 2 epochs, 5 seeds, in simulation (pure
async: the harness's step times, so tau is about M - 1). Methods: sequential SGD (one learner),
ASGD, SSGD (sync, batch M x 32, same eta), DC-ASGD constant (lambda0 = 0.04) and adaptive
(lambda0 = 2, m = 0.95, eps = 1e-7), and an adaptive sweep lambda0 in {0.5, 2, 8} at M = 8.
"""

import tempfile
import time
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

TITLE = "DC-ASGD against ASGD and SSGD (Zheng et al. 2017)"
BATCH, ETA = 32, 0.1  # eta: the best sequential SGD of {0.02, 0.05, 0.1, 0.2} at 2 epochs (docs/experiments.md)
DC_C = "dcasgd:lambda=0.04"


def dc_a(lam: float) -> str:
    return f"dcasgd:lambda={lam:g},adaptive=1,m=0.95,eps=1e-7"


def methods(m: int) -> dict:
    """name -> the simulate configuration of that method with `m` learners."""
    found = {"ASGD": {"replicas": m}, "SSGD": {"replicas": m, "consistency": "sync"},
             "DC-c": {"replicas": m, "gradient_transform": DC_C},
             "DC-a": {"replicas": m, "gradient_transform": dc_a(2)}}
    if m == 8:
        found.update({f"DC-a l0={lam:g}": {"replicas": m, "gradient_transform": dc_a(lam)}
                      for lam in (0.5, 8)})
    return found


def run(out_dir: Path, quick: bool = False) -> Result:
    seeds, epochs = ((0,), 1) if quick else (tuple(range(5)), 2)
    acc, memory = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            acc.setdefault(("seq", 1), []).append(accuracy(simulated(
                Path(tmp) / f"seq-{seed}", replicas=1, batch_size=BATCH, epochs=epochs, lr=ETA,
                seed=seed)))
        for m in (4, 8):
            for name, config in methods(m).items():
                for seed in seeds:
                    summary = simulated(Path(tmp) / f"{name}-{m}-{seed}".replace(" ", "_"),
                                        batch_size=BATCH, epochs=epochs, lr=ETA, seed=seed, **config)
                    acc.setdefault((name, m), []).append(accuracy(summary))
                    memory[name, m] = summary["consistency"]["transform_state_bytes"]
    cost = apply_cost()
    return judge(acc, memory, cost, seeds, epochs, out_dir)


def apply_cost(pushes: int = 300) -> dict:
    """Seconds per push of one mlp128-sized shard with plain SGD and with DC-ASGD (adaptive),
    in-process, side by side: what the transform costs the shard."""
    from ps.server.optimizers import parse_optimizer
    from ps.server.shard import ParameterShard
    size = 784 * 128 + 128 + 128 * 10 + 10
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(size, dtype=np.float32) * 1e-3 for _ in range(8)]
    per_push = {}
    for name, transform in (("sgd", None), ("dcasgd-c", DC_C), ("dcasgd-a", dc_a(2))):
        shard = ParameterShard(0, np.zeros(size, np.float32), parse_optimizer("sgd"), ETA, "constant",
                               record_events=False, replicas=8, transform=transform)
        best = float("inf")
        for _ in range(3):  # the best of three: the machine is noisy
            t0 = time.perf_counter()
            for k in range(pushes):
                version, _ = shard.pull(k % 8)
                shard.push(grads[k % 8], version, k % 8)
            best = min(best, (time.perf_counter() - t0) / pushes)
        per_push[name] = best
    return per_push


def judge(acc: dict, memory: dict, cost: dict, seeds, epochs: int, out_dir: Path) -> Result:
    mean = {k: mean_std(v)[0] for k, v in acc.items()}
    gain8, gain4 = mean["DC-a", 8] - mean["ASGD", 8], mean["DC-a", 4] - mean["ASGD", 4]
    checks = [
        Check("mean DC-ASGD-a >= mean ASGD + 0.3 points at M = 8, and >= ASGD at M = 4",
              gain8 >= 0.3 and gain4 >= 0,
              f"M=8: ASGD {mean['ASGD', 8]:.2f}, DC-a {mean['DC-a', 8]:.2f} ({gain8:+.2f}); "
              f"M=4: ASGD {mean['ASGD', 4]:.2f}, DC-a {mean['DC-a', 4]:.2f} ({gain4:+.2f})"),
        Check("lambda0 = 8 is not better than lambda0 = 2 (DC-a, M = 8)",
              mean["DC-a l0=8", 8] <= mean["DC-a", 8],
              f"l0=0.5 {mean['DC-a l0=0.5', 8]:.2f}, l0=2 {mean['DC-a', 8]:.2f}, "
              f"l0=8 {mean['DC-a l0=8', 8]:.2f}"),
    ]
    size = 784 * 128 + 128 + 128 * 10 + 10
    backups = memory["DC-a", 8] / (4 * size)
    ratio = cost["dcasgd-a"] / cost["sgd"]
    checks.append(Check("the PS records the memory of M backup models and an apply cost of about "
                        "2-5x plain SGD", backups >= 8 and 1.5 <= ratio <= 6,
                        f"DC-a at M=8 holds {memory['DC-a', 8]} bytes = {backups:.1f} model copies "
                        f"(8 backups and the adaptive form's buffers); apply {ratio:.2f}x plain SGD "
                        f"(DC-c {cost['dcasgd-c'] / cost['sgd']:.2f}x)"))
    figures = {"accuracy": {f"{n} M={m}": v for (n, m), v in acc.items()},
               "transform_state_bytes": {f"{n} M={m}": b for (n, m), b in memory.items()},
               "push_s": cost, "seeds": list(seeds), "epochs": epochs}
    return Result("E4", TITLE, checks, figures, plot(acc, out_dir))


def plot(acc: dict, out_dir: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4.5))
    names = ["ASGD", "SSGD", "DC-c", "DC-a", "DC-a l0=0.5", "DC-a l0=8"]
    for offset, m in ((-0.2, 4), (0.2, 8)):
        xs = [i + offset for i, n in enumerate(names) if (n, m) in acc]
        stats = [mean_std(acc[n, m]) for n in names if (n, m) in acc]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt="o", capsize=3,
                    label=f"M = {m}")
    seq = mean_std(acc["seq", 1])[0]
    ax.axhline(seq, color="grey", linestyle="--", label=f"sequential {seq:.2f}%")
    ax.set(xticks=range(len(names)), xticklabels=names, ylabel="test accuracy (%)",
           title="batch 32, eta 0.2, plain SGD on the PS (mean and std over seeds)")
    ax.legend()
    return save_figure(fig, out_dir / "e4.png")
