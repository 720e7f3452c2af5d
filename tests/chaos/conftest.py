"""Fixtures of the fault suite (helpers live in ``harness.py``, the oracle in ``oracle.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture
def server_kind(request: pytest.FixtureRequest) -> str:
    """``valkey9``, ``redis7`` or ``redis8``: the kind of the session server this test case runs on."""
    callspec = getattr(request.node, "callspec", None)
    kind = callspec.params.get("shared_server") if callspec is not None else None
    if kind is None:
        raise pytest.UsageError("server_kind needs a test that uses redis_url / redis_client")
    return str(kind)
