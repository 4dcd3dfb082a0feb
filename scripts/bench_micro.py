"""Micro-benchmarks of one parameter-server shard over both transports, against numpy memcpy on
this machine in the same run: fetch+push bandwidth from 1K to 10M floats through Ray calls and
through shared memory, how many pushes of 100K floats one shard applies per second (Ray: from the
driver and from 1, 2, 4 actors at once; shared memory: from 1, 2, 4 actors at once), and what one
Ray actor call costs in time and CPU.

    python scripts/bench_micro.py [--reps 5] [--pushes 1000] [--json FILE]

Every shared-memory segment made here is removed at the end (nothing is left in /dev/shm).
"""

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from ps.common.shm import ShmNames  # noqa: E402
from ps.driver.ray_session import system_config  # noqa: E402
from ps.server.optimizers import parse_optimizer  # noqa: E402
from ps.server.shard import ParameterShard  # noqa: E402
from ps.server.shm_shard import SharedMemoryShard  # noqa: E402
from replicas.shm_client import ShmShardClient  # noqa: E402
from sharding import make_plan  # noqa: E402

SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
PUSH_FLOATS = 100_000
CLIENTS = (1, 2, 4)
SHM_INFLIGHT = 2               # a replica's default max_inflight
SHM_DEPTH = SHM_INFLIGHT + 1   # slots per shard: one more than the pushes in flight
TIMEOUT_S = 60.0


def ship_this_module() -> None:
    """Actors of classes defined here must be pickled by value: workers cannot import scripts/."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---- shards ----------------------------------------------------------------------------------

def shard_args(n: int) -> tuple:
    return 0, np.zeros(n, np.float32), parse_optimizer("sgd"), 1e-3, "constant"


@contextlib.contextmanager
def ray_shard(n: int):
    shard = ray.remote(ParameterShard).options(num_cpus=1).remote(*shard_args(n))
    ray.get(shard.pull.remote())  # started and warm
    try:
        yield shard
    finally:
        ray.kill(shard)


@contextlib.contextmanager
def shm_shard(n: int):
    """(shard, its ShmNames); a run's names of its own, so every file goes with it."""
    names = ShmNames.new()
    shard = ray.remote(SharedMemoryShard).options(num_cpus=1).remote(*shard_args(n), shm=names)
    try:
        ray.get(shard.pull.remote())  # started: its board and doorbell exist
        yield shard, names
    finally:
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(shard.close.remote())
        ray.kill(shard)
        names.remove()


class ShmReplica:
    """A replica's side of shared memory to one shard of n floats, fetching and pushing as the
    replica loop does; used from the driver and as an actor (a process of its own, as a replica)."""

    def __init__(self, shard, names: ShmNames, n: int, replica_id: int):
        plan = make_plan([("w", (n,))], 1, "balanced")
        self.id, self.grad, self.host = replica_id, np.ones(n, np.float32), np.empty(n, np.float32)
        self.client = ShmShardClient(plan, names, replica_id, [shard], depth=SHM_DEPTH,
                                     timeout_s=TIMEOUT_S)
        self.got = self.fetch()

    def fetch(self):
        return self.client.install(self.client.start_fetch(), self.host)

    def push_awaited(self) -> None:
        self.client.push(self.grad, self.got, self.id, and_pull=False)
        self.client.settle_oldest()

    def push(self, pushes: int) -> int:
        """Pushes without waiting for each, as a replica does, keeping at most SHM_INFLIGHT in
        flight; returns once all are acknowledged."""
        for _ in range(pushes):
            self.client.push(self.grad, self.got, self.id, and_pull=False)
            while self.client.inflight > SHM_INFLIGHT:
                self.client.settle_oldest()
        while self.client.inflight:
            self.client.settle_oldest()
        return pushes

    def close(self) -> None:
        self.client.close()


# ---- bandwidth -------------------------------------------------------------------------------

def memcpy_bytes_per_s(n: int, reps: int) -> float:
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    return src.nbytes / median_seconds(lambda: np.copyto(dst, src), reps)


def median_seconds(fn, reps: int) -> float:
    """Of `reps` timed calls after an untimed one: first touches (page faults of a fresh buffer,
    a shard attaching a replica's slots) are not what a steady replica pays."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ray_round_trip(shard, n: int):
    """A replica's round over Ray: pull the shard's values, push a gradient of the same size,
    both awaited."""
    grad = np.ones(n, np.float32)

    def once():
        version, _ = ray.get(shard.pull.remote())
        ray.get(shard.push.remote(grad, version, 0))
    return once


def shm_round_trip(end: "ShmReplica"):
    """The same over shared memory: copy the board, copy into a slot and ring, wait for the result."""
    def once():
        end.got = end.fetch()
        end.push_awaited()
    return once


def bandwidth_row(n: int, reps: int) -> dict:
    """Bytes of both directions over the median round time, each transport against memcpy."""
    nbytes = 2 * 4 * n
    with ray_shard(n) as shard:
        ray_rate = nbytes / median_seconds(ray_round_trip(shard, n), reps)
    with shm_shard(n) as (shard, names):
        end = ShmReplica(shard, names, n, replica_id=0)  # from the driver
        try:
            shm_rate = nbytes / median_seconds(shm_round_trip(end), reps)
        finally:
            end.close()
    copy = memcpy_bytes_per_s(n, reps)
    row = {"floats": n, "ray_GBps": ray_rate / 1e9, "shm_GBps": shm_rate / 1e9, "memcpy_GBps": copy / 1e9,
           "ray_ratio": ray_rate / copy, "shm_ratio": shm_rate / copy}
    print(f"{n:>10} floats: fetch+push ray {row['ray_GBps']:7.3f} GB/s, shm {row['shm_GBps']:7.3f} GB/s, "
          f"memcpy {row['memcpy_GBps']:7.3f} GB/s; ratio ray {row['ray_ratio']:.3f}, "
          f"shm {row['shm_ratio']:.3f}", flush=True)
    return row


# ---- pushes per second -----------------------------------------------------------------------

def ray_pushes_from_driver(shard, n: int, pushes: int) -> float:
    """Pushes sent without waiting, as replicas do; time until the shard has applied them all."""
    grad = np.ones(n, np.float32)
    start = time.perf_counter()
    ray.get([shard.push.remote(grad, 0, 0) for _ in range(pushes)])
    return pushes / (time.perf_counter() - start)


class RayPusher:
    """A stand-in replica: sends gradients to the shard over Ray without waiting."""

    def __init__(self, shard, n: int):
        self.shard, self.grad = shard, np.ones(n, np.float32)

    def push(self, pushes: int) -> int:
        return len(ray.get([self.shard.push.remote(self.grad, 0, 0) for _ in range(pushes)]))


def pushes_from_actors(pool: list, pushes: int) -> float:
    """The pushers of `pool` at once, as several replicas feed one shard, sharing `pushes`: how
    many the shard applies when one sender's cost of sending is not the limit. Kills the pool."""
    try:
        ray.get([p.push.remote(5) for p in pool])  # started and warm
        start = time.perf_counter()
        done = sum(ray.get([p.push.remote(pushes // len(pool)) for p in pool]))
        return done / (time.perf_counter() - start)
    finally:
        for p in pool:  # a shared-memory pusher's files go with its shard's names
            ray.kill(p)


def ray_push_rates(n: int, pushes: int) -> dict:
    ship_this_module()
    pusher = ray.remote(RayPusher).options(num_cpus=0)
    with ray_shard(n) as shard:
        rates = {"driver": ray_pushes_from_driver(shard, n, pushes)}
        for clients in CLIENTS:
            rates[str(clients)] = pushes_from_actors([pusher.remote(shard, n) for _ in range(clients)],
                                                     pushes)
    return rates


def shm_push_rates(n: int, pushes: int) -> dict:
    ship_this_module()
    pusher = ray.remote(ShmReplica).options(num_cpus=0)
    rates = {}
    for clients in CLIENTS:  # a shard (and names) per count, so replica ids start at 0 each time
        with shm_shard(n) as (shard, names):
            rates[str(clients)] = pushes_from_actors(
                [pusher.remote(shard, names, n, i) for i in range(clients)], pushes)
    return rates


# ---- what a Ray call costs -------------------------------------------------------------------

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
    ship_this_module()
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


def measure(reps: int, pushes: int) -> dict:
    """Every micro-benchmark on the running Ray; prints each row as it is measured."""
    bandwidth = [bandwidth_row(n, reps) for n in SIZES]
    rates = {"ray": ray_push_rates(PUSH_FLOATS, pushes), "shm": shm_push_rates(PUSH_FLOATS, pushes)}
    for transport, by_sender in rates.items():
        for sender, rate in by_sender.items():
            where = "the driver" if sender == "driver" else f"{sender} actor(s) at once"
            print(f"one shard applies {rate:.0f} pushes/s of 100K floats over {transport} from {where} (sgd)",
                  flush=True)
    return {"bandwidth": bandwidth, "pushes_per_s_100k": rates, "call_cost": call_cost(PUSH_FLOATS, calls=300)}


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
