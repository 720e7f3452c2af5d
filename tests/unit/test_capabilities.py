"""Capability parsing from recorded COMMAND DOCS shapes (RESP2 flat lists and RESP3 maps)."""

from __future__ import annotations

from streampipe_worker.capabilities import parse_capabilities, version_tuple

REDIS_82_XTRIM = {
    "summary": "Deletes messages from the beginning of a stream.",
    "arguments": [
        {"name": "key", "type": "key"},
        {"name": "trim", "type": "block", "arguments": [{"name": "strategy", "type": "oneof"}]},
        {"name": "condition", "type": "oneof", "token": "KEEPREF", "arguments": []},
        {"name": "acked", "type": "pure-token", "token": "ACKED"},
    ],
}
RESP2_XREADGROUP = [
    "summary", "Returns new or historical messages from a stream for a consumer in a group.",
    "arguments", [
        ["name", "group-block", "type", "block", "token", "GROUP"],
        ["name", "min-idle-time", "type", "integer", "token", "CLAIM"],
    ],
]  # fmt: skip


def test_new_redis_features_detected_from_docs() -> None:
    caps = parse_capabilities(
        {"redis_version": "8.4.0", "aof_enabled": "1"},
        REDIS_82_XTRIM,
        RESP2_XREADGROUP,
        {"arguments": [{"name": "entriesread", "token": "ENTRIESREAD"}]},
        ["xautoclaim"],
    )
    assert caps.family == "redis"
    assert caps.xtrim_acked
    assert caps.xreadgroup_claim
    assert caps.lag_in_xinfo
    assert caps.aof_enabled


def test_old_server_has_none_of_them() -> None:
    caps = parse_capabilities({"redis_version": "6.0.9"}, {"arguments": []}, [], {}, [])
    assert (caps.xtrim_acked, caps.xreadgroup_claim, caps.lag_in_xinfo, caps.xautoclaim) == (
        False, False, False, False,
    )  # fmt: skip


def test_valkey_is_told_apart_by_server_name() -> None:
    caps = parse_capabilities(
        {b"server_name": b"valkey", b"redis_version": b"7.2.4", b"valkey_version": b"9.1.2"}, {}, {}, {}, []
    )
    assert caps.family == "valkey"
    assert caps.version == "9.1.2"
    assert caps.describe() == "valkey 9.1.2"


def test_version_tuple_tolerates_suffixes() -> None:
    assert version_tuple("7.0.15") == (7, 0, 15)
    assert version_tuple("8.2.0-rc1") == (8, 2, 0)
