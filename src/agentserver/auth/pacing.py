"""Per-account pacing of password attempts: slowed down under attack, never locked out.

A lock-out keyed on the account lets anyone who knows a username keep its owner out. Instead,
once an account has had `limit` failures within `window` seconds, its attempts are taken one at
a time with a pause before each: a guesser spread over many addresses gets about one try per
`delay`, and the owner still gets in, a few seconds late. Only a short queue may wait per
account; past it an attempt is refused with a Retry-After. A correct password clears the count.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from agentserver.auth.throttle import Throttle
from agentserver.errors import RateLimited

MAX_PACED_ACCOUNTS = 10_000  # accounts being paced at once; more are refused, not remembered


class AccountPacer:
    """One attempt at a time, after `delay` seconds, for accounts with too many failures."""

    def __init__(
        self,
        *,
        limit: int = 5,
        window: float = 60.0,
        delay: float = 1.0,
        max_waiting: int = 4,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.failures = Throttle(limit, window, *([clock] if clock else []))
        self.delay = delay
        self.max_waiting = max_waiting
        self._turns: dict[str, trio.Lock] = {}

    def paced(self, account: str) -> bool:
        """Whether attempts for `account` are being paced now."""
        return self.failures.retry_after(account) > 0

    @asynccontextmanager
    async def turn(self, account: str) -> AsyncIterator[None]:
        """Wait for this account's turn (at once unless paced); the body is the attempt."""
        if not self.paced(account):
            await trio.lowlevel.checkpoint()
            yield
            return
        lock = self._turns.get(account)
        if lock is None:
            if len(self._turns) >= MAX_PACED_ACCOUNTS:
                raise RateLimited("too many sign-in attempts; try again later", retry_after=60)
            lock = self._turns[account] = trio.Lock()
        if lock.statistics().tasks_waiting >= self.max_waiting:
            wait = math.ceil(self.delay * (self.max_waiting + 1))
            raise RateLimited(
                "too many sign-in attempts for this account right now; try again shortly",
                retry_after=wait,
            )
        try:
            async with lock:
                await trio.sleep(self.delay)  # the pacing itself, not a wait for readiness
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._turns.pop(account, None)

    def fail(self, account: str) -> None:
        self.failures.fail(account)

    def reset(self, account: str) -> None:
        self.failures.reset(account)
