"""The per-key queues of an ordered partition (``streampipe_worker.ordered_partition.KeyQueues``): only
a key's head may run, heads in id order, a waiting head holds only its own key, and so does a key held
for a growth."""

from __future__ import annotations

from streampipe_worker.ordered_partition import KeyQueues
from streampipe_worker.router import Entry


def entry(entry_id: str, key: str | None) -> Entry:
    fields = {"seq": entry_id} if key is None else {"customer_id": key, "seq": entry_id}
    return Entry(entry_id, fields, 1, "{orders:0}", "billing")


def ids(entries: list[Entry]) -> list[str]:
    return [e.id for e in entries]


def test_only_each_keys_head_runs_in_id_order() -> None:
    queues = KeyQueues("customer_id")
    for item in [
        entry("1-0", "a"),
        entry("2-0", "b"),
        entry("3-0", "a"),
        entry("10-0", "c"),
        entry("9-0", "d"),
    ]:
        queues.add(item)
    assert ids(queues.ready(now=0.0, limit=10)) == ["1-0", "2-0", "9-0", "10-0"]  # ids compare as numbers
    assert ids(queues.ready(now=0.0, limit=2)) == ["1-0", "2-0"]
    [first, *_] = queues.ready(now=0.0, limit=1)
    queues.settle(first)
    assert ids(queues.ready(now=0.0, limit=10)) == ["2-0", "3-0", "9-0", "10-0"]
    assert (len(queues), "1-0" in queues, "3-0" in queues) == (4, False, True)


def test_a_waiting_head_holds_only_its_own_key() -> None:
    queues = KeyQueues("customer_id")
    for item in [entry("1-0", "a"), entry("2-0", "a"), entry("3-0", "b")]:
        queues.add(item)
    [head, _] = queues.ready(now=0.0, limit=10)
    queues.postpone(head, until=5.0)
    assert ids(queues.ready(now=1.0, limit=10)) == ["3-0"]
    assert queues.next_ready_at() == 0.0  # b's head may run now
    queues.settle(queues.ready(now=1.0, limit=10)[0])
    assert (ids(queues.ready(now=1.0, limit=10)), queues.next_ready_at()) == ([], 5.0)
    assert ids(queues.ready(now=5.0, limit=10)) == ["1-0"]
    queues.settle(head)  # moved to the dead-letter stream, say: the key's next entry may run at once
    assert ids(queues.ready(now=5.0, limit=10)) == ["2-0"]


def test_without_a_key_field_the_partition_is_one_sequence() -> None:
    queues = KeyQueues(None)
    for item in [entry("1-0", "a"), entry("2-0", "b"), entry("3-0", None)]:
        queues.add(item)
    assert ids(queues.ready(now=0.0, limit=10)) == ["1-0"]
    queues.clear()
    assert (len(queues), queues.ready(now=0.0, limit=10), queues.next_ready_at()) == (0, [], None)


def test_a_held_key_keeps_its_head_and_its_successors_back() -> None:
    queues = KeyQueues("customer_id")
    for item in [entry("1-0", "moved"), entry("2-0", "stays"), entry("3-0", "moved")]:
        queues.add(item)
    held = {"moved"}
    assert ids(queues.ready(now=0.0, limit=10, held=lambda key: key in held)) == ["2-0"]
    queues.settle(queues.ready(now=0.0, limit=10, held=lambda key: key in held)[0])
    assert queues.ready(now=0.0, limit=10, held=lambda key: key in held) == []
    held.clear()  # its old partition settled
    assert ids(queues.ready(now=0.0, limit=10, held=lambda key: key in held)) == ["1-0"]
