"""Micro-benchmarks of one parameter-server shard, against numpy memcpy on this machine in the
same run: pull+push bandwidth from 1K to 10M floats, how many pushes of 100K floats one shard
applies per second (from the driver, and from 2 and 4 actors at once), and what one Ray actor call
costs in time and CPU.

    python scripts/bench_micro.py [--reps 5] [--json FILE]
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from ps.driver.ray_session import system_config  # noqa: E402
from ps.server.optimizers import parse_optimizer  # noqa: E402
from ps.server.shard import ParameterShard  # noqa: E402

SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
CLIENTS = (2, 4)


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


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Echo:
    """The smallest actor: what a call costs with nothing to do, or with n floats each way."""

    def __init__(self, n: int):
        self.values = np.zeros(n, np.float32)

    def cpu(self) -> float:
        return cpu_seconds()

    def noop(self) -> int:
        return 1

    def take(self, values) -> int:
        return 1

    def give(self) -> np.ndarray:
        return self.values


def call_cost(n: int, calls: int) -> dict:
    """Per awaited call from the driver: wall time and the CPU time of the caller and of the actor,
    for an empty call, n floats sent, and n floats returned."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    echo, values = ray.remote(Echo).options(num_cpus=0).remote(n), np.ones(n, np.float32)
    kinds = {"empty": lambda: echo.noop.remote(), f"{n:,} floats sent": lambda: echo.take.remote(values),
             f"{n:,} floats returned": lambda: echo.give.remote()}
    rows = {}
    for kind, call in kinds.items():
        for _ in range(20):
            ray.get(call())
        actor0, caller0, start = ray.get(echo.cpu.remote()), cpu_seconds(), time.perf_counter()
        for _ in range(calls):
            ray.get(call())
        wall, caller = time.perf_counter() - start, cpu_seconds() - caller0
        actor = ray.get(echo.cpu.remote()) - actor0
        rows[kind] = {"wall_ms": 1e3 * wall / calls, "caller_cpu_ms": 1e3 * caller / calls,
                      "actor_cpu_ms": 1e3 * actor / calls}
        print(f"call, {kind}: {rows[kind]['wall_ms']:.2f} ms, caller CPU {rows[kind]['caller_cpu_ms']:.2f} ms, "
              f"actor CPU {rows[kind]['actor_cpu_ms']:.2f} ms", flush=True)
    ray.kill(echo)
    return rows


class Pusher:
    """A stand-in replica for `pushes_per_s_from`: sends gradients to the shard without waiting."""

    def __init__(self, shard, n: int):
        self.shard, self.grad = shard, np.ones(n, np.float32)

    def push(self, pushes: int) -> int:
        return len(ray.get([self.shard.push.remote(self.grad, 0, 0) for _ in range(pushes)]))


def pushes_per_s_from(shard, n: int, pushes: int, clients: int) -> float:
    """The same from `clients` actors at once, as several replicas feed one shard: how many the
    shard applies when one client's cost of sending is not the limit."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import scripts/
    pool = [ray.remote(Pusher).options(num_cpus=0).remote(shard, n) for _ in range(clients)]
    ray.get([p.push.remote(5) for p in pool])  # started and warm
    start = time.perf_counter()
    done = sum(ray.get([p.push.remote(pushes // clients) for p in pool]))
    rate = done / (time.perf_counter() - start)
    for p in pool:
        ray.kill(p)
    return rate


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
    print(f"one shard applies {rate:.0f} pushes/s of 100K floats from the driver (sgd)", flush=True)
    rates = {clients: pushes_per_s_from(shard, 100_000, pushes, clients) for clients in CLIENTS}
    for clients, r in rates.items():
        print(f"one shard applies {r:.0f} pushes/s of 100K floats from {clients} actors", flush=True)
    ray.kill(shard)
    calls = call_cost(100_000, calls=300)
    return {"bandwidth": rows, "pushes_per_s_100k": rate, "pushes_per_s_100k_from_actors": rates,
            "call_cost": calls}


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
