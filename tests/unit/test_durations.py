"""One duration syntax for manifests and the worker's environment (streampipe_worker.durations)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from streampipe_operator.api import durations as api_durations
from streampipe_worker import durations, settings


def test_the_api_and_the_worker_share_one_implementation() -> None:
    assert api_durations.parse_duration is durations.parse_duration
    assert api_durations.format_duration is durations.format_duration
    assert api_durations.DURATION_PATTERN is durations.DURATION_PATTERN
    assert settings.format_duration is durations.format_duration


@pytest.mark.parametrize(
    ("text", "manifest", "environment"),
    [
        ("1h30m", timedelta(minutes=90), timedelta(minutes=90)),
        ("1.5s", None, timedelta(seconds=1.5)),
        ("1234567ms", None, timedelta(milliseconds=1234567)),
        ("1h1h1h1h1h1h1h1h1h1h1h", None, timedelta(hours=11)),
        ("5", None, None),
        ("1 s", None, None),
    ],
)
def test_the_environment_also_takes_decimals_and_long_numbers(
    text: str, manifest: timedelta | None, environment: timedelta | None
) -> None:
    for strict, expected in ((True, manifest), (False, environment)):
        if expected is None:
            with pytest.raises(durations.DurationError, match="a duration such as 30s"):
                durations.parse_duration(text, strict=strict)
        else:
            assert durations.parse_duration(text, strict=strict) == expected


def test_an_environment_duration_too_long_for_python_is_refused_not_crashed() -> None:
    with pytest.raises(durations.DurationError, match="too long"):
        durations.parse_duration("9" * 20 + "h", strict=False)
    with pytest.raises(settings.SettingsError, match="STREAMPIPE_BLOCK"):
        settings.load_settings(
            {"STREAMPIPE_STREAM": "s", "STREAMPIPE_GROUP": "g", "STREAMPIPE_HANDLER": "m:f"},
            block="9" * 20 + "h",
        )
