"""The partition layout and routing: key names, slots, and the documented test vectors."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest
from redis.crc import key_slot

from streampipe_worker.partitions import MAX_PARTITIONS, PartitionLayout, partition_of, partition_tags

DOC = Path(__file__).resolve().parents[2] / "docs" / "partitions.md"


def test_the_hash_is_crc32_as_published() -> None:
    # The CRC-32 catalogue's check value for "123456789": any language's CRC-32 (IEEE, reflected)
    # gives it, so a producer elsewhere can tell it uses the same function.
    assert partition_of("123456789", 2**32) == 0xCBF43926
    assert partition_of(b"123456789", 2**32) == 0xCBF43926


def test_a_key_is_hashed_as_its_utf8_bytes() -> None:
    assert partition_of("müller", 1000) == zlib.crc32("müller".encode()) % 1000
    # A field read from a stream with surrogateescape routes by the bytes the stream holds.
    raw = b"\xff\xfeid"
    assert partition_of(raw.decode("utf-8", "surrogateescape"), 97) == partition_of(raw, 97)


def _doc_table(heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading`` in docs/partitions.md."""
    lines = DOC.read_text().split(heading, 1)[1].splitlines()[1:]
    end = next((i for i, line in enumerate(lines) if line.startswith("#")), len(lines))
    rows = [line for line in lines[:end] if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_routing_matches_the_documented_vectors() -> None:
    rows = _doc_table("### Routing test vectors")
    assert len(rows) >= 6
    for key, crc, p8, p16, p1000 in rows:
        data = key.encode()
        assert f"{zlib.crc32(data):08x}" == crc, key
        assert [partition_of(data, n) for n in (8, 16, 1000)] == [int(p8), int(p16), int(p1000)], key


def test_key_names_match_the_documented_vectors() -> None:
    rows = _doc_table("### Key name test vectors")
    assert len(rows) >= 5
    for base, count, index, stream, slot in rows:
        layout = PartitionLayout(base, int(count))
        assert (layout.stream(int(index)), layout.slot(int(index))) == (stream, int(slot)), (base, index)
        assert key_slot(stream.encode()) == int(slot)


def test_partition_keys_share_their_partitions_hash_tag() -> None:
    layout = PartitionLayout("orders", 8)
    assert layout.streams[:3] == ["{orders:0}", "{orders:1}", "{orders:2}"]
    for index in range(8):
        assert layout.dead_letter(index) == layout.stream(index) + ":dlq"
        assert key_slot(layout.dead_letter(index).encode()) == key_slot(layout.stream(index).encode())


@pytest.mark.parametrize("base", ["orders", "events", "payments", "shop.orders", "ünïcode"])
def test_no_two_partitions_share_a_slot_and_growing_keeps_names(base: str) -> None:
    full = PartitionLayout(base, MAX_PARTITIONS)
    slots = [full.slot(index) for index in range(MAX_PARTITIONS)]
    assert len(set(slots)) == MAX_PARTITIONS
    for count in (1, 7, 64, 1000):
        assert PartitionLayout(base, count).tags == full.tags[:count]


def test_a_slot_collision_moves_the_later_partition_to_a_salted_tag() -> None:
    tags = partition_tags("events", 1024)
    salted = [tag for tag in tags if "." in tag]
    # CRC16 of "events:1000" is the slot of a lower partition's tag, and so on for these eight.
    assert salted == [f"events:{index}.1" for index in range(1000, 1008)]
    unsalted = f"events:{1000}".encode()
    assert key_slot(unsalted) in {key_slot(tag.encode()) for tag in tags[:1000]}


@pytest.mark.parametrize(
    ("base", "count", "key", "problem"),
    [
        ("{orders}", 4, None, "without braces"),
        ("orders events", 4, None, "without braces or whitespace"),
        ("", 4, None, "non-empty"),
        ("orders", 0, None, "outside 1..1024"),
        ("orders", 1025, None, "outside 1..1024"),
        ("orders", 4, "", "key field name is empty"),
    ],
)
def test_a_bad_layout_is_refused_with_the_reason(
    base: str, count: int, key: str | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        PartitionLayout(base, count, key)
