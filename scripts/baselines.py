"""The baselines downpour is measured against, each training the same model on the same batches:
single-process torch, torch DDP over gloo, and the pattern of Ray's own parameter-server example
(one actor holding the whole model; the driver waits on whichever worker finishes and sends it
new weights). Each returns samples per second over its timed steps (start-up excluded).
"""

import os
import socket
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from replicas.data import epoch_batches, normalise, partition
from replicas.models import build_model

WARMUP_STEPS = 5


def batches_of(dataset, parts: int, part: int, batch_size: int, seed: int = 0):
    """Endless batches of one part of the training set, as a downpour replica draws them."""
    indices = partition(len(dataset.train_labels), parts, part, seed)
    epoch = 0
    while True:
        for batch in epoch_batches(indices, batch_size, epoch, seed, part):
            yield (torch.from_numpy(normalise(dataset.train_images[batch])),
                   torch.from_numpy(dataset.train_labels[batch]))
        epoch += 1


def adam(params):
    """The optimizer of every system here, fused as downpour's shards run it (the fastest on CPU)."""
    return torch.optim.Adam(params, lr=0.003, fused=True)


def train_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def train_steps(model, optimizer, batches, steps: int) -> None:
    for _ in range(steps):
        train_step(model, optimizer, *next(batches))


def single_process(dataset, model_name: str, batch_size: int, steps: int, threads: int,
                   parts: int = 1, part: int = 0, before_clock=lambda: None) -> float:
    """One training process on part `part` of `parts`; `before_clock` runs after the warm-up
    (a barrier, where several start together)."""
    torch.set_num_threads(threads)
    model = build_model(model_name, 0)
    optimizer = adam(model.parameters())
    batches = batches_of(dataset, parts, part, batch_size)
    train_steps(model, optimizer, batches, WARMUP_STEPS)
    before_clock()
    start = time.perf_counter()
    train_steps(model, optimizer, batches, steps)
    return steps * batch_size / (time.perf_counter() - start)


def quiet_read_only_warning() -> None:
    """Arrays from Ray's object store are read-only; these actors only read them, as Ray's example does."""
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def time_to_accuracy(dataset, model_name: str, batch_size: int, threads: int, target: float,
                     max_epochs: float, eval_every: float) -> dict:
    """Single-process training until the test accuracy reaches `target`, evaluated every
    `eval_every` epochs on the whole test set with the clock paused: seconds of training."""
    torch.set_num_threads(threads)
    model = build_model(model_name, 0)
    optimizer = adam(model.parameters())
    batches = batches_of(dataset, 1, 0, batch_size)
    steps_per_epoch = len(dataset.train_labels) // batch_size
    every = max(1, int(eval_every * steps_per_epoch))
    trained, accuracy, step = 0.0, 0.0, 0
    while step < max_epochs * steps_per_epoch:
        start = time.perf_counter()
        train_steps(model, optimizer, batches, every)
        trained += time.perf_counter() - start
        step += every
        accuracy = accuracy_on_test_set(model, dataset)
        if accuracy >= target:
            return {"seconds": trained, "epochs": step / steps_per_epoch, "accuracy": accuracy}
    return {"seconds": None, "epochs": step / steps_per_epoch, "accuracy": accuracy}


def accuracy_on_test_set(model, dataset) -> float:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(normalise(dataset.test_images))
        correct = sum((model(xb).argmax(1) == yb).sum().item()
                      for xb, yb in zip(x.split(1000), torch.from_numpy(dataset.test_labels).split(1000)))
    model.train()
    return correct / len(dataset.test_labels)


# ---- N single-thread processes at once: what two independent workers get from this machine ----

def concurrent_single(dataset, model_name: str, batch_size: int, steps: int, processes: int) -> float:
    """The sum of the rates of `processes` single-thread trainings started together, each on its
    own part; no communication. The ceiling of any N-worker data-parallel scheme here."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, result = ctx.Barrier(processes), ctx.SimpleQueue()
    mp.spawn(_single_worker, args=(processes, barrier, dataset, model_name, batch_size, steps, result),
             nprocs=processes, join=True)
    return sum(result.get() for _ in range(processes))


def _single_worker(rank, world, barrier, dataset, model_name, batch_size, steps, result) -> None:
    result.put(single_process(dataset, model_name, batch_size, steps, 1, world, rank, barrier.wait))


# ---- DDP over gloo ---------------------------------------------------------------------------

def ddp(dataset, model_name: str, batch_size: int, steps: int, processes: int) -> float:
    """N processes of 1 thread each, gradients all-reduced over gloo on this machine's loopback."""
    import torch.multiprocessing as mp

    port = _free_port()
    result = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_ddp_worker, args=(processes, port, dataset, model_name, batch_size, steps, result),
             nprocs=processes, join=True)
    return result.get()


def _ddp_worker(rank, world, port, dataset, model_name, batch_size, steps, result) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = DistributedDataParallel(build_model(model_name, 0))
    optimizer = adam(model.parameters())
    batches = batches_of(dataset, world, rank, batch_size)
    train_steps(model, optimizer, batches, WARMUP_STEPS)
    dist.barrier()
    start = time.perf_counter()
    train_steps(model, optimizer, batches, steps)
    dist.barrier()
    if rank == 0:
        result.put(world * steps * batch_size / (time.perf_counter() - start))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the pattern of Ray's parameter-server example -------------------------------------------

class ParameterServer:
    """The whole model in one actor: applies one gradient at a time, hands out the weights."""

    def __init__(self, model_name: str):
        torch.set_num_threads(1)
        self.model = build_model(model_name, 0)
        self.optimizer = adam(self.model.parameters())
        quiet_read_only_warning()

    def apply_gradients(self, *gradients):
        self.optimizer.zero_grad()
        for param, grad in zip(self.model.parameters(), np.sum(gradients, axis=0)
                               if len(gradients) > 1 else gradients[0]):
            param.grad = torch.from_numpy(grad)
        self.optimizer.step()
        return self.get_weights()

    def get_weights(self):
        return [p.detach().numpy().copy() for p in self.model.parameters()]


class DataWorker:
    """Computes a gradient on the weights it is given, on its own part of the data."""

    def __init__(self, dataset, model_name: str, parts: int, part: int, batch_size: int):
        torch.set_num_threads(1)
        self.model = build_model(model_name, 0)
        self.batches = batches_of(dataset, parts, part, batch_size)
        quiet_read_only_warning()

    def compute_gradients(self, weights):
        with torch.no_grad():
            for param, value in zip(self.model.parameters(), weights):
                param.copy_(torch.from_numpy(value))
        self.model.zero_grad()
        x, y = next(self.batches)
        F.cross_entropy(self.model(x), y).backward()
        return [p.grad.numpy() for p in self.model.parameters()]


def ray_ps_example(dataset, model_name: str, batch_size: int, steps: int, workers: int) -> float:
    """Asynchronous: the driver waits on whichever worker finishes, applies its gradient on the
    server and sends that worker the new weights. `steps` gradients in all, after a warm-up."""
    import ray
    from ray import cloudpickle

    # scripts/ is not a package workers can import: ship these classes by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    share = 1.0 / (workers + 1)  # every actor an equal share of the machine, as downpour's default
    server = ray.remote(ParameterServer).options(num_cpus=share).remote(model_name)
    data = ray.put(dataset)
    pool = [ray.remote(DataWorker).options(num_cpus=share).remote(data, model_name, workers, w, batch_size)
            for w in range(workers)]
    weights = server.get_weights.remote()
    pending = {w.compute_gradients.remote(weights): w for w in pool}
    start, done = None, 0
    while done < steps + WARMUP_STEPS * workers:
        if done == WARMUP_STEPS * workers:
            start = time.perf_counter()
        [ready], _ = ray.wait(list(pending))
        worker = pending.pop(ready)
        weights = server.apply_gradients.remote(ready)
        pending[worker.compute_gradients.remote(weights)] = worker
        done += 1
    ray.get(weights)
    elapsed = time.perf_counter() - start
    ray.get(list(pending))  # killing a worker mid-task makes Ray log errors into the next test/run
    for actor in pool + [server]:
        ray.kill(actor)
    return steps * batch_size / elapsed
