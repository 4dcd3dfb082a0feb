"""The GPU path's ordering: the pinned host buffer is not rewritten while an upload may read it, and
compute is timed to its completion. Fake device syncs prove the order on CPU; one test needs a GPU."""

import numpy as np
import pytest
import torch
from test_replica import make_replica

import replicas.replica as replica_module
from replicas.flat import DeviceSync, FlatParams
from replicas.models import build_model


class RecordingSync(DeviceSync):
    """Writes each call into a log shared with the test's client, so their order can be read."""

    def __init__(self, log: list):
        self.log = log

    def record(self):
        self.log.append("record")

    def wait(self):
        self.log.append("wait")

    def synchronize(self):
        self.log.append("synchronize")


def test_upload_records_and_handing_out_the_host_buffer_waits_for_it():
    log = []
    flat = FlatParams(build_model("mlp", 0), torch.device("cpu"), sync=RecordingSync(log))
    flat.host_values()
    flat.upload()
    flat.host_values()
    assert log == ["wait", "record", "wait"]


def test_the_next_install_waits_for_the_last_upload_before_writing_the_host_buffer():
    # n_push=3: no push (and its synchronous copy back) between the installs, the racy case
    replica, client, _ = make_replica(n_push=3, total_steps=3)
    log = []
    replica.flat.sync = RecordingSync(log)
    client.hook = lambda step: log.append("write")  # install begins assembling into the host buffer
    replica.run()
    assert log == ["wait", "write", "record", "synchronize"] * 3


class StreamClock(DeviceSync):
    """A device sync that is also the replica's clock: time moves 1 s each time queued device work
    is waited for, so a compute step timed without waiting measures 0 s."""

    def __init__(self):
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def synchronize(self):
        self.now += 1.0


def test_compute_time_includes_waiting_for_the_device(monkeypatch):
    replica, _, _ = make_replica(total_steps=4, prefetch=True)
    replica.flat.sync = clock = StreamClock()
    monkeypatch.setattr(replica_module, "time", clock)
    replica.run()
    assert replica.timers["compute"] == 4.0
    assert replica.jit.compute_s == pytest.approx(1.0)  # what the prefetch timer aims against


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_on_a_gpu_back_to_back_installs_upload_the_latest_values_and_training_runs():
    device = torch.device("cuda")
    flat = FlatParams(build_model("mlp", 0), device)
    host = flat.host_values()
    host[:] = 1.0
    flat.upload()
    flat.host_values()[:] = 2.0  # at once, while the first copy may still be in flight
    flat.upload()
    torch.cuda.synchronize()
    assert torch.equal(flat.values.cpu(), torch.full((flat.total,), 2.0))
    replica, _, shards = make_replica(n_push=2, total_steps=4, device="cuda")
    result = replica.run()
    assert result["steps"] == 4 and [s.version for s in shards] == [2, 2]
    assert result["compute_s"] > 0 and all(np.isfinite(s.pull()[1]).all() for s in shards)
