"""Partitioned streams: the stream key of each partition, and the partition of each entry.

A partitioned pipeline with base name ``B`` and ``count`` partitions keeps partition ``i`` under the
hash tag ``T(i)``:

- its stream is ``{T(i)}`` and its dead-letter stream ``{T(i)}:dlq``, so on a cluster both live in
  one slot and the dead-letter move stays one transaction;
- ``T(i)`` is ``B:i``. When the cluster slot of ``B:i`` (CRC16, as ``CLUSTER KEYSLOT``) is the slot of a
  lower partition's tag, ``T(i)`` is the first of ``B:i.1``, ``B:i.2``, ... whose slot is free. So no
  two partitions share a slot, and a partition's tag depends only on the partitions below it: growing
  ``count`` keeps every existing name.

An entry goes to partition ``crc32(key) mod count``: CRC-32 as zlib computes it (the IEEE polynomial,
reflected, check value ``CBF43926`` for ``123456789``), over the key's UTF-8 bytes, as an unsigned
number. A pipeline without a key field spreads entries evenly: each producer takes the partitions in
turn. docs/partitions.md has test vectors for both, for producers written in other languages.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache

MAX_PARTITIONS = 1024
DEAD_LETTER_SUFFIX = ":dlq"
LAYOUT_SUFFIX = ":layout"


def partition_of(key: str | bytes, count: int) -> int:
    """The partition of an entry whose key field is ``key``, among ``count`` partitions."""
    data = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    return zlib.crc32(data) % count


@lru_cache(maxsize=256)
def partition_tags(base: str, count: int) -> tuple[str, ...]:
    """The hash tags of partitions ``0 .. count-1`` (see the module's docstring)."""
    _check(base, count)
    from redis.crc import key_slot  # here: the API models import this module without redis (validate)

    tags: list[str] = []
    taken: set[int] = set()
    for index in range(count):
        tag = f"{base}:{index}"
        salt = 0
        while (slot := key_slot(tag.encode("utf-8", "surrogateescape"))) in taken:
            salt += 1
            tag = f"{base}:{index}.{salt}"
        taken.add(slot)
        tags.append(tag)
    return tuple(tags)


def _check(base: str, count: int) -> None:
    if not base or any(char in base for char in "{} \t\r\n"):
        raise ValueError(
            f"partitioned stream base name {base!r} must be a non-empty name without braces or "
            "whitespace: each partition's key gets its own {hash tag} made from it"
        )
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"partition count {count} is outside 1..{MAX_PARTITIONS}")


def layout_key(base: str) -> str:
    """The layout record of base name ``base`` (ordering PerKey, :mod:`streampipe_worker.epochs`):
    ``{B}:layout``."""
    return "{" + base + "}" + LAYOUT_SUFFIX


@dataclass(frozen=True)
class PartitionLayout:
    """The partitions of one pipeline: ``base`` name, ``count``, and the entry field (``key``) that
    routes an entry, or None to spread entries evenly."""

    base: str
    count: int
    key: str | None = None
    tags: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.key is not None and not self.key:
            raise ValueError("the partition key field name is empty: give a field name, or None")
        object.__setattr__(self, "tags", partition_tags(self.base, self.count))

    def stream(self, index: int) -> str:
        """The stream key of partition ``index``."""
        return "{" + self.tags[index] + "}"

    def dead_letter(self, index: int) -> str:
        """The dead-letter stream of partition ``index`` (same hash tag as its stream)."""
        return self.stream(index) + DEAD_LETTER_SUFFIX

    @property
    def streams(self) -> list[str]:
        return [self.stream(index) for index in range(self.count)]

    def slot(self, index: int) -> int:
        """The cluster hash slot of partition ``index``'s keys."""
        from redis.crc import key_slot

        return key_slot(self.tags[index].encode("utf-8", "surrogateescape"))

    def partition_for(self, key: str | bytes) -> int:
        return partition_of(key, self.count)
