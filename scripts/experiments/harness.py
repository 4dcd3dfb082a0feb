"""What every experiment of scripts/experiment.py shares: its result, data, scoring and plots.

An experiment module (scripts/experiments/eN.py) has `TITLE` and `run(out_dir, quick) -> Result`:
it trains what its protocol (docs/experiments.md) asks, writes one PNG into `out_dir`, and judges
each pass line as a Check. `quick` shrinks it (fewer seeds, epochs) for a smoke run; the figures
in docs/experiments.md come from full runs.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np


@dataclass
class Check:
    name: str        # the pass line, in the protocol's words
    passed: bool
    detail: str      # what was measured against it


@dataclass
class Result:
    experiment: str                 # "E1"
    title: str
    checks: list[Check]
    figures: dict = field(default_factory=dict)  # every number the verdict rests on (JSON-able)
    plot: Optional[Path] = None
    notes: list[str] = field(default_factory=list)  # deviations from the protocol, and why

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def lines(self) -> list[str]:
        out = [f"{self.experiment} {self.title}"]
        out += [f"  [{'pass' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        out += [f"  note: {n}" for n in self.notes]
        if self.plot:
            out.append(f"  plot: {self.plot.name}")
        out.append(f"{self.experiment}: {'PASS' if self.passed else 'FAIL'}")
        return out

    def save(self, out_dir: Path) -> Path:
        path = out_dir / f"{self.experiment.lower()}.json"
        body = {"experiment": self.experiment, "title": self.title, "passed": self.passed,
                "checks": [c.__dict__ for c in self.checks], "figures": self.figures,
                "plot": self.plot and self.plot.name, "notes": self.notes}
        path.write_text(json.dumps(body, indent=2, default=_plain) + "\n")
        return path


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def fashion_mnist(seed: int = 0):
    """The real data (DOWNPOUR_DATA, the cache or Debian's copy; never downloaded here)."""
    from replicas.data import load_dataset
    return load_dataset("fashion-mnist", None, seed, download=False)


def mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def pyplot():
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Lays out, writes and closes `fig`; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


# The simulated experiments' step-time model: every learner's step takes 10 ms +- 10 %, as equal
# machines do, so tau gathers near its mean as Zhang et al.'s measured distributions (Fig. 1) do.
DELAY, ORDER = "uniform:mean=0.01,jitter=0.1", "delay"
ROUND_MODES = ("sync", "backup")  # their rounds end the learners together; --budget job is refused


def job_budget(consistency: str) -> str:
    """The learners share the run's steps (--budget job) and end together, as learners counting a
    server's epochs do; the round modes keep the default, which ends them together already."""
    return "replica" if consistency.split(":")[0] in ROUND_MODES else "job"


def simulated(run_dir: Path, delay: str = DELAY, order: str = ORDER, warmstart: float = 0.0,
              **config) -> dict:
    """One `downpour simulate` run on the real data; returns its summary (run_dir holds the rest)."""
    import io

    from ps.common.config import TrainConfig
    from ps.sim.run import SimSettings, simulate
    base = {"model": "mlp128", "eval_every": 0.0, "lr_schedule": "constant", "optimizer": "sgd",
            "lr_rule": "constant", "shards": 1, "divergence_factor": 0.0,
            "budget": job_budget(config.get("consistency", "async"))}
    c = TrainConfig(**{**base, **config, "run_dir": str(run_dir)})
    _, summary = simulate(c, SimSettings(delay=delay, order=order, warmstart=warmstart),
                          out=io.StringIO())
    return summary


def trained(run_dir: Path, **config) -> dict:
    """One `downpour train` run (a local Ray) on the real data; returns its summary."""
    import io

    from ps.common.config import TrainConfig
    from ps.driver.train import train
    base = {"model": "mlp128", "eval_every": 0.0, "lr_schedule": "constant", "optimizer": "sgd",
            "lr_rule": "constant", "shards": 1, "divergence_factor": 0.0, "metrics": False}
    c = TrainConfig(**{**base, **config, "run_dir": str(run_dir)})
    _, summary = train(c, out=io.StringIO())
    return summary


def taus(run_dir: Path) -> np.ndarray:
    """Every accepted push's staleness, from the run's event log."""
    from ps.common import schema
    from ps.obs.events import read_events
    return np.array([r["tau"] for r in read_events(run_dir / schema.LOG_NAME)
                     if r.get("kind") == "push" and r["accepted"]], dtype=np.int64)


def accuracy(summary: dict) -> float:
    """Test accuracy in points (0 for a run that ended without a usable model)."""
    return 100.0 * (summary.get("test_accuracy") or 0.0)
