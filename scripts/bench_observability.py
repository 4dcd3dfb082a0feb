"""What the event log and the Ray metrics cost: the same job with both on and with both off,
interleaved in one Ray session, several times; prints the median samples/s of each and the median
of the on/off ratios within each repetition. First, the same cost in isolation: what recording adds
to one shard push in-process, and the driver's work per record.

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

from ps.common.config import TrainConfig  # noqa: E402
from ps.driver.ray_session import system_config  # noqa: E402
from ps.driver.train import train  # noqa: E402


def one_run(config: TrainConfig, observed: bool, root: Path, index: int) -> float:
    c = dataclasses.replace(config, event_log=observed, metrics=observed,
                            run_dir=str(root / f"{'on' if observed else 'off'}-{index}"))
    _, summary = train(c, out=io.StringIO())
    if summary["status"] != "completed":
        raise SystemExit(f"run failed: {summary['error']}")
    return summary["samples_per_s"]


def push_cost(size: int, pushes: int) -> dict:
    """In-process, no Ray round trip: two shards of `size` floats, one recording (event log and
    metrics) and one not, pushed to alternately (in turns, first one then the other going first)
    and each push timed, so both see the same machine noise; medians of the per-push times. Events are drained every 100 pushes, as the job drains
    them once a second. Plus the driver's work per record (log append, live view). Run inside a
    Ray session: metrics need a worker."""
    import numpy as np

    from ps.common import schema
    from ps.obs import events
    from ps.obs.live import LiveStats
    from ps.server.optimizers import parse_optimizer
    from ps.server.shard import ParameterShard

    shards = {observed: ParameterShard(0, np.zeros(size, np.float32), parse_optimizer("adam"), 1e-3,
                                       "inverse", metrics_run="bench" if observed else None,
                                       record_events=observed) for observed in (True, False)}
    grad = np.ones(size, np.float32)
    times, drains, batch = {True: [], False: []}, {True: 0.0, False: 0.0}, []
    for i in range(pushes):
        for observed in ((True, False) if i % 2 else (False, True)):  # the second finds grad in cache
            shard = shards[observed]
            start = time.perf_counter()
            shard.push(grad, shard.version, 0)
            times[observed].append(time.perf_counter() - start)
        if i % 100 == 99:
            for observed, shard in shards.items():
                start = time.perf_counter()
                drained = shard.drain_events()
                drains[observed] += time.perf_counter() - start
                batch = drained if observed else batch
    with tempfile.TemporaryDirectory() as tmp:
        log = events.EventLog(Path(tmp) / "log")
        live = LiveStats(schema.header_record(0.0, 1, 1, [size], batch_size=32, n_push=1))
        start = time.perf_counter()
        log.append(batch)
        live.ingest(batch)
        live.snapshot()
        driver = (time.perf_counter() - start) / len(batch)
        log.close()
    on, off = statistics.median(times[True]), statistics.median(times[False])
    drain_extra = (drains[True] - drains[False]) / pushes
    return {"size": size, "push_s": off, "extra_push_latency_s": on - off,
            "extra_drain_per_push_s": drain_extra,
            "extra_share_of_push": (on - off + drain_extra) / off, "driver_per_record_s": driver}


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
    parser.add_argument("--micro-pushes", type=int, default=2000)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    config = TrainConfig(model=args.model, dataset=args.dataset, replicas=args.replicas,
                         shards=args.shards, epochs=args.epochs, eval_every=0.0)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING",
             _system_config=system_config())
    micro = push_cost(args.micro_size, args.micro_pushes)
    print(f"one shard in-process: a push of {micro['size']} floats (adam) takes "
          f"{1e6 * micro['push_s']:.0f} us; recording adds {1e6 * micro['extra_push_latency_s']:.1f} us "
          f"to it and {1e6 * micro['extra_drain_per_push_s']:.1f} us a push to the drain "
          f"({100 * micro['extra_share_of_push']:.1f}% of the shard's work); the driver spends "
          f"{1e6 * micro['driver_per_record_s']:.1f} us a record", flush=True)
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
