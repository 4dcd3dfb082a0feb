"""Placement groups on the session's Ray: what cannot be placed fails at once, with nothing held."""

import pytest

from ps.common.errors import UserError
from ps.driver.actors import reserve

pytestmark = pytest.mark.ray


def test_a_bundle_no_node_can_hold_is_refused_at_once_naming_the_request(ray_session):
    from ray.util.placement_group import placement_group_table

    before = set(placement_group_table())
    with pytest.raises(UserError, match=r"3 replicas asking for \{CPU=64\} each cannot be placed "
                                        r"\(no node can hold them\)"):
        reserve("replica", 3, {"CPU": 64.0, "GPU": 0.0}, "SPREAD", timeout_s=60.0)
    made = {k: g["state"] for k, g in placement_group_table().items() if k not in before}
    assert list(made.values()) == ["REMOVED"]  # the refused group is not left holding anything


def test_room_taken_by_others_is_refused_after_the_timeout(ray_session):
    held = reserve("shard", 1, {"CPU": 2.0}, "PACK", timeout_s=30.0)  # the whole session's CPUs
    try:
        with pytest.raises(UserError, match=r"not placed within 0.5 s"):
            reserve("replica", 1, {"CPU": 1.0}, "SPREAD", timeout_s=0.5)
    finally:
        held.release()
    room = reserve("replica", 2, {"CPU": 1.0}, "SPREAD", timeout_s=30.0)  # freed: it fits now
    assert room.options(1)["scheduling_strategy"].placement_group_bundle_index == 1
    room.release()


def test_actors_that_ask_for_nothing_need_no_reservation(ray_session):
    room = reserve("replica", 4, {"CPU": 0.0, "GPU": 0.0}, "SPREAD", timeout_s=1.0)
    assert room.group is None and room.options(0) == {}
