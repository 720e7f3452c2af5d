"""The one factory of the rich Console that every printing command uses (status, dlq, up)."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Not a terminal (a pipe, a CI log): wide enough that tables do not wrap into unreadable columns.
PIPE_WIDTH = 160


def make_console(err: bool = False) -> Console:
    """A Console on stdout (or stderr): the terminal's width, or :data:`PIPE_WIDTH` when piped."""
    stream = sys.stderr if err else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH
    return Console(stderr=err, width=width)
