"""Reproduce one of the async-SGD papers' findings (docs/experiments.md): `python scripts/experiment.py E1`.

Each experiment trains what its protocol asks (in simulation, or on a local Ray), writes a plot and
its figures into --out (default docs/experiments/), and prints one line per pass criterion and a
final `E1: PASS` or `E1: FAIL` line. Exit status: 0 PASS, 1 FAIL, 2 bad input.
"""

import argparse
import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))            # experiments.*
sys.path.insert(0, str(HERE.parent))     # the project, when run from a checkout
EXPERIMENTS = ("E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}")
    p.add_argument("--out", default=str(HERE.parent / "docs" / "experiments"),
                   help="folder for the plot and the figures (default: docs/experiments)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: fewer seeds and epochs (its verdict is not the protocol's)")
    args = p.parse_args(argv)
    name = args.experiment.upper()
    if name not in EXPERIMENTS:
        print(f"experiment: error: '{args.experiment}' is not one of {', '.join(EXPERIMENTS)}",
              file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"experiments.{name.lower()}")
    except ModuleNotFoundError as exc:
        print(f"experiment: error: {name} is not written yet ({exc})", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = module.run(out, quick=args.quick)
    result.figures["wall_time_s"] = round(time.time() - t0, 1)
    result.figures["quick"] = args.quick
    result.save(out)
    lines = "\n".join(result.lines())
    (out / f"{name.lower()}.txt").write_text(lines + "\n")  # what docs/experiments.md quotes
    print(lines)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
