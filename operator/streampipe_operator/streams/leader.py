"""A leader lease in Redis: of several processes doing one pipeline's housekeeping, one acts.

The lease is one key next to the stream (``<stream>:housekeeper``, so it shares the stream's hash tag)
holding the leader's identity, with a time to live. :meth:`LeaderLease.hold` takes a free lease
(``SET NX PX``) or renews one this process holds (a script that extends it only if the holder is still
us); a process that is not the holder gets False and stands by. The holder's own clock decides when it
stops acting: :attr:`LeaderLease.leading` turns False at the moment measured from *before* its last
successful renewal plus the TTL, which is never later than the key's own expiry on the server, so a
standby cannot take the lease while the old leader still believes it leads (clock rates differ by far
less than the safety margin). :meth:`release` gives the lease up at shutdown, for a fast hand-over.
"""

from __future__ import annotations

import time
from typing import Any

# KEYS[1] lease key; ARGV[1] identity, ARGV[2] ttl ms. 1 = we hold it now, 0 = someone else does.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(stream: str) -> str:
    """The lease of a pipeline's housekeeping, next to its stream (same hash tag, same slot)."""
    return f"{stream}:housekeeper"


class LeaderLease:
    """One process's view of one lease (see the module docstring)."""

    def __init__(self, client: Any, key: str, identity: str, ttl: float, *, margin: float = 0.2) -> None:
        if ttl <= 0:
            raise ValueError("the lease time must be positive")
        self.client = client
        self.key = key
        self.identity = identity
        self.ttl = ttl
        self.margin = margin  # a share of the TTL the leader gives up early
        self._valid_until = 0.0

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._valid_until

    async def hold(self) -> bool:
        """Take or renew the lease; True while this process is the leader."""
        asked_at = time.monotonic()
        try:
            held = await self.client.eval(_HOLD, 1, self.key, self.identity, int(self.ttl * 1000))
        except BaseException:
            self._valid_until = 0.0  # unknown whether it was renewed: stop acting now
            raise
        self._valid_until = asked_at + self.ttl * (1 - self.margin) if int(held) == 1 else 0.0
        return self.leading

    async def release(self) -> bool:
        """Give the lease up if this process holds it (a standby takes it at once)."""
        self._valid_until = 0.0
        return int(await self.client.eval(_RELEASE, 1, self.key, self.identity)) == 1

    async def holder(self) -> str | None:
        value = await self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
