"""Group reconciliation: create, recreate where the group was, destroy or report removed groups."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from streampipe_operator.plan.groups import (
    CreateGroup,
    DeleteKeys,
    DeletionPolicy,
    DesiredGroup,
    DestroyGroup,
    GroupPlan,
    LastKnownPosition,
    TeardownPlan,
    plan_groups,
    plan_teardown,
)
from streampipe_worker.entry_ids import EntryId


def want(*groups: tuple[str, str]) -> list[DesiredGroup]:
    return [DesiredGroup(name=name, start_id=start) for name, start in groups]


def known(last: str, entries_read: int | None = None, oldest_pending: str | None = None) -> LastKnownPosition:
    return LastKnownPosition(
        last_delivered_id=EntryId.parse(last),
        entries_read=entries_read,
        oldest_pending_id=EntryId.parse(oldest_pending) if oldest_pending else None,
    )


BILLING = ("billing", "$")
AUDIT = ("audit", "0")

CASES = [
    pytest.param(want(BILLING), {"billing"}, {}, "Retain", GroupPlan(), id="in-sync"),
    pytest.param(
        want(BILLING, AUDIT),
        set(),
        {},
        "Retain",
        GroupPlan(
            actions=(
                CreateGroup(
                    group="billing", start_id="$", reason="created group billing at $ (new entries only)"
                ),
                CreateGroup(
                    group="audit", start_id="0", reason="created group audit at 0 (every entry in the stream)"
                ),
            )
        ),
        id="create-missing",
    ),
    pytest.param(
        want(("replay", "1700000000000-0")),
        set(),
        {},
        "Retain",
        GroupPlan(
            actions=(
                CreateGroup(
                    group="replay",
                    start_id="1700000000000-0",
                    reason="created group replay at 1700000000000-0",
                ),
            )
        ),
        id="create-at-explicit-id-without-counter",
    ),
    pytest.param(
        want(BILLING),
        set(),
        {"billing": known("1700-5", entries_read=42)},
        "Retain",
        GroupPlan(
            actions=(
                CreateGroup(
                    group="billing",
                    start_id="1700-5",
                    entries_read=42,
                    recreated=True,
                    reason="group billing was missing on the server (deleted behind the operator's back?); "
                    "recreated at its last delivered ID 1700-5",
                ),
            )
        ),
        id="recreate-at-last-delivered-not-dollar",
    ),
    pytest.param(
        want(BILLING),
        set(),
        {"billing": known("1700-5", entries_read=42, oldest_pending="1700-2")},
        "Retain",
        GroupPlan(
            actions=(
                CreateGroup(
                    group="billing",
                    start_id="1700-1",
                    recreated=True,
                    reason="group billing was missing on the server (deleted behind the operator's back?); "
                    "recreated at 1700-1, just before its oldest pending entry 1700-2: the pending list was "
                    "lost with the group, so entries from there on are delivered again",
                ),
            )
        ),
        id="recreate-before-oldest-pending",
    ),
    pytest.param(
        want(BILLING),
        {"billing", "legacy", "adhoc"},
        {},
        "Retain",
        GroupPlan(orphaned=("adhoc", "legacy")),
        id="retain-reports-orphans",
    ),
    pytest.param(
        want(BILLING),
        {"billing", "legacy"},
        {"legacy": known("1-0")},
        "Delete",
        GroupPlan(
            actions=(
                DestroyGroup(
                    group="legacy",
                    reason="destroyed group legacy: no longer in the spec and deletionPolicy is Delete",
                ),
            )
        ),
        id="delete-destroys-removed",
    ),
    pytest.param(want(), set(), {}, "Delete", GroupPlan(), id="nothing"),
]


@pytest.mark.parametrize(("desired", "observed", "last_known", "policy", "expected"), CASES)
def test_plan_groups(
    desired: list[DesiredGroup],
    observed: set[str],
    last_known: Mapping[str, LastKnownPosition],
    policy: DeletionPolicy,
    expected: GroupPlan,
) -> None:
    plan = plan_groups(desired, observed, last_known, policy)
    assert plan == expected
    assert plan.recreated == tuple(a for a in expected.actions if isinstance(a, CreateGroup) and a.recreated)


def test_plan_is_idempotent_once_applied() -> None:
    desired = want(BILLING, AUDIT)
    first = plan_groups(desired, {"legacy"}, {}, "Delete")
    after = {a.group for a in first.actions if isinstance(a, CreateGroup)}
    assert plan_groups(desired, after, {}, "Delete") == GroupPlan()


def test_duplicate_names_refused() -> None:
    with pytest.raises(ValueError, match="repeated: billing"):
        plan_groups(want(BILLING, ("billing", "0")), set(), {}, "Retain")


@pytest.mark.parametrize("start", [pytest.param("latest", id="word"), pytest.param("1-x", id="bad-seq")])
def test_bad_start_id_refused(start: str) -> None:
    with pytest.raises(ValidationError, match="entry ID"):
        DesiredGroup(name="g", start_id=start)


@pytest.mark.parametrize(
    ("policy", "dead_letter", "expected"),
    [
        pytest.param("Retain", "{o}:dead", TeardownPlan(kept=("{o}:events", "{o}:dead")), id="retain"),
        pytest.param(
            "Delete",
            "{o}:dead",
            TeardownPlan(
                delete=DeleteKeys(
                    keys=("{o}:events", "{o}:dead"),
                    reason="deleted {o}:events, {o}:dead and its groups: deletionPolicy is Delete",
                )
            ),
            id="delete",
        ),
        pytest.param(
            "Delete",
            None,
            TeardownPlan(
                delete=DeleteKeys(
                    keys=("{o}:events",), reason="deleted {o}:events and its groups: deletionPolicy is Delete"
                )
            ),
            id="delete-no-dlq",
        ),
    ],
)
def test_plan_teardown(policy: DeletionPolicy, dead_letter: str | None, expected: TeardownPlan) -> None:
    assert plan_teardown(policy, "{o}:events", dead_letter) == expected
