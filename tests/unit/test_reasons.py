"""Every reason a person can meet (a condition's, or an Event's) is one ``api.Reason`` and is
documented in docs/operator.md or docs/api.md."""

from __future__ import annotations

from pathlib import Path

from streampipe_operator.api import Reason
from streampipe_operator.controller.reconcile import POSTED_EVENTS

DOCS = Path(__file__).resolve().parents[2] / "docs"
# Housekeeping events the operator logs and never posts (streampipe up shows some in its live view).
LOGGED_ONLY = {Reason.TRIMMED, Reason.RETENTION_FAILED, Reason.CONSUMER_KEPT, Reason.CONSUMER_CLEANUP_FAILED}


def test_every_reason_a_person_sees_is_documented() -> None:
    text = (DOCS / "operator.md").read_text() + (DOCS / "api.md").read_text()
    assert not LOGGED_ONLY & POSTED_EVENTS
    assert [
        reason.value for reason in Reason if reason not in LOGGED_ONLY and f"`{reason}`" not in text
    ] == []


def test_reasons_are_camel_case_words_kubernetes_accepts() -> None:
    assert all(reason.value[0].isupper() and reason.value.isalnum() for reason in Reason)
    assert len({reason.value for reason in Reason}) == len(Reason)
