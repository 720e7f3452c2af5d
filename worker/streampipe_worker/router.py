"""The handler API.

A handler is named ``module:attribute`` (``STREAMPIPE_HANDLER``) and is one of:

- a function taking one :class:`Entry`, sync or async; returning means success, raising means
  failure (retried with backoff), raising :class:`PermanentError` means "retrying cannot help" (the
  entry goes to the dead-letter stream at once);
- a batch function marked with :func:`batch`: takes ``list[Entry]``, returns ``None`` (all succeeded)
  or one outcome per entry, in order: ``None`` for success or the exception for a failure;
- a :class:`Router` of typed events (``type`` / ``version`` / ``payload`` fields, payload JSON): each
  route gets a validated pydantic model. A payload that does not validate, or a type/version with no
  route, is a ``PermanentError``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel, ValidationError

TYPE_FIELD = "type"
VERSION_FIELD = "version"
PAYLOAD_FIELD = "payload"
DEFAULT_VERSION = 1


class Entry:
    """One stream entry as a handler sees it."""

    __slots__ = ("deliveries", "fields", "group", "id", "stream")

    def __init__(self, id: str, fields: dict[str, str], deliveries: int, stream: str, group: str) -> None:
        self.id = id
        self.fields = fields
        self.deliveries = deliveries
        self.stream = stream
        self.group = group

    def __repr__(self) -> str:
        return (
            f"Entry(id={self.id!r}, deliveries={self.deliveries}, stream={self.stream!r}, "
            f"fields={self.fields!r})"
        )


class PermanentError(Exception):
    """Raise from a handler when retrying cannot help: the entry goes to the dead-letter stream now."""


class InvalidEventError(PermanentError):
    """The entry is not an event any route accepts (unknown type/version, bad payload)."""


Outcome = BaseException | None
EntryHandler = Callable[[Entry], Any]
BatchHandler = Callable[[list[Entry]], Sequence[Outcome] | Awaitable[Sequence[Outcome] | None] | None]

F = TypeVar("F", bound=Callable[..., Any])


def batch(func: F) -> F:
    """Mark a function as a batch handler (``list[Entry]`` in, per-entry outcomes out)."""
    func.__streampipe_batch__ = True  # type: ignore[attr-defined]
    return func


@dataclass(frozen=True)
class Route:
    """One ``(type, version)`` and the function that handles it."""

    event_type: str
    version: int
    model: type[BaseModel]
    func: Callable[..., Any]
    wants_entry: bool
    is_async: bool


class Router:
    """Typed events by ``type`` and ``version``; itself a handler (``STREAMPIPE_HANDLER=pkg.mod:router``).

    >>> router = Router()
    >>> @router.on("order.created", version=1)
    ... def created(event: OrderCreated, entry: Entry) -> None: ...
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, int], Route] = {}

    def on(
        self, type: str, *, version: int = DEFAULT_VERSION, model: type[BaseModel] | None = None
    ) -> Callable[[F], F]:
        """Register a function for ``type``/``version``; the model defaults to its first parameter's type."""

        def register(func: F) -> F:
            found = model or _first_parameter_model(func)
            key = (type, version)
            if key in self._routes:
                raise ValueError(f"a route for {type!r} version {version} is already registered")
            parameters = [
                p
                for p in inspect.signature(func).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            self._routes[key] = Route(
                event_type=type,
                version=version,
                model=found,
                func=func,
                wants_entry=len(parameters) >= 2,
                is_async=inspect.iscoroutinefunction(func),
            )
            return func

        return register

    @property
    def routes(self) -> list[Route]:
        return list(self._routes.values())

    @property
    def is_async(self) -> bool:
        """Any route is async: the worker then awaits every call (sync routes run inline)."""
        return any(route.is_async for route in self._routes.values())

    def model_for(self, type: str, version: int = DEFAULT_VERSION) -> type[BaseModel]:
        """The payload model of a route; ``InvalidEventError`` when there is none."""
        route = self._routes.get((type, version))
        if route is None:
            raise InvalidEventError(f"no route for type {type!r} version {version}; known: {self._known()}")
        return route.model

    def _known(self) -> str:
        return ", ".join(f"{t} v{v}" for t, v in sorted(self._routes)) or "none"

    def decode(self, entry: Entry) -> tuple[Route, BaseModel]:
        """The route and validated event for an entry, or ``InvalidEventError`` with the reason."""
        fields = entry.fields
        event_type = fields.get(TYPE_FIELD)
        if event_type is None:
            raise InvalidEventError(f"entry has no {TYPE_FIELD!r} field (fields: {sorted(fields)})")
        raw_version = fields.get(VERSION_FIELD, str(DEFAULT_VERSION))
        try:
            version = int(raw_version)
        except ValueError:
            raise InvalidEventError(f"{VERSION_FIELD!r} is {raw_version!r}, not an integer") from None
        route = self._routes.get((event_type, version))
        if route is None:
            raise InvalidEventError(
                f"no route for type {event_type!r} version {version}; known: {self._known()}"
            )
        payload = fields.get(PAYLOAD_FIELD)
        if payload is None:
            raise InvalidEventError(f"entry has no {PAYLOAD_FIELD!r} field")
        try:
            event = route.model.model_validate_json(payload)
        except ValidationError as exc:
            raise InvalidEventError(
                f"{event_type} v{version}: payload does not match {route.model.__name__}: {_short(exc)}"
            ) from exc
        return route, event

    def __call__(self, entry: Entry) -> Any:
        """Handle one entry synchronously (a coroutine is returned as is for async routes)."""
        route, event = self.decode(entry)
        return route.func(event, entry) if route.wants_entry else route.func(event)

    async def dispatch_async(self, entry: Entry) -> None:
        route, event = self.decode(entry)
        result = route.func(event, entry) if route.wants_entry else route.func(event)
        if route.is_async:
            await result


def _short(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _first_parameter_model(func: Callable[..., Any]) -> type[BaseModel]:
    hints = get_type_hints(func)
    parameters = list(inspect.signature(func).parameters)
    if parameters:
        hint = hints.get(parameters[0])
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            return hint
    raise TypeError(
        f"{func.__qualname__}: annotate the first parameter with a pydantic model, or pass model=..."
    )


@dataclass(frozen=True)
class LoadedHandler:
    """A handler resolved from ``module:attribute``, with how the worker must call it."""

    spec: str
    target: Callable[..., Any]
    is_async: bool
    is_batch: bool


class HandlerLoadError(Exception):
    """``STREAMPIPE_HANDLER`` does not name a usable handler."""


def load_handler(spec: str) -> LoadedHandler:
    """Import ``module:attribute`` (dotted attribute paths allowed) and classify it."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise HandlerLoadError(
            f"handler {spec!r}: expected module:attribute, e.g. shop_handlers.billing:router"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerLoadError(
            f"handler {spec!r}: cannot import {module_name!r} ({exc}); is the package installed in the image?"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerLoadError(
                f"handler {spec!r}: {module_name} has no attribute {attribute!r}"
            ) from None
    return classify_handler(target, spec)


def classify_handler(target: Any, spec: str = "") -> LoadedHandler:
    """How to call ``target``: a Router, a batch function, or a per-entry function (sync or async)."""
    name = spec or getattr(target, "__qualname__", repr(target))
    if isinstance(target, Router):
        if not target.routes:
            raise HandlerLoadError(f"handler {name!r}: the Router has no routes")
        if target.is_async:
            return LoadedHandler(spec=name, target=target.dispatch_async, is_async=True, is_batch=False)
        return LoadedHandler(spec=name, target=target, is_async=False, is_batch=False)
    if not callable(target):
        raise HandlerLoadError(f"handler {name!r} is a {type(target).__name__}, not a function or Router")
    function = getattr(target, "__call__", target) if not inspect.isroutine(target) else target  # noqa: B004
    is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(function)
    return LoadedHandler(
        spec=name,
        target=target,
        is_async=is_async,
        is_batch=bool(getattr(target, "__streampipe_batch__", False)),
    )
