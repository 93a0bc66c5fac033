"""Per-account pacing of password attempts: slowed down under attack, never locked out.

A lock-out keyed on the account lets anyone who knows a username keep its owner out. Instead,
once an account has had `limit` failures within `window` seconds, its attempts are taken one at
a time with a pause before each: a guesser spread over many addresses gets about one try per
`delay`, and the owner still gets in, a few seconds late. Only a short queue may wait per
account; past it an attempt is refused with a Retry-After. A correct password clears the count.

The failures and the turns are counted where every replica sees them (auth/throttle.py's
`Counts`): each turn starts `delay` after the account's previous one, on whichever replica, so
a guesser spread over replicas gets no more tries than on one. Within one replica the attempts
also queue on a lock, so they run one at a time.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from agentserver.auth.throttle import Ask, Counts, MemoryCounts, Throttle
from agentserver.errors import RateLimited

MAX_PACED_ACCOUNTS = 10_000  # accounts being paced at once; more are refused, not remembered
SCOPE = "account"


class AccountPacer:
    """One attempt at a time, after `delay` seconds, for accounts with too many failures.

    Counted in `counts` (by default in memory, on trio's clock)."""

    def __init__(
        self,
        *,
        limit: int = 5,
        window: float = 60.0,
        delay: float = 1.0,
        max_waiting: int = 4,
        counts: Counts | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        store = counts if counts is not None else MemoryCounts(clock or trio.current_time)
        self.failures = Throttle(SCOPE, limit, window, store)
        self.delay = delay
        self.max_waiting = max_waiting
        self._turns: dict[str, trio.Lock] = {}

    def ask(self, account: str) -> Ask:
        """The question `paced` asks, to ask it with a request's other throttles."""
        return self.failures.ask(account)

    async def paced(self, account: str) -> bool:
        """Whether attempts for `account` are being paced now."""
        return await self.failures.retry_after(account) > 0

    def _refuse_queue(self) -> RateLimited:
        return RateLimited(
            "too many sign-in attempts for this account right now; try again shortly",
            retry_after=math.ceil(self.delay * (self.max_waiting + 1)),
        )

    @asynccontextmanager
    async def turn(self, account: str, paced: bool | None = None) -> AsyncIterator[None]:
        """Wait for this account's turn (at once unless paced: `paced` if the caller already
        asked, else asked here); the body is the attempt."""
        if paced is None:
            paced = await self.paced(account)
        if not paced:
            await trio.lowlevel.checkpoint()
            yield
            return
        lock = self._turns.get(account)
        if lock is None:
            if len(self._turns) >= MAX_PACED_ACCOUNTS:
                raise RateLimited("too many sign-in attempts; try again later", retry_after=60)
            lock = self._turns[account] = trio.Lock()
        if lock.statistics().tasks_waiting >= self.max_waiting:
            raise self._refuse_queue()
        try:
            async with lock:
                wait = await self.failures.counts.turn(
                    SCOPE, account, self.delay, self.delay * (self.max_waiting + 1)
                )
                if wait is None:  # the queue is full across the replicas
                    raise self._refuse_queue()
                await trio.sleep(wait)  # the pacing itself, not a wait for readiness
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._turns.pop(account, None)

    async def fail(self, account: str) -> None:
        await self.failures.fail(account)

    async def reset(self, account: str) -> None:
        await self.failures.reset(account)
