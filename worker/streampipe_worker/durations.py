"""Durations as people write them (``30s``, ``5m``, ``1h30m``, ``250ms``): parsed and formatted here
for both the StreamPipeline API (the operator's ``Duration``) and the worker's environment.

The manifest syntax is the subset of Go's ``time.ParseDuration`` that CEL's ``duration()`` also
accepts, so the API server's rules (``duration(self.max) >= duration(self.initial)``) and these
models read every value the same way: whole numbers of ``ms``, ``s``, ``m`` or ``h``, concatenated
(``1h30m``). No days (Go has none: write ``168h``), no fractions, no signs. At most 6 digits per term
and 20 characters in all keeps every valid value below Go's ~292-year limit (three 6-digit hour
terms would need 21 characters), so CEL never overflows on a value the pattern let through; and the
canonical form of anything up to ``999999h`` (``999999h59m59s999ms``, 18 characters) still fits.

The worker's environment is read with ``strict=False``: the same terms, whose numbers may also have
a decimal part (``1.5s``) and any number of digits. Nothing checks those values but the worker.
"""

from __future__ import annotations

import re
from datetime import timedelta

# The CRD's `pattern` for every duration field; Python's re and Go's RE2 read it the same way.
DURATION_PATTERN = r"^([0-9]{1,6}(ms|s|m|h))+$"
DURATION_MAX_LENGTH = 20
DURATION_HINT = "a duration such as 30s, 5m, 1h30m or 250ms (units ms, s, m, h)"

_STRICT = re.compile(DURATION_PATTERN)
_LENIENT = re.compile(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+")
_TERM = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
}


class DurationError(ValueError):
    """A duration string that does not follow the syntax; the message says what would."""


def parse_duration(text: str, *, strict: bool = True) -> timedelta:
    """``"1h30m"`` -> ``timedelta(hours=1, minutes=30)``; raises :class:`DurationError` when malformed.

    ``strict`` (the default) is the manifest syntax, :data:`DURATION_PATTERN`; ``strict=False`` also
    takes decimal numbers of any size (``1.5s``, ``1500000ms``), as the worker's environment does.
    """
    if strict:
        valid = len(text) <= DURATION_MAX_LENGTH and _STRICT.fullmatch(text) is not None
    else:
        valid = _LENIENT.fullmatch(text) is not None
    if not valid:
        limit = f", at most {DURATION_MAX_LENGTH} characters" if strict else ""
        raise DurationError(f"{text!r} is not {DURATION_HINT}{limit}")
    total = timedelta()
    try:
        for number, unit in _TERM.findall(text):
            total += _UNIT[unit] * (float(number) if "." in number else int(number))
    except OverflowError:
        raise DurationError(f"{text!r} is too long a duration") from None
    return total


def format_duration(delta: timedelta) -> str:
    """The canonical form: ``timedelta(seconds=90)`` -> ``"1m30s"``, zero -> ``"0s"``.

    Sub-millisecond parts are dropped (nothing here is that precise); negative values are refused.
    """
    if delta < timedelta():
        raise DurationError(f"negative duration {delta}")
    millis = delta // timedelta(milliseconds=1)
    if millis == 0:
        return "0s"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    seconds, millis = divmod(millis, 1000)
    parts = [
        f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms"))
    ]
    return "".join(
        part for part, value in zip(parts, (hours, minutes, seconds, millis), strict=True) if value
    )
