"""The partition assignment of per-key ordering (``ownership.assign_partitions``): even, the same in
every process, and moving few partitions when a member joins; and the lease keys' names and slots."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from streampipe_worker.ownership import assign_partitions, generation_key, members_key, owner_key
from streampipe_worker.partitions import PartitionLayout

MEMBERS = [f"worker-{n}" for n in range(10)]


def owners(assignment: dict[str, tuple[int, ...]]) -> dict[int, str]:
    return {partition: name for name, partitions in assignment.items() for partition in partitions}


@pytest.mark.parametrize("count", range(1, 65))
def test_every_partition_has_one_owner_and_shares_differ_by_at_most_one(count: int) -> None:
    for size in range(1, 11):
        assignment = assign_partitions(count, MEMBERS[:size])
        assert sorted(assignment) == sorted(MEMBERS[:size])
        owned = [partition for partitions in assignment.values() for partition in partitions]
        assert sorted(owned) == list(range(count))  # each partition exactly once
        loads = [len(partitions) for partitions in assignment.values()]
        assert max(loads) - min(loads) <= 1
        assert sum(loads) == count


def test_every_process_computes_the_same_assignment_whatever_order_it_lists_the_members_in() -> None:
    first = assign_partitions(32, ["b", "c", "a", "d"])
    assert assign_partitions(32, ["d", "a", "c", "b"]) == first
    assert assign_partitions(32, ["a", "b", "c", "d", "a"]) == first
    # Fixed values: a change to the weights would reshuffle every running fleet; make it on purpose.
    assert assign_partitions(8, ("c", "b", "a")) == {"a": (0, 4, 7), "b": (3, 6), "c": (1, 2, 5)}
    assert all(partitions == tuple(sorted(partitions)) for partitions in first.values())


def test_more_members_than_partitions_leaves_some_members_without_one() -> None:
    assignment = assign_partitions(3, MEMBERS[:5])
    assert sorted(len(partitions) for partitions in assignment.values()) == [0, 0, 1, 1, 1]
    assert sorted(owners(assignment)) == [0, 1, 2]


def test_no_members_own_nothing() -> None:
    assert assign_partitions(8, []) == {}


def moved_when_one_joins(count: int, size: int) -> tuple[int, int]:
    """(partitions that changed owner, of which to the newcomer) when a member joins ``size`` others."""
    before = owners(assign_partitions(count, MEMBERS[:size]))
    after = owners(assign_partitions(count, [*MEMBERS[:size], "newcomer"]))
    moved = [partition for partition in range(count) if before[partition] != after[partition]]
    return len(moved), sum(after[partition] == "newcomer" for partition in moved)


def test_a_joining_member_takes_its_share_and_few_others_move() -> None:
    # 16 partitions over 3 members, then a fourth: it takes its 4, and 1 more changes hands among the
    # three (their shares shrink from 6-5-5 to 4-4-4). 64 over 7, then 8: it takes 8, 2 more move.
    assert moved_when_one_joins(16, 3) == (5, 4)
    assert moved_when_one_joins(64, 7) == (10, 8)
    # Over every count 1..64 and 1..9 members: the newcomer gets exactly its share (count // n or one
    # more), and the partitions that move between the old members add up to far less than a reshuffle.
    extra = 0
    for count in range(1, 65):
        for size in range(1, 10):
            moved, to_newcomer = moved_when_one_joins(count, size)
            assert to_newcomer in (count // (size + 1), count // (size + 1) + 1)
            assert moved - to_newcomer <= count // 2
            extra += moved - to_newcomer
    assert extra == 766  # 1.3 a join on average, over 576 joins


def test_a_partitions_lease_keys_share_its_slot_and_the_registry_has_its_own() -> None:
    layout = PartitionLayout("events", 1024)
    assert (owner_key(layout, 1000), generation_key(layout, 1000)) == (
        "{events:1000.1}:owner",
        "{events:1000.1}:generation",
    )
    for index in (0, 7, 999, 1000, 1007):
        stream_slot = key_slot(layout.stream(index).encode())
        assert key_slot(owner_key(layout, index).encode()) == stream_slot == layout.slot(index)
        assert key_slot(generation_key(layout, index).encode()) == stream_slot
    assert members_key(layout) == "{events}:members"
