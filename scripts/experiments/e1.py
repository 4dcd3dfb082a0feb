"""E1: a staleness-aware learning rate rescues high-staleness ASGD (Zhang et al. 2016, Fig. 3).

30 learners of batch 4 under n-softsync, n in {1, 6, 15, 30}, PS momentum 0.9, with the constant
rule (alpha0) and the staleness-dependent one (alpha0 / tau), 3 epochs of the data by the job,
3 seeds, in simulation. alpha0 is the best hardsync learning rate for batch 120 (tuned here,
3 seeds). The learners share the run's steps (--budget job, the harness's), so they end
together, as learners counting a server's epochs do. A side study repeats alpha0/tau, and
alpha0/<tau>, under a shuffled push order (every round of 30 pushes a fresh permutation), whose
tau spreads over 0..2n.

A second side study runs alpha0/tau at n = 30 with --budget replica (each learner does its own
part and stops), evaluated each 0.1 epoch: once the first learner has finished, fewer learners
push, tau falls towards 1 and the 1/tau factor rises towards 1 (n times its steady value). Its
note prints the accuracy at the last evaluation before the end beside the final one, and what the
pushes after the first learner finished carried, in both budgets.
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
    taus,
)

from ps.common import schema
from ps.obs.events import read_events

TITLE = "staleness-aware lr rescues high-staleness ASGD (Zhang et al. 2016)"
LEARNERS, BATCH = 30, 4
ALPHA0 = 0.02  # E2 uses it; E1 tunes it afresh and says if it moved
GRID = (0.01, 0.02, 0.05)
NS = (1, 6, 15, 30)
RULES = {"alpha0": "constant", "alpha0/tau": "inverse"}
EVAL_EVERY = 0.1  # epochs: the last evaluation before the end is at epochs - 0.1


def run(out_dir: Path, quick: bool = False) -> Result:
    seeds, epochs = ((0,), 1) if quick else ((0, 1, 2), 3)
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10 ** 6))

        def sim(where=None, **config):
            return simulated(where or Path(tmp) / f"run{next(runs)}", **{
                "replicas": LEARNERS, "batch_size": BATCH, "epochs": epochs,
                "optimizer": "momentum", **config})

        tuned = {a: mean_std([accuracy(sim(replicas=1, batch_size=LEARNERS * BATCH, lr=a, seed=s))
                              for s in seeds])[0] for a in GRID}
        alpha0 = max(tuned, key=tuned.get)
        acc = {(rule, n): [] for rule in RULES for n in NS}
        staleness, tails = {}, {}
        for rule, rule_name in RULES.items():
            for n in NS:
                for seed in seeds:
                    where = Path(tmp) / f"{rule_name}-n{n}-s{seed}"
                    acc[rule, n].append(accuracy(sim(where, lr=alpha0, lr_rule=rule_name,
                                                     consistency=f"softsync:n={n}", seed=seed)))
                    if rule == "alpha0/tau" and n == NS[-1]:
                        tails["job", seed] = tail(where)
                    if rule == "alpha0/tau" and seed == seeds[0]:
                        staleness[n] = taus(where)
        shuffled = {(rule, n): accuracy(sim(lr=alpha0, lr_rule=rule, consistency=f"softsync:n={n}",
                                            seed=seeds[0], order="shuffled", delay="constant"))
                    for rule in ("inverse", "inverse_mean") for n in NS}
        own_parts = {}  # --budget replica, alpha0/tau at n = 30: (before the end, final) accuracy
        for seed in seeds:
            where = Path(tmp) / f"replica-budget-s{seed}"
            summary = sim(where, lr=alpha0, lr_rule="inverse", consistency=f"softsync:n={NS[-1]}",
                          seed=seed, budget="replica", eval_every=EVAL_EVERY)
            own_parts[seed] = (100.0 * summary["evaluations"][-1]["accuracy"], accuracy(summary))
            tails["replica", seed] = tail(where)
    result = judge(acc, staleness, seeds, epochs, out_dir)
    result.figures.update({"hardsync_tuning": tuned, "alpha0": alpha0,
                           "shuffled_order": {f"{r} n={n}": a for (r, n), a in shuffled.items()},
                           "budget_replica_n30": {f"seed={s}": {"before_end": b, "final": f}
                                                  for s, (b, f) in own_parts.items()},
                           "alpha0/tau_n30_tail": {f"{b} seed={s}": t for (b, s), t in tails.items()}})
    result.notes.append(f"alpha0 = {alpha0:g}: the best hardsync (batch 120, momentum 0.9) of "
                        + ", ".join(f"{a:g} -> {v:.2f}%" for a, v in tuned.items()))
    result.notes.append("side study, shuffled push order (tau spread over 0..2n), seed "
                        f"{seeds[0]}: alpha0/tau " + ", ".join(
                            f"n={n} {shuffled['inverse', n]:.2f}%" for n in NS)
                        + "; alpha0/<tau> " + ", ".join(
                            f"n={n} {shuffled['inverse_mean', n]:.2f}%" for n in NS))
    result.notes.append(end_note(own_parts, tails, mean_std(acc["alpha0/tau", 1])[0], epochs))
    return result


def tail(run_dir: Path) -> dict:
    """The accepted pushes after the first learner finished its part: how many, their smallest
    tau, and the sum of their rule factors against the same count at the steady mean factor."""
    pushes = [r for r in read_events(run_dir / schema.LOG_NAME)
              if r.get("kind") == "push" and r["accepted"]]
    last = {}
    for i, r in enumerate(pushes):
        last[r["replica"]] = i
    first_done = min(last.values())
    steady = float(np.mean([r["scale"] for r in pushes[:first_done + 1]]))
    after = pushes[first_done + 1:]
    return {"pushes": len(after), "min_tau": min((r["tau"] for r in after), default=None),
            "factor_sum": float(sum(r["scale"] for r in after)),
            "steady_factor_sum": steady * len(after)}


def end_note(own_parts: dict, tails: dict, ref: float, epochs: int) -> str:
    """Side study: alpha0/tau at n = 30 when each learner does its own part (--budget replica),
    before its end and at it, against 1-softsync (`ref`); and what the pushes after the first
    learner finished carried, in both budgets."""
    before, final = (mean_std([v[k] for v in own_parts.values()])[0] for k in (0, 1))

    def carried(budget: str) -> str:
        worst = max((k for k in tails if k[0] == budget), key=lambda k: tails[k]["factor_sum"])
        t = tails[worst]
        return (f"{t['pushes']} pushes down to tau={t['min_tau']} carried {t['factor_sum']:.1f} "
                f"full-rate gradients (steady factor: {t['steady_factor_sum']:.1f}, seed {worst[1]})")
    return (f"side study, --budget replica (each learner its own part), alpha0/tau n={NS[-1]}: "
            f"{before - ref:+.2f} against 1-softsync at {epochs - EVAL_EVERY:g} epochs, "
            f"{final - ref:+.2f} at the end; after the first learner finished, "
            f"{carried('replica')}; with --budget job, {carried('job')}")


def judge(acc: dict, staleness: dict, seeds, epochs: int, out_dir: Path) -> Result:
    mean = {k: mean_std(v)[0] for k, v in acc.items()}
    checks = []
    tau_ok, tau_detail = True, []
    for n, t in staleness.items():
        tail = float((t > 2 * n).mean())
        if n >= 6:
            ok = 0.8 * n <= t.mean() <= 1.2 * n and tail < 1e-3
        else:
            ok = int(t.max()) <= 2
        tau_ok &= ok
        tau_detail.append(f"n={n}: <tau>={t.mean():.2f} max={t.max()} P(tau>2n)={tail:.1e}")
    checks.append(Check("<tau> in [0.8n, 1.2n] and P(tau > 2n) < 1e-3 for n >= 6; tau <= 2 for "
                        "1-softsync", tau_ok, "; ".join(tau_detail)))
    base = mean["alpha0", 1]
    worst = mean["alpha0", 30]
    checks.append(Check("alpha0 at n = 30 diverges or ends >= 10 points below 1-softsync",
                        worst <= base - 10 or worst < 20,
                        f"1-softsync {base:.2f}%, n=30 {worst:.2f}%"))
    ref = mean["alpha0/tau", 1]
    gaps = {n: ref - mean["alpha0/tau", n] for n in (6, 15, 30)}
    checks.append(Check("alpha0/tau: n = 6 and 15 within 1.5 points of 1-softsync, n = 30 within 3.5",
                        gaps[6] <= 1.5 and gaps[15] <= 1.5 and gaps[30] <= 3.5,
                        f"1-softsync {ref:.2f}%; " + ", ".join(f"n={n} {-g:+.2f}" for n, g in gaps.items())))
    figures = {"accuracy": {f"{r} n={n}": v for (r, n), v in acc.items()},
               "mean_tau": {n: float(t.mean()) for n, t in staleness.items()},
               "seeds": list(seeds), "epochs": epochs}
    return Result("E1", TITLE, checks, figures, plot(acc, staleness, out_dir))


def plot(acc: dict, staleness: dict, out_dir: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for rule in RULES:
        stats = [mean_std(acc[rule, n]) for n in NS]
        left.errorbar(NS, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                      label=rule)
    left.set(xlabel="n (n-softsync)", ylabel="test accuracy (%)", xticks=NS,
             title="30 learners x batch 4, PS momentum 0.9")
    left.legend()
    for n, t in staleness.items():
        counts = np.bincount(t)
        right.plot(np.arange(len(counts)), counts / counts.sum(), label=f"n={n}")
    right.set(xlabel="staleness tau (updates)", ylabel="share of pushes",
              title="staleness distribution (alpha0/tau, first seed)")
    right.legend()
    return save_figure(fig, out_dir / "e1.png")
