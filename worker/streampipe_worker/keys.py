"""Hash slots: which keys must share one in cluster mode.

The settings check the rule before the worker connects (this module imports nothing of ours, so the
settings and the client factory can both use it).
"""

from __future__ import annotations

from redis.crc import key_slot


def hash_tag(key: str) -> str | None:
    """The ``{tag}`` part cluster hashing uses, or None when the whole key is hashed."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def cluster_key_problem(stream: str, dead_letter: str) -> str | None:
    """Why these keys cannot work together in cluster mode (None when they can).

    The dead-letter move is MULTI { XADD dlq ; XACK stream } and dedupe markers are written with the
    XACK: all of it must live in one hash slot, which only a shared hash tag guarantees.
    """
    tag = hash_tag(stream)
    if tag is None:
        return (
            f"stream {stream!r} has no hash tag; in cluster mode the stream, its dead-letter stream and "
            f"the worker's bookkeeping keys must share one, e.g. '{{{stream}}}:events' with "
            f"'{{{stream}}}:dlq'"
        )
    if key_slot(dead_letter.encode()) != key_slot(stream.encode()):
        return (
            f"dead-letter stream {dead_letter!r} is not in the same hash slot as {stream!r}; "
            f"name it with the same hash tag, e.g. '{{{tag}}}:dlq'"
        )
    return None
