"""The idle watcher: one loop that pauses sandboxes idle longer than the idle timeout."""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from agentserver.errors import AgentServerError

log = logging.getLogger(__name__)
# Never re-check more often than this, even when a sandbox is due right now (it is being paused).
MIN_WAIT = 0.05


class IdleSandboxes(Protocol):
    """What the watcher needs from the lifecycle service."""

    async def pause_idle(self, seconds: float) -> float | None: ...


class IdleWatcher:
    """Wakes when the next running sandbox becomes due (not on a timer per sandbox)."""

    def __init__(self, sandboxes: IdleSandboxes, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("the idle timeout must be positive (0 disables the watcher)")
        self.sandboxes = sandboxes
        self.timeout = timeout
        self.checks = 0
        self._poke = trio.Event()

    def poke(self) -> None:
        """Check now (e.g. after the timeout or the activity of many sandboxes changed)."""
        self._poke.set()

    def next_wait(self, due_in: float | None) -> float:
        """How long to sleep: until the next sandbox is due; with none running, one timeout —
        a sandbox that starts meanwhile cannot become idle before that."""
        if due_in is None:
            return self.timeout
        return min(self.timeout, max(MIN_WAIT, due_in))

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                due_in = await self.sandboxes.pause_idle(self.timeout)
            except AgentServerError as exc:  # e.g. the database is briefly down: try again later
                log.warning("idle check failed: %s", exc.message)
                due_in = None
            self.checks += 1
            with trio.move_on_after(self.next_wait(due_in)):
                await self._poke.wait()
            self._poke = trio.Event()
