"""Stream entry IDs as values: ``<milliseconds>-<sequence>``, ordered, with neighbours.

Every comparison of stream positions goes through :class:`EntryId` (the worker's and the
operator's): string comparison of IDs is wrong (``"9-0" > "10-0"``), and the "first ID after X" and
"last ID before X" arithmetic that trimming bounds need lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

# Both halves of an ID are unsigned 64-bit integers on the server.
_U64_MAX = 2**64 - 1


@dataclass(frozen=True, order=True, slots=True)
class EntryId:
    """One stream entry ID. Orders like the server orders IDs (by ms, then by sequence)."""

    ms: int
    seq: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.ms <= _U64_MAX and 0 <= self.seq <= _U64_MAX):
            raise ValueError(f"entry ID parts must be unsigned 64-bit integers, got {self.ms}-{self.seq}")

    @classmethod
    def parse(cls, text: str | bytes) -> Self:
        """``"1700000000000-3"`` -> ``EntryId(1700000000000, 3)``; a bare ``"5"`` means ``5-0``."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        ms_text, _, seq_text = text.strip().partition("-")
        try:
            return cls(int(ms_text), int(seq_text) if seq_text else 0)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a stream entry ID: expected <milliseconds>-<sequence>, e.g. 1700000000000-0"
            ) from None

    @classmethod
    def at_time(cls, unix_seconds: float) -> Self:
        """The smallest ID an entry added at ``unix_seconds`` can have (auto IDs are milliseconds)."""
        return cls(max(0, int(unix_seconds * 1000)), 0)

    def successor(self) -> EntryId:
        """The smallest ID greater than this one (``5-3`` -> ``5-4``; ``5-<max>`` -> ``6-0``)."""
        if self.seq < _U64_MAX:
            return EntryId(self.ms, self.seq + 1)
        return EntryId(self.ms + 1, 0)

    def predecessor(self) -> EntryId:
        """The greatest ID smaller than this one; ``0-0`` has none."""
        if self.seq > 0:
            return EntryId(self.ms, self.seq - 1)
        if self.ms > 0:
            return EntryId(self.ms - 1, _U64_MAX)
        raise ValueError("0-0 is the smallest entry ID; it has no predecessor")

    @property
    def unix_seconds(self) -> float:
        """When an auto-generated ID was made (meaningless for hand-made IDs like ``1-1``)."""
        return self.ms / 1000

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # In models an ID reads from and serializes to its wire form, so status and JSON show "1-0".
        def validate(value: Any) -> EntryId:
            if isinstance(value, EntryId):
                return value
            if isinstance(value, str | bytes):
                return EntryId.parse(value)
            raise ValueError(f"expected a stream entry ID string, got {value!r}")

        return core_schema.no_info_plain_validator_function(
            validate,
            json_schema_input_schema=core_schema.str_schema(pattern=r"^\d+(-\d+)?$"),
            serialization=core_schema.plain_serializer_function_ser_schema(str, when_used="always"),
        )


ZERO = EntryId(0, 0)
"""``0-0``: before every entry. A group at ``0-0`` has read nothing."""


def order_key(entry_id: str) -> tuple[int, int]:
    """A sort key for an ID the server handed out (``"5-3"`` -> ``(5, 3)``), ordered as
    :class:`EntryId` orders: the hot path's cheaper twin of :meth:`EntryId.parse`, with no checks,
    for IDs that came from a reply (a hand-written ID goes through ``parse``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq) if seq else 0
