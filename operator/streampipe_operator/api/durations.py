"""The API's duration type: a manifest's ``30s`` kept as written, with its parsed value.

The syntax, its CRD pattern, parsing and formatting live in :mod:`streampipe_worker.durations`,
shared with the worker's environment. A :class:`Duration` is a ``str`` (it serializes back exactly
as written, so a manifest round-trips and the server's defaults compare equal to ours) that carries
its parsed :class:`~datetime.timedelta`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from streampipe_worker.durations import (
    DURATION_HINT,
    DURATION_MAX_LENGTH,
    DURATION_PATTERN,
    DurationError,
    format_duration,
    parse_duration,
)

# The syntax's names are used through this module by the CRD generator and the CLI too.
__all__ = [
    "DURATION_PATTERN",
    "Duration",
    "DurationError",
    "DurationRange",
    "format_duration",
    "parse_duration",
]


class Duration(str):
    """A duration string, validated and parsed once; ``.delta`` is its :class:`~datetime.timedelta`.

    Equality is textual (``Duration("60s") != Duration("1m")``); compare ``.delta`` for time.
    """

    _delta: timedelta

    def __new__(cls, text: str) -> Duration:
        delta = parse_duration(str(text))
        self = super().__new__(cls, text)
        self._delta = delta
        return self

    @classmethod
    def of(cls, delta: timedelta) -> Duration:
        """The canonical duration for a timedelta (``timedelta(minutes=5)`` -> ``5m``)."""
        return cls(format_duration(delta))

    @property
    def delta(self) -> timedelta:
        """The parsed value."""
        return self._delta

    def total_seconds(self) -> float:
        """Seconds, for ``asyncio.sleep`` and friends."""
        return self._delta.total_seconds()

    @property
    def milliseconds(self) -> int:
        """Whole milliseconds, the unit of Redis' IDLE / MINID arithmetic and XAUTOCLAIM min-idle-time."""
        return self._delta // timedelta(milliseconds=1)

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"

    @classmethod
    def _validate(cls, value: str) -> Duration:
        if isinstance(value, Duration):
            return value
        try:
            return cls(value)
        except DurationError:
            # Worded like the API server's pattern message so offline and server errors read alike.
            raise PydanticCustomError(
                "duration_syntax",
                "should match '{pattern}': {hint}",
                {"pattern": DURATION_PATTERN, "hint": DURATION_HINT},
            ) from None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls._validate,
            core_schema.str_schema(),
            # Plain str on the way out: YAML's safe dumper and json refuse str subclasses.
            serialization=core_schema.plain_serializer_function_ser_schema(
                str, return_schema=core_schema.str_schema()
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "pattern": DURATION_PATTERN, "maxLength": DURATION_MAX_LENGTH}


class DurationRange:
    """``Annotated[Duration, DurationRange("1s", "24h")]``: bounds checked here and by a CEL rule.

    The same message is used by both, so ``streampipe validate`` and the API server agree word for word.
    """

    def __init__(self, minimum: str, maximum: str) -> None:
        self.minimum = Duration(minimum)
        self.maximum = Duration(maximum)
        if self.minimum.delta > self.maximum.delta:
            raise ValueError(f"empty range {minimum}..{maximum}")

    @property
    def message(self) -> str:
        if self.minimum.delta == timedelta():
            return f"must be at most {self.maximum}"
        return f"must be between {self.minimum} and {self.maximum}"

    @property
    def cel_rule(self) -> str:
        bounds = f"duration(self) <= duration('{self.maximum}')"
        if self.minimum.delta != timedelta():
            bounds = f"duration(self) >= duration('{self.minimum}') && {bounds}"
        # A malformed value already fails the pattern; without this guard duration() would add a second,
        # confusing "type conversion error" for it.
        return f"!self.matches('{DURATION_PATTERN}') || ({bounds})"

    def _check(self, value: Duration) -> Duration:
        if not self.minimum.delta <= value.delta <= self.maximum.delta:
            raise PydanticCustomError("duration_range", self.message)
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["x-kubernetes-validations"] = [{"rule": self.cel_rule, "message": self.message}]
        return json_schema

    def __repr__(self) -> str:
        return f"DurationRange({str(self.minimum)!r}, {str(self.maximum)!r})"
