"""Resource sizing and address checks, without Ray."""

import socket

import pytest

from ps.cluster import check_reachable, plan_resources
from ps.config import TrainConfig
from ps.errors import UserError


def test_defaults_share_the_cpus_and_never_overcommit():
    place = plan_resources(TrainConfig(replicas=2, shards=1), {"CPU": 2.0})
    assert place.replica_cpus == place.shard_cpus == 0.6666  # rounded down: 3 x 0.6667 > 2
    assert 2 * place.replica_cpus + place.shard_cpus <= 2.0
    assert place.threads == 1


def test_a_big_cluster_gives_each_actor_one_cpu():
    place = plan_resources(TrainConfig(replicas=4, shards=2), {"CPU": 64.0})
    assert (place.replica_cpus, place.shard_cpus, place.threads) == (1.0, 1.0, 1)


def test_prefetch_defaults_on_only_with_a_core_or_gpu_of_its_own():
    assert not plan_resources(TrainConfig(replicas=4, shards=2), {"CPU": 2.0}).prefetch
    assert plan_resources(TrainConfig(replicas=4, shards=2), {"CPU": 8.0}).prefetch
    assert plan_resources(TrainConfig(device="cuda"), {"CPU": 2.0, "GPU": 4.0}).prefetch
    assert plan_resources(TrainConfig(prefetch=True), {"CPU": 2.0}).prefetch
    assert not plan_resources(TrainConfig(prefetch=False), {"CPU": 64.0}).prefetch


def test_asking_for_more_than_the_cluster_has_is_refused():
    with pytest.raises(UserError, match="ask for 10 CPUs in all .* cluster has 2"):
        plan_resources(TrainConfig(replicas=4, shards=2, replica_cpus=2.0, shard_cpus=1.0), {"CPU": 2.0})
    with pytest.raises(UserError, match="cluster has 0"):
        plan_resources(TrainConfig(device="cuda"), {"CPU": 2.0})


def test_an_address_nobody_answers_on_fails_fast():
    with socket.socket() as s:  # a port that was just free on this machine: connecting is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"nothing answers at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    check_reachable("auto")  # resolved by Ray, not checked here
