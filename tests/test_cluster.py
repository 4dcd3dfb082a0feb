"""Resource sizing and address checks, without Ray."""

import socket

import pytest

from ps.common.config import TrainConfig, from_mapping
from ps.common.errors import UserError
from ps.driver.placement import plan_resources
from ps.driver.ray_session import check_reachable


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


def test_resource_specs_parse_and_name_the_field():
    from ps.common.resources import parse_resources

    assert parse_resources("CPU=1, GPU=0.5,ps=2", "shard_resources") == {"CPU": 1.0, "GPU": 0.5, "ps": 2.0}
    for bad in ("CPU", "CPU=-1", "CPU=x", "=1", ",", "CPU=inf"):
        with pytest.raises(UserError, match="shard_resources"):
            parse_resources(bad, "shard_resources")


def test_custom_resources_and_placement_reach_the_actor_options():
    config = TrainConfig(replicas=2, shards=2, replica_resources="CPU=1,replica=1",
                         shard_resources="CPU=0.5,ps=1", placement="spread")
    nodes = [{"CPU": 2.0, "ps": 2.0}, {"CPU": 2.0, "replica": 2.0}]
    place = plan_resources(config, {"CPU": 4.0, "ps": 2.0, "replica": 2.0}, nodes)
    assert place.replica_options() == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"replica": 1.0}}
    assert place.shard_options() == {"num_cpus": 0.5, "resources": {"ps": 1.0},
                                     "scheduling_strategy": "SPREAD"}
    packed = plan_resources(TrainConfig(placement="pack"), {"CPU": 8.0}, [{"CPU": 8.0}])
    assert packed.shard_options()["scheduling_strategy"] == "DEFAULT"


def test_a_gpu_in_the_replica_resources_gives_replicas_gpus():
    place = plan_resources(TrainConfig(replicas=2, replica_resources="GPU=1"),
                           {"CPU": 4.0, "GPU": 2.0}, [{"CPU": 4.0, "GPU": 2.0}])
    assert place.replica_gpus == 1.0 and place.prefetch


@pytest.mark.parametrize("config, message", [
    (TrainConfig(replicas=2, shards=2, shard_resources="ps=1"), "2 shards each asking for"),
    (TrainConfig(replicas=3, shards=1, replica_resources="CPU=1,replica=1"), "room for 2"),
    (TrainConfig(replicas=2, replica_resources="GPU=1"), "need 2 GPUs"),
    (TrainConfig(shard_resources="GPU=1"), "shards update on the CPU"),
    (TrainConfig(device="cpu", replica_resources="GPU=1"), "device is cpu"),
])
def test_requests_no_node_can_meet_fail_before_any_actor(config, message):
    nodes = [{"CPU": 4.0, "ps": 1.0}, {"CPU": 4.0, "replica": 2.0}]
    with pytest.raises(UserError, match=message) as info:
        plan_resources(config, {"CPU": 8.0, "ps": 1.0, "replica": 2.0}, nodes)
    if "asking for" in message:
        assert "ps=1" in str(info.value) or "replica=2" in str(info.value)  # what the nodes have


def test_cpus_given_twice_is_an_error():
    with pytest.raises(UserError, match="give one of"):
        from_mapping({"replica_cpus": 1.0, "replica_resources": "CPU=1"}, "flags")


def test_more_actors_than_the_cluster_memory_holds_are_refused_before_any_starts():
    from ps.common.errors import UserError

    with pytest.raises(UserError, match=r"300002 replicas and shards need about 120,001 GB"):
        plan_resources(TrainConfig(replicas=2, shards=300000), {"CPU": 2.0, "memory": 16e9})
    plan_resources(TrainConfig(replicas=4, shards=2), {"CPU": 2.0, "memory": 16e9})  # fits
