"""The listener's connection budget: how many are open, which wait idle, whom to close (pure).

Every accepted connection takes one slot and, when it is a proxied one, often a second file
for its upstream. Without a cap, idle keep-alive connections alone exhaust the open-files limit
and `accept` then fails for everyone until they go (reproduced with 1,050 idle connections and
the usual 1,024 files). At the cap a newcomer is admitted by closing the connection that has
waited longest for its next request: closing an idle keep-alive connection is an ordinary HTTP
event that clients retry transparently, whereas refusing the newcomer would let whoever holds
idle connections lock everyone else out. Only when every slot has a request in flight is the
newcomer refused (front.py answers it a short 503).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from itertools import count

# Files the server needs besides its connections: the database pool, sandbox processes' pipes,
# logs, the listening socket, splice pipes.
RESERVED_FILES = 128
MIN_CAP = 16


def default_cap() -> int:
    """The cap when none is configured: half of what the open-files limit leaves after the
    reserve (a proxied connection can hold an upstream connection as well)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_CAP, (soft - RESERVED_FILES) // 2)


class Connections:
    """Open connections by key; the idle ones in the order they became idle."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._keys = count()
        self._open: set[int] = set()
        # key → how to close it and since when it is idle, oldest first
        self._idle: dict[int, tuple[Callable[[], None], float]] = {}

    @property
    def open(self) -> int:
        return len(self._open)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def admit(self) -> int | None:
        """A key for a newly accepted connection, or None when it must be refused. At the cap
        the connection idle longest is closed (and forgotten) to make room."""
        if len(self._open) >= self.cap:
            if not self._idle:
                return None
            oldest = next(iter(self._idle))
            self._forget(oldest)()
        key = next(self._keys)
        self._open.add(key)
        return key

    def idle(self, key: int, close: Callable[[], None], since: float) -> None:
        """`key` waits for its next request since `since` (the clock `close_idle_since` is
        given); `close` (synchronous) ends it if room is needed, or when idle too long."""
        if key in self._open:
            self._idle.pop(key, None)  # re-inserted: the newest idle
            self._idle[key] = (close, since)

    def busy(self, key: int) -> None:
        """`key` has a request in flight: never closed to make room."""
        self._idle.pop(key, None)

    def release(self, key: int) -> None:
        """`key` is closed (a no-op for one closed to make room)."""
        self._open.discard(key)
        self._idle.pop(key, None)

    def close_idle(self) -> None:
        """Shutdown: close every idle connection now."""
        for key in list(self._idle):
            self._idle.pop(key)[0]()

    def close_idle_since(self, cutoff: float) -> int:
        """Close (and forget) the connections idle since `cutoff` or before; how many."""
        closed = 0
        while self._idle:
            oldest = next(iter(self._idle))
            if self._idle[oldest][1] > cutoff:  # the rest became idle later still
                break
            self._forget(oldest)()
            closed += 1
        return closed

    def _forget(self, key: int) -> Callable[[], None]:
        self._open.discard(key)
        return self._idle.pop(key)[0]
