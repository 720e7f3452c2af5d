"""The resilience tier's check for API refusals in the operator's JSON log reads the status the API
server returned, never digits that happen to stand in a timestamp or an entry ID."""

from __future__ import annotations

import pytest

from tests.support.operator_process import forbidden_records

STATUS = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'deployments.apps "orders-billing" is forbidden: User "system:serviceaccount:t:op"',
    "reason": "Forbidden",
    "code": 403,
}


@pytest.mark.parametrize(
    "record",
    [
        {"message": str((STATUS["message"], STATUS)), "timestamp": "2026-12-03T06:20:59.694037"},
        {"message": "Handler failed", "exc_info": f"kopf._cogs.clients.errors.APIForbiddenError: {STATUS}"},
        {"message": "(403)\nReason: Forbidden\nHTTP response headers: ..."},
    ],
    ids=["kopf-status-payload", "kopf-exception", "kubernetes-client-exception"],
)
def test_a_refusal_by_the_api_server_is_found(record: dict[str, object]) -> None:
    assert forbidden_records([record]) == [record]


@pytest.mark.parametrize(
    "record",
    [
        {"message": "Reconciled", "timestamp": "2026-12-03T06:20:59.694037+00:00"},
        {"message": "trimmed {orders}:events to 1764740320403-0", "timestamp": "2026-12-03T06:21:00"},
        {"message": "listening on 127.0.0.1:40319", "object": {"uid": "e0403a"}},
    ],
    ids=["timestamp", "entry-id", "port-and-uid"],
)
def test_digits_in_timestamps_ids_and_ports_are_not_a_refusal(record: dict[str, object]) -> None:
    assert forbidden_records([record]) == []
