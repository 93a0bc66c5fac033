"""The periodic reconciler: every interval, makes the database and the backend agree again."""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from agentserver.errors import AgentServerError

log = logging.getLogger(__name__)


class Reconcilable(Protocol):
    """What the reconciler needs from the lifecycle service."""

    async def reconcile(self, *, at_start: bool = False) -> None: ...


class Reconciler:
    """Repairs what a lost write or a missed event left behind (a row stuck `creating`, a
    row `running` whose agent is gone, an agent running behind a `paused` row), not only at
    start: one pass every `interval` seconds, or at once when poked."""

    def __init__(self, sandboxes: Reconcilable, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the reconcile interval must be positive (0 disables it)")
        self.sandboxes = sandboxes
        self.interval = interval
        self.passes = 0  # finished
        self._begun = 0
        self._unfinished = False  # a pass raised: the restarted loop does it again at once
        self._poke = trio.Event()
        self._passed = trio.Event()

    def poke(self) -> None:
        """Reconcile now rather than at the end of the interval."""
        self._poke.set()

    async def next_pass(self) -> None:
        """Wait until the next pass (one that starts after this call) has finished."""
        wanted = self._begun + 1
        while True:  # passes < wanted at first: it counts only passes already begun
            await self._passed.wait()
            if self.passes >= wanted:
                return

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pass after pass, the first one interval after start (the start itself reconciled),
        or at once when the previous run of this loop ended in the middle of a pass."""
        task_status.started()
        while True:
            if not self._unfinished:
                with trio.move_on_after(self.interval):
                    await self._poke.wait()
            self._poke = trio.Event()
            self._begun += 1
            self._unfinished = True
            try:
                await self.sandboxes.reconcile()
            except AgentServerError as exc:  # e.g. the database or the backend is down
                log.warning("reconciliation failed: %s", exc.message)
            self._unfinished = False
            self.passes += 1
            self._passed.set()
            self._passed = trio.Event()
