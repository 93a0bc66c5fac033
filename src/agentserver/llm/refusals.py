"""Refused LLM calls: logged at most once a minute per sandbox and reason, and counted per hour.

A sandbox looping on a refusal must not flood the log or the database: log lines are held back
per (sandbox, reason) for a minute and then report how many were held back; database writes go
through one upsert per (sandbox, reason, hour), and while one is in flight for a key, later
refusals of that key only add to its pending count, which the writer flushes before it returns.
Successful calls never come here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from agentserver.errors import AgentServerError
from agentserver.llm.rules import Caller, Refusal

log = logging.getLogger("agentserver.llm.proxy")

LOG_EVERY = 60.0  # seconds between log lines of one sandbox and reason
MAX_KEYS = 4096  # bound of both tables; past it they start afresh (a few extra lines at worst)

Key = tuple[str, str]  # (sandbox id or "-", reason)
Write = Callable[[Caller, str, int, str | None], Awaitable[None]]


class RefusalLog:
    """Rate-limited log lines: the first refusal of a key logs, the rest of its minute count."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._held: dict[Key, tuple[float, int]] = {}  # key -> (next line due, held back)

    def note(self, refusal: Refusal) -> bool:
        """Log the refusal unless its key logged within the minute; True when a line was written."""
        caller = refusal.caller
        key = (caller.sandbox_id if caller else "-", refusal.reason)
        now = time.monotonic()
        due, held = self._held.get(key, (0.0, 0))
        if now < due:
            self._held[key] = (due, held + 1)
            return False
        if len(self._held) >= MAX_KEYS:
            self._held.clear()
        self._held[key] = (now + self.every, 0)
        level = logging.INFO if refusal.status == 404 or caller is None else logging.WARNING
        log.log(
            level,
            "LLM proxy refused a call: sandbox=%s workspace=%s reason=%s status=%d model=%s%s",
            key[0],
            caller.workspace_id if caller else "-",
            refusal.reason,
            refusal.status,
            refusal.model or "-",
            f" (+{held} more in the last minute)" if held else "",
        )
        return True


class RefusalCounts:
    """Coalesced upserts of refusal counts: at most one write in flight per key."""

    def __init__(self, write: Write) -> None:
        self.write = write
        self._pending: dict[Key, int] = {}
        self._writing: set[Key] = set()

    async def add(self, refusal: Refusal) -> None:
        """Count the refusal; returns once it is written, or handed to a writer in flight."""
        await trio.lowlevel.checkpoint()
        caller = refusal.caller
        if caller is None:
            return  # no sandbox to show it under (unknown or missing token): logged only
        key = (caller.sandbox_id, refusal.reason)
        self._pending[key] = self._pending.get(key, 0) + 1
        if key in self._writing:
            return  # its writer takes this one along before it returns
        self._writing.add(key)
        try:
            while count := self._pending.pop(key, 0):
                try:
                    await self.write(caller, refusal.reason, count, refusal.model)
                except AgentServerError as exc:
                    log.warning("could not record refused LLM calls: %s", exc.message)
        finally:
            self._writing.discard(key)
            self._pending.pop(key, None)
