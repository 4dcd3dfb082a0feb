"""What the event log and the Ray metrics cost: the same job with both on and with both off,
interleaved in one Ray session, several times; prints the median samples/s of each and the median
of the on/off ratios within each repetition. First, the same cost in isolation: one shard's push
in-process with and without them, and the driver's work per record.

    python scripts/bench_observability.py [--model mlp] [--reps 3] [--epochs 1] [--replicas 4]

The MLP is the sensitive case: it pushes most often per second of compute. Needs Fashion-MNIST
(DOWNPOUR_DATA or the usual lookup) or `--dataset synthetic`.
"""

import argparse
import dataclasses
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from ps.config import TrainConfig  # noqa: E402
from ps.job import train  # noqa: E402


def one_run(config: TrainConfig, observed: bool, root: Path, index: int) -> float:
    c = dataclasses.replace(config, event_log=observed, metrics=observed,
                            run_dir=str(root / f"{'on' if observed else 'off'}-{index}"))
    _, summary = train(c, out=io.StringIO())
    if summary["status"] != "completed":
        raise SystemExit(f"run failed: {summary['error']}")
    return summary["samples_per_s"]


def push_cost(size: int, pushes: int, blocks: int = 5) -> dict:
    """In-process, no Ray round trip: seconds per push on a shard of `size` floats with the event
    record and the metrics on, and with both off, in interleaved blocks; plus the driver's cost per
    record (drain, msgpack append, live view). Run inside a Ray session (metrics need a worker)."""
    import numpy as np

    from ps import events
    from ps.live import LiveStats
    from ps.optimizers import parse_optimizer
    from ps.shard import ParameterShard

    grad = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    times = {True: [], False: []}
    for block in range(blocks):
        for observed in (True, False):
            shard = ParameterShard(0, np.zeros(size, np.float32), parse_optimizer("adam"), 1e-3,
                                   "inverse", metrics_run="bench" if observed else None,
                                   record_events=observed)
            start = time.perf_counter()
            for _ in range(pushes):
                shard.push(grad, shard.version, 0)
            times[observed].append((time.perf_counter() - start) / pushes)
            if observed:
                batch = shard.drain_events()
    with tempfile.TemporaryDirectory() as tmp:
        log = events.EventLog(Path(tmp) / "log")
        live = LiveStats(events.header_record(0.0, 1, 1, [size], batch_size=32, n_push=1))
        start = time.perf_counter()
        log.append(batch)
        live.ingest(batch)
        live.snapshot()
        driver = (time.perf_counter() - start) / len(batch)
        log.close()
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return {"size": size, "push_s_on": on, "push_s_off": off, "extra_per_push_s": on - off,
            "driver_per_record_s": driver}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--micro-size", type=int, default=101_765, help="floats in the "
                        "in-process push benchmark (default: one of two MLP shards)")
    parser.add_argument("--micro-pushes", type=int, default=400)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    config = TrainConfig(model=args.model, dataset=args.dataset, replicas=args.replicas,
                         shards=args.shards, epochs=args.epochs, eval_every=0.0)
    ray.init(include_dashboard=False, logging_level="WARNING")
    micro = push_cost(args.micro_size, args.micro_pushes)
    print(f"one shard in-process, {micro['size']} floats, adam: {1e6 * micro['push_s_off']:.1f} us "
          f"a push without, {1e6 * micro['push_s_on']:.1f} us with event record + metrics "
          f"({1e6 * micro['extra_per_push_s']:+.1f} us); the driver spends "
          f"{1e6 * micro['driver_per_record_s']:.1f} us a record (drain batch, log, live view)",
          flush=True)
    rates = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.reps):
            for observed in ((True, False) if i % 2 == 0 else (False, True)):  # ABBA: drift cancels
                rates[observed].append(one_run(config, observed, Path(tmp), i))
                print(f"rep {i} {'on ' if observed else 'off'} {rates[observed][-1]:8.1f} samples/s",
                      flush=True)
    ray.shutdown()
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    # Each rep ran both, back to back: the ratio within a rep cancels the machine's drift.
    paired = sorted(a / b for a, b in zip(rates[True], rates[False]))
    ratio = statistics.median(paired)
    result = {"model": args.model, "replicas": args.replicas, "shards": args.shards,
              "epochs": args.epochs, "reps": args.reps, "on": rates[True], "off": rates[False],
              "median_on": on, "median_off": off, "paired_ratios": paired,
              "median_paired_ratio": ratio, "overhead_pct": 100 * (1 - ratio), "micro": micro}
    print(f"event log + metrics on : median {on:8.1f} samples/s  {rates[True]}")
    print(f"event log + metrics off: median {off:8.1f} samples/s  {rates[False]}")
    print(f"on/off within each rep: {', '.join(f'{r:.3f}' for r in paired)}")
    print(f"median on/off {ratio:.3f}  (overhead {100 * (1 - ratio):+.1f}%; ratio of the medians "
          f"{on / off:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
