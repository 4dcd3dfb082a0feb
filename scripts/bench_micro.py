"""Micro-benchmarks of one parameter-server shard, against numpy memcpy on this machine in the
same run: pull+push bandwidth from 1K to 10M floats, and how many pushes of 100K floats one shard
applies per second.

    python scripts/bench_micro.py [--reps 5] [--json FILE]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from ps.cluster import system_config  # noqa: E402
from ps.optimizers import parse_optimizer  # noqa: E402
from ps.shard import ParameterShard  # noqa: E402

SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)


def memcpy_bytes_per_s(n: int, reps: int) -> float:
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return src.nbytes / statistics.median(times)


def round_trip_bytes_per_s(shard, n: int, reps: int) -> float:
    """A replica's round: pull the shard's values, push a gradient of the same size, both awaited.
    Counts the bytes of both directions."""
    grad = np.ones(n, np.float32)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        version, _ = ray.get(shard.pull.remote())
        ray.get(shard.push.remote(grad, version, 0))
        times.append(time.perf_counter() - start)
    return 2 * grad.nbytes / statistics.median(times)


def pushes_per_s(shard, n: int, pushes: int) -> float:
    """Pushes sent without waiting, as replicas do; time until the shard has applied them all."""
    grad = np.ones(n, np.float32)
    version = ray.get(shard.pull.remote())[0]
    start = time.perf_counter()
    ray.get([shard.push.remote(grad, version, 0) for _ in range(pushes)])
    return pushes / (time.perf_counter() - start)


def new_shard(n: int):
    cls = ray.remote(ParameterShard).options(num_cpus=1)
    return cls.remote(0, np.zeros(n, np.float32), parse_optimizer("sgd"), 1e-3, "constant")


def measure(reps: int, pushes: int) -> dict:
    """Both micro-benchmarks on the running Ray; prints each row as it is measured."""
    rows = []
    for n in SIZES:
        shard = new_shard(n)
        ray.get(shard.pull.remote())  # started and warm
        rpc, copy = round_trip_bytes_per_s(shard, n, reps), memcpy_bytes_per_s(n, reps)
        rows.append({"floats": n, "pull_push_GBps": rpc / 1e9, "memcpy_GBps": copy / 1e9,
                     "ratio": rpc / copy})
        print(f"{n:>10} floats: pull+push {rpc / 1e9:7.3f} GB/s, memcpy {copy / 1e9:7.3f} GB/s, "
              f"ratio {rpc / copy:.3f}", flush=True)
        ray.kill(shard)
    shard = new_shard(100_000)
    rate = pushes_per_s(shard, 100_000, pushes)
    ray.kill(shard)
    print(f"one shard applies {rate:.0f} pushes/s of 100K floats (sgd)", flush=True)
    return {"bandwidth": rows, "pushes_per_s_100k": rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pushes", type=int, default=1000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING",
             _system_config=system_config())
    result = measure(args.reps, args.pushes)
    ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
