"""The no-op handler in a worker that keeps it on the handler thread (``streampipe_thread``).

A sync handler whose batches prove fast runs on the worker's event loop (streampipe_worker.handler_runner,
INLINE_AFTER fast batches first). This module, imported before the worker makes its consumer, sets
that count out of reach, so every batch goes to the handler thread and back: the diagnostic row
shows what that hand-off costs per read, which fast handlers no longer pay.
"""

from __future__ import annotations

import sys
from typing import Any

from streampipe_worker import handler_runner

handler_runner.INLINE_AFTER = sys.maxsize


def noop(entry: Any) -> None:
    """Nothing, as in probe_handlers.noop, always on the handler thread."""
