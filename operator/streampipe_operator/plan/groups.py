"""Which consumer groups to create, recreate or destroy, from the spec, the server and status.

- A group in the spec and not on the server is created at its ``startId``, or - when status knows
  where it was (it existed before and was deleted behind the operator's back) - recreated there,
  never at ``$``: recreating at ``$`` would silently skip everything added since.
- A recreated group has lost its pending list with it. When status also knows the oldest pending ID,
  the group restarts just before it, so the entries that were delivered and never acknowledged are
  delivered again (at-least-once; entries acknowledged after that ID are delivered twice). Without
  it, the group restarts at its last-delivered-id and the reason says that pending entries are lost.
- A group on the server and not in the spec is destroyed only under ``deletionPolicy: Delete``;
  otherwise it is left alone and reported as orphaned.

``ENTRIESREAD`` (the group's read counter, which makes ``lag`` exact) is passed only where it is
known: for a recreated group whose counter status recorded together with its last-delivered-id
(XINFO GROUPS reports both at once, so the pair is consistent). For ``$`` and ``0`` the server
computes the counter itself; for any other ID nobody knows it, and a guessed counter would make
every later lag figure wrong.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, Literal

from pydantic import Field, field_validator

from streampipe_operator.plan.frozen import Frozen
from streampipe_worker.entry_ids import ZERO, EntryId

DeletionPolicy = Literal["Retain", "Delete"]


class DesiredGroup(Frozen):
    """A group the spec asks for."""

    name: str = Field(min_length=1)
    start_id: str = Field(default="$", description='"$" (new entries only), "0" (everything) or an entry ID')

    @field_validator("start_id")
    @classmethod
    def _start_id_is_valid(cls, value: str) -> str:
        if value not in ("$", "0"):
            EntryId.parse(value)
        return value


class LastKnownPosition(Frozen):
    """Where a group was at the last observation (kept in status by the handler)."""

    last_delivered_id: EntryId
    entries_read: int | None = Field(default=None, ge=0, description="Read counter seen with that ID")
    oldest_pending_id: EntryId | None = None


class CreateGroup(Frozen):
    """XGROUP CREATE stream group start_id MKSTREAM [ENTRIESREAD entries_read]."""

    action: Literal["create"] = "create"
    group: str
    start_id: str
    entries_read: int | None = None
    recreated: bool = Field(default=False, description="It existed before and vanished: worth an Event")
    reason: str


class DestroyGroup(Frozen):
    """XGROUP DESTROY stream group."""

    action: Literal["destroy"] = "destroy"
    group: str
    reason: str


GroupAction = Annotated[CreateGroup | DestroyGroup, Field(discriminator="action")]


class GroupPlan(Frozen):
    """What to do about groups; ``orphaned`` are groups left in place under ``Retain``."""

    actions: tuple[GroupAction, ...] = ()
    orphaned: tuple[str, ...] = ()

    @property
    def recreated(self) -> tuple[CreateGroup, ...]:
        return tuple(a for a in self.actions if isinstance(a, CreateGroup) and a.recreated)


def plan_groups(
    desired: Sequence[DesiredGroup],
    observed: Collection[str],
    last_known: Mapping[str, LastKnownPosition],
    deletion_policy: DeletionPolicy,
) -> GroupPlan:
    """Actions that make the server's groups (names in ``observed``) match ``desired``. Pure."""
    names = [group.name for group in desired]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"group names must be unique; repeated: {', '.join(duplicates)}")

    actions: list[CreateGroup | DestroyGroup] = []
    for group in desired:
        if group.name in observed:
            continue
        known = last_known.get(group.name)
        actions.append(_create(group) if known is None else _recreate(group.name, known))

    wanted = set(names)
    extra = sorted(name for name in observed if name not in wanted)
    if deletion_policy == "Delete":
        actions.extend(
            DestroyGroup(
                group=name,
                reason=f"destroyed group {name}: no longer in the spec and deletionPolicy is Delete",
            )
            for name in extra
        )
        return GroupPlan(actions=tuple(actions))
    return GroupPlan(actions=tuple(actions), orphaned=tuple(extra))


def _create(group: DesiredGroup) -> CreateGroup:
    where = {"$": "$ (new entries only)", "0": "0 (every entry in the stream)"}.get(
        group.start_id, group.start_id
    )
    return CreateGroup(
        group=group.name, start_id=group.start_id, reason=f"created group {group.name} at {where}"
    )


def _recreate(name: str, known: LastKnownPosition) -> CreateGroup:
    vanished = f"group {name} was missing on the server (deleted behind the operator's back?)"
    pending = known.oldest_pending_id
    if pending is not None and ZERO < pending <= known.last_delivered_id:
        start = pending.predecessor()
        return CreateGroup(
            group=name,
            start_id=str(start),
            recreated=True,
            reason=(
                f"{vanished}; recreated at {start}, just before its oldest pending entry {pending}: the "
                f"pending list was lost with the group, so entries from there on are delivered again"
            ),
        )
    lost = "" if pending is None else " (pending entries, if any, were lost with the group)"
    return CreateGroup(
        group=name,
        start_id=str(known.last_delivered_id),
        entries_read=known.entries_read,
        recreated=True,
        reason=f"{vanished}; recreated at its last delivered ID {known.last_delivered_id}{lost}",
    )


class DeleteKeys(Frozen):
    """DEL of the pipeline's keys (stream and dead-letter stream); the groups go with the stream."""

    action: Literal["delete_keys"] = "delete_keys"
    keys: tuple[str, ...]
    reason: str


class TeardownPlan(Frozen):
    """What deleting a StreamPipeline does to the server."""

    delete: DeleteKeys | None = None
    kept: tuple[str, ...] = Field(default=(), description="Keys left in place (Retain)")


def plan_teardown(deletion_policy: DeletionPolicy, stream: str, dead_letter: str | None) -> TeardownPlan:
    """On resource deletion: ``Delete`` removes the stream (and with it its groups) and the DLQ.

    ``Retain`` leaves everything. Whether another pipeline still uses the stream is the handler's
    question, asked before this.
    """
    keys = (stream,) if dead_letter is None else (stream, dead_letter)
    if deletion_policy == "Retain":
        return TeardownPlan(kept=keys)
    return TeardownPlan(
        delete=DeleteKeys(
            keys=keys, reason=f"deleted {', '.join(keys)} and its groups: deletionPolicy is Delete"
        )
    )
