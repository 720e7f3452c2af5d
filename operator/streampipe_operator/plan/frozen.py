"""The base of every planner input and output model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Immutable, hashable, no unknown fields: planner values are facts, not mutable state."""

    model_config = ConfigDict(frozen=True, extra="forbid")
