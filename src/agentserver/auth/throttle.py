"""Sliding-window limits on repeated failures (logins, code guesses), kept in memory."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class Throttle:
    """At most `limit` failures per key in `window` seconds; further attempts wait."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, *keys: str) -> int:
        """Seconds until any of `keys` may try again; 0 when all may try now."""
        wait = 0.0
        for key in keys:
            failures = self._recent(key)
            if len(failures) >= self.limit:
                wait = max(wait, failures[0] + self.window - self._clock())
        return math.ceil(wait) if wait > 0 else 0

    def fail(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)
            if len(self._failures) > 100_000:  # bound memory under a spray of keys
                self._failures.pop(next(iter(self._failures)))

    def reset(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)
