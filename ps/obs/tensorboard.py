"""TensorBoard scalars of a run in RUN_DIR/tensorboard (the optional `tensorboard` extra).

The x axis is training samples processed by all replicas, so runs with different N line up.
Written by the driver from the live snapshot it already computes: nothing extra on the push path.
"""

import importlib.util
from pathlib import Path

from ps.common.errors import UserError

DIR_NAME = "tensorboard"


def require_tensorboard() -> None:
    """Checked before the run starts, so a missing package costs seconds, not a run."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("tensorboard is on but the tensorboard package is missing: "
                        "pip install 'downpour[tensorboard]' or drop --tensorboard")


class Scalars:
    def __init__(self, run_path: Path):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_path) / DIR_NAME))

    def live(self, samples: int, snapshot: dict) -> None:
        """One point per driver poll: throughput and the windowed staleness percentiles."""
        self.writer.add_scalar(f"throughput/{snapshot['rate_unit']}", snapshot["rate"], samples)
        tau = snapshot["tau"]
        for name in ("p50", "p90", "p99", "mean"):
            if tau[name] is not None:
                self.writer.add_scalar(f"staleness/tau_{name}", tau[name], samples)

    def evaluation(self, samples: int, result: dict) -> None:
        self.writer.add_scalar("test/accuracy", result["accuracy"], samples)
        if result.get("loss") is not None:
            self.writer.add_scalar("test/loss", result["loss"], samples)

    def close(self) -> None:
        self.writer.close()
