"""The no-op handler in a worker that runs with CPython's default collector (``streampipe_gc_default``).

The worker freezes its start-up heap and raises the collector's first threshold once start-up is
done (streampipe_worker.__main__.tune_collector), after it has imported the handler; so this module
undoes both on the handler's first call. The diagnostic row shows, in every run, what that tuning is
worth against the worker as it was before it.
"""

from __future__ import annotations

import gc
from typing import Any

import probe_handlers

_state = {"restored": False}


def _restore_defaults() -> None:
    if not _state["restored"]:
        _state["restored"] = True
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)


def noop(entry: Any) -> None:
    """Nothing, as in probe_handlers.noop, under CPython's default collector."""
    _restore_defaults()


def record_latency(entry: Any) -> None:
    """probe_handlers.record_latency, under CPython's default collector."""
    _restore_defaults()
    probe_handlers.record_latency(entry)
