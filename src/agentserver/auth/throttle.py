"""Sliding-window limits on repeated failures (logins, code guesses), and where they are counted.

A `Throttle` allows at most `limit` failures per key in `window` seconds; past that a key waits
until its oldest counted failure leaves the window. The counts live in a `Counts`: on a server
the `throttle_hits` table, which every replica shares (auth/throttle_table.py), so adding
replicas does not multiply anyone's attempts; `MemoryCounts` is the same rule kept in one
process, the model the table is tested against.

Every request asks all its throttles at once (`ask_all`): one round trip, whatever it checks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

MEMORY_KEYS_MAX = 100_000  # keys a MemoryCounts remembers: bounded under a spray of keys


@dataclass(frozen=True, slots=True)
class Ask:
    """A question about `key` of `throttle`; with `spend`, also count this attempt unless it
    (or a key asked before it in the same request) is refused."""

    throttle: Throttle
    key: str
    spend: bool = False


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a key stands: its failures inside the window (before this attempt), and the whole
    seconds until it may try again (0: now; an attempt asked to be spent was counted)."""

    recent: int
    wait: int


def whole_seconds(wait: float) -> int:
    """A wait as a Retry-After: rounded up, never 0 while still refused."""
    return math.ceil(wait) if wait > 0 else 0


class Counts(Protocol):
    """Where failures are counted (the times are the store's own clock)."""

    async def ask(self, asks: Sequence[Ask]) -> list[Standing]: ...

    async def fail(self, asks: Sequence[Ask]) -> None: ...

    async def clear(self, scope: str, keys: Sequence[str]) -> None: ...

    async def turn(self, scope: str, key: str, delay: float, most_ahead: float) -> float | None:
        """Seconds until this attempt's turn: `delay` after the key's latest turn and at least
        `delay` from now; None (nothing taken) if that is more than `most_ahead` away."""
        ...


class Throttle:
    """At most `limit` failures per key in `window` seconds; further attempts wait.

    `scope` names the throttle in its store; `limit` and `window` may be changed in place."""

    def __init__(self, scope: str, limit: int, window: float, counts: Counts) -> None:
        self.scope = scope
        self.limit = limit
        self.window = window
        self.counts = counts

    def ask(self, key: str, *, spend: bool = False) -> Ask:
        return Ask(self, key, spend)

    async def retry_after(self, *keys: str) -> int:
        """Seconds until any of `keys` may try again; 0 when all may try now."""
        standings = await ask_all(*(self.ask(key) for key in keys))
        return max((s.wait for s in standings), default=0)

    async def spend(self, key: str) -> int:
        """Count one attempt of `key` unless it is refused: 0 when counted, else the wait."""
        [standing] = await ask_all(self.ask(key, spend=True))
        return standing.wait

    async def fail(self, *keys: str) -> None:
        await fail_all(*(self.ask(key) for key in keys))

    async def reset(self, *keys: str) -> None:
        await self.counts.clear(self.scope, keys)


def _store_of(asks: Sequence[Ask]) -> Counts:
    counts = asks[0].throttle.counts
    assert all(a.throttle.counts is counts for a in asks), "one request, one store"
    return counts


async def ask_all(*asks: Ask) -> list[Standing]:
    """Where each key stands (counting those asked to be spent), in one round trip."""
    if not asks:
        await trio.lowlevel.checkpoint()
        return []
    return await _store_of(asks).ask(asks)


async def fail_all(*asks: Ask) -> None:
    """One failure of each key, in one round trip."""
    if not asks:
        await trio.lowlevel.checkpoint()
        return
    await _store_of(asks).fail(asks)


class MemoryCounts:
    """The rule in one process's memory: each key's failure times, oldest first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._turns: dict[tuple[str, str], float] = {}

    def _recent(self, name: tuple[str, str], window: float, now: float) -> deque[float]:
        failures = self._failures.get(name)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - window:
            failures.popleft()
        if not failures:
            del self._failures[name]
        return failures

    def _add(self, name: tuple[str, str], now: float) -> None:
        self._failures.setdefault(name, deque()).append(now)
        if len(self._failures) > MEMORY_KEYS_MAX:
            self._failures.pop(next(iter(self._failures)))

    async def ask(self, asks: Sequence[Ask]) -> list[Standing]:
        await trio.lowlevel.checkpoint()
        now = self._clock()
        refused = False
        standings = []
        for ask in asks:
            throttle = ask.throttle
            name = (throttle.scope, ask.key)
            failures = self._recent(name, throttle.window, now)
            recent, wait = len(failures), 0.0
            if recent >= throttle.limit:
                wait = failures[0] + throttle.window - now
                refused = True
            elif ask.spend and not refused:
                self._add(name, now)
            standings.append(Standing(recent, whole_seconds(wait)))
        return standings

    async def fail(self, asks: Sequence[Ask]) -> None:
        await trio.lowlevel.checkpoint()
        now = self._clock()
        for ask in asks:
            self._add((ask.throttle.scope, ask.key), now)

    async def clear(self, scope: str, keys: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        for key in keys:
            self._failures.pop((scope, key), None)
            self._turns.pop((scope, key), None)

    async def turn(self, scope: str, key: str, delay: float, most_ahead: float) -> float | None:
        await trio.lowlevel.checkpoint()
        now = self._clock()
        latest = self._turns.get((scope, key))
        start = now + delay if latest is None else max(latest + delay, now + delay)
        if start - now > most_ahead:
            return None
        self._turns[(scope, key)] = start
        if len(self._turns) > MEMORY_KEYS_MAX:
            self._turns.pop(next(iter(self._turns)))
        return start - now
