"""Typed, pipelined producers: the ``type`` / ``version`` / ``payload`` envelope a Router reads.

Payloads are validated by the same pydantic models the consumer's Router uses (pass ``router=``), so a
producer cannot write an event the consumer would dead-letter as invalid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from streampipe_worker.router import (
    DEFAULT_VERSION,
    PAYLOAD_FIELD,
    TYPE_FIELD,
    VERSION_FIELD,
    InvalidEventError,
    Router,
)

DEDUPE_KEY_FIELD = "dedupe_key"


class Event(BaseModel):
    """One event to send."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    type: str = Field(min_length=1)
    payload: Any
    version: int = DEFAULT_VERSION
    dedupe_key: str | None = Field(default=None, description="Same key = same event for DEDUPE_TTL")
    fields: dict[str, str] = Field(default_factory=dict, description="Extra fields, sent as they are")


def encode_event(event: Event, router: Router | None = None) -> dict[str, str]:
    """The stream fields of an event; validated against the router's model when one is given."""
    payload = event.payload
    if router is not None:
        model = router.model_for(event.type, event.version)
        try:
            payload = (
                payload if isinstance(payload, model) else model.model_validate(_plain(payload), strict=False)
            )
        except Exception as exc:
            raise InvalidEventError(f"{event.type} v{event.version}: {exc}") from exc
    body = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload, default=str)
    fields = {TYPE_FIELD: event.type, VERSION_FIELD: str(event.version), PAYLOAD_FIELD: body}
    if event.dedupe_key is not None:
        fields[DEDUPE_KEY_FIELD] = event.dedupe_key
    for name, value in event.fields.items():
        fields.setdefault(name, value)
    return fields


def _plain(payload: Any) -> Any:
    return payload.model_dump() if isinstance(payload, BaseModel) else payload


class _Base:
    def __init__(
        self,
        client: Any,
        stream: str,
        *,
        router: Router | None = None,
        maxlen: int | None = None,
        approximate: bool = True,
        chunk_size: int = 1000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.router = router
        self.maxlen = maxlen
        self.approximate = approximate
        self.chunk_size = chunk_size

    def _xadd_args(self) -> dict[str, Any]:
        if self.maxlen is None:
            return {}
        return {"maxlen": self.maxlen, "approximate": self.approximate}

    def _event(
        self, type: str, payload: Any, version: int, dedupe_key: str | None, fields: Mapping[str, str] | None
    ) -> Event:
        return Event(
            type=type, payload=payload, version=version, dedupe_key=dedupe_key, fields=dict(fields or {})
        )


class Producer(_Base):
    """Send events with a synchronous client (``connection.create_client``).

    ``send`` is one XADD; ``send_many`` pipelines them in chunks (one round trip per ``chunk_size``).
    ``maxlen`` adds ``MAXLEN ~ n`` to every XADD.
    """

    def send(
        self,
        type: str,
        payload: Any,
        *,
        version: int = DEFAULT_VERSION,
        dedupe_key: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> str:
        event = self._event(type, payload, version, dedupe_key, fields)
        return str(self.client.xadd(self.stream, encode_event(event, self.router), **self._xadd_args()))

    def send_many(self, events: Iterable[Event]) -> list[str]:
        """Validate everything first (nothing is sent if one event is invalid), then pipeline."""
        encoded = [encode_event(event, self.router) for event in events]
        ids: list[str] = []
        for start in range(0, len(encoded), self.chunk_size):
            pipe = self.client.pipeline(transaction=False)
            for fields in encoded[start : start + self.chunk_size]:
                pipe.xadd(self.stream, fields, **self._xadd_args())
            ids.extend(str(i) for i in pipe.execute())
        return ids


class AsyncProducer(_Base):
    """``Producer`` for a ``redis.asyncio`` client (``connection.create_async_client``)."""

    async def send(
        self,
        type: str,
        payload: Any,
        *,
        version: int = DEFAULT_VERSION,
        dedupe_key: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> str:
        event = self._event(type, payload, version, dedupe_key, fields)
        return str(await self.client.xadd(self.stream, encode_event(event, self.router), **self._xadd_args()))

    async def send_many(self, events: Iterable[Event]) -> list[str]:
        encoded = [encode_event(event, self.router) for event in events]
        ids: list[str] = []
        for start in range(0, len(encoded), self.chunk_size):
            pipe = self.client.pipeline(transaction=False)
            for fields in encoded[start : start + self.chunk_size]:
                pipe.xadd(self.stream, fields, **self._xadd_args())
            ids.extend(str(i) for i in await pipe.execute())
        return ids
