"""Supervision of long-lived server tasks: a failure is logged and the task starts again.

A watcher, a reconciler or an event follower runs for the life of the server in a nursery
that also owns everything else the server does: an unexpected exception escaping one of them
would cancel that nursery and take the whole server down. `supervise` runs such a task; once
the task has reported itself started, an exception (not a cancellation) is logged with its
traceback and the task is started again after a backoff that doubles up to a ceiling and
resets after a run that lasted longer than the ceiling. A failure *before* the first start is
a startup error and propagates, so a misconfigured server still fails at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds to wait before restarting a failed task: `first`, doubling up to `ceiling`."""

    first: float = 1.0
    ceiling: float = 60.0

    def next(self, delay: float) -> float:
        return min(self.ceiling, max(self.first, delay * 2))


class _FirstStart(Generic[T]):
    """Passes the first `started()` on to the owner's task status; later ones are no-ops."""

    def __init__(self, outer: trio.TaskStatus[T]) -> None:
        self._outer = outer
        self.done = False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self._outer.started(value)


async def supervise(
    name: str,
    fn: Callable[..., Awaitable[object]],
    *args: Any,
    backoff: Backoff = Backoff(),  # frozen: one shared default is safe
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `await fn(*args, task_status=…)` until it returns; restart it whenever it fails.

    `fn` reports readiness through its `task_status` as a `nursery.start` target does; only
    the first report reaches our caller. `name` says in the log which task failed.
    """
    first = _FirstStart(task_status)
    delay = 0.0
    while True:
        began = trio.current_time()
        try:
            await fn(*args, task_status=first)
        except Exception:
            if not first.done:
                raise  # it never started: a startup failure the caller must see
            if trio.current_time() - began > backoff.ceiling:
                delay = 0.0  # it ran well for a while: this is a fresh failure
            delay = backoff.next(delay)
            log.exception("%s failed; starting it again in %g s", name, delay)
        else:
            if not first.done:  # it returned without ever starting: nothing more to wait for
                first.started()
            return
        # A backoff between restarts of a failing task, not a wait for some state.
        await trio.sleep(delay)
