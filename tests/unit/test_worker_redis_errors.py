"""What a Redis error means to the worker (``redis_errors.classify``) and the retry helper."""

from __future__ import annotations

import pytest
import redis.exceptions

from streampipe_worker.redis_errors import RedisErrorKind, classify, is_transient, retry_while_transient

E = redis.exceptions


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (E.ConnectionError("Connection reset by peer"), RedisErrorKind.TRANSIENT),
        (E.TimeoutError("Timeout reading from socket"), RedisErrorKind.TRANSIENT),
        (E.ReadOnlyError("You can't write against a read only replica."), RedisErrorKind.TRANSIENT),
        (E.ClusterDownError("The cluster is down"), RedisErrorKind.TRANSIENT),
        (E.TryAgainError("Multiple keys request during rehashing of slot"), RedisErrorKind.TRANSIENT),
        (ConnectionRefusedError(111, "Connection refused"), RedisErrorKind.TRANSIENT),
        (E.ResponseError("UNBLOCKED the client was unblocked"), RedisErrorKind.TRANSIENT),
        (E.ResponseError("MASTERDOWN Link with MASTER is down"), RedisErrorKind.TRANSIENT),
        (E.ResponseError("LOADING Redis is loading the dataset in memory"), RedisErrorKind.TRANSIENT),
        (E.ResponseError("loading Redis is loading"), RedisErrorKind.TRANSIENT),  # any case
        (
            E.ResponseError("NOGROUP No such key '{o}:events' or consumer group 'g'"),
            RedisErrorKind.GROUP_MISSING,
        ),
        (
            E.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
            RedisErrorKind.OTHER,
        ),
        (
            E.NoPermissionError("NOPERM this user has no permissions to run the 'xadd' command"),
            RedisErrorKind.OTHER,
        ),
        (ValueError("NOGROUP"), RedisErrorKind.OTHER),  # only a server reply says NOGROUP
        (RuntimeError("a bug"), RedisErrorKind.OTHER),
    ],
)
def test_classify(error: BaseException, kind: RedisErrorKind) -> None:
    assert classify(error) is kind
    assert is_transient(error) is (kind is RedisErrorKind.TRANSIENT)


async def test_retry_until_it_succeeds() -> None:
    calls: list[int] = []
    told: list[tuple[str, int]] = []

    async def flaky() -> None:
        calls.append(len(calls))
        if len(calls) < 3:
            raise E.ConnectionError(f"lost {len(calls)}")

    error = await retry_while_transient(
        flaky,
        delay=lambda attempt: 0.0,
        give_up=lambda attempt: False,
        on_error=lambda exc, attempt: told.append((str(exc), attempt)),
    )
    assert error is None
    assert len(calls) == 3
    assert told == [("lost 1", 1), ("lost 2", 2)]


async def test_gives_up_with_the_last_error() -> None:
    delays: list[int] = []

    async def down() -> None:
        raise E.TimeoutError("still down")

    def delay(attempt: int) -> float:
        delays.append(attempt)
        return 0.0

    error = await retry_while_transient(down, delay=delay, give_up=lambda attempt: attempt >= 3)
    assert isinstance(error, E.TimeoutError)
    assert delays == [1, 2]  # no wait after the attempt that gave up


async def test_a_non_transient_error_is_raised_at_once() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise E.NoPermissionError("NOPERM")

    with pytest.raises(E.NoPermissionError):
        await retry_while_transient(refused, delay=lambda attempt: 0.0, give_up=lambda attempt: False)
    assert calls == 1
