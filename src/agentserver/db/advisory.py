"""A session-level advisory lock held on a dedicated connection (the cluster's leadership).

One connection, outside the pool, in its own worker thread (as the change listener's in
notify.py): it tries `pg_try_advisory_lock` every `poll` seconds until it gets the lock, then
checks every `poll` seconds that its connection (and with it the lock) is still there.
PostgreSQL releases a session lock when its connection ends, so a holder that dies, or whose
connection is cut, lets another process take the lock at its next try. TCP keepalives bound how
long a silently lost network takes to notice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
import trio

from agentserver.db.own_thread import run_in_own_thread

log = logging.getLogger(__name__)

FIRST_RETRY = 0.5
MOST_RETRY = 15.0


def _hold_blocking(
    url: str,
    key: int,
    poll: float,
    stop: threading.Event,
    report: Callable[[bool], None],
) -> None:
    """The worker thread: try for the lock until held, then keep checking the connection.
    Reports after its first try and whenever the lock is won; raises when the connection fails."""
    # libpq's keepalives (ignored on Unix sockets): a dead peer is noticed within ~10 s.
    with psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=10,
        keepalives=1,
        keepalives_idle=4,
        keepalives_interval=2,
        keepalives_count=3,
        tcp_user_timeout=10_000,
    ) as conn:
        held, first = False, True
        while not stop.is_set():
            if held:
                conn.execute("SELECT 1")  # raises once the connection, and the lock, are gone
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                held = bool(row and row[0])
                if held or first:
                    report(held)
                first = False
            stop.wait(poll)


async def _hold_once(url: str, key: int, poll: float, report: Callable[[bool], None]) -> None:
    """One connection's life: returns only by cancellation, raises when the connection fails."""

    def reported(held: bool) -> None:
        trio.from_thread.run_sync(report, held)

    await run_in_own_thread(lambda stop: _hold_blocking(url, key, poll, stop, reported))


async def hold_advisory_lock(
    url: str,
    key: int,
    on_change: Callable[[bool], None],
    *,
    poll: float = 1.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Try for the session lock `key` forever, reconnecting with backoff; `on_change(True)` when
    it is won, `on_change(False)` as soon as it is lost. Started after the first try (a database
    that cannot be reached at start fails the start)."""
    started, held = False, False
    delay = FIRST_RETRY

    def report(now_held: bool) -> None:
        nonlocal started, held, delay
        delay = FIRST_RETRY
        if now_held and not held:
            held = True
            on_change(True)
        if not started:
            started = True
            task_status.started()

    while True:
        lost = False
        try:
            await _hold_once(url, key, poll, report)
        except psycopg.Error as exc:
            if not started:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("the advisory lock's connection failed (%s); again in %.1f s", first, delay)
        finally:
            if held:
                held, lost = False, True
                on_change(False)
        # A backoff between connections to a failing database, not a wait for some state; one
        # that lost the lock lets the others' next tries come first.
        await trio.sleep(max(delay, 2 * poll) if lost else delay)
        delay = min(MOST_RETRY, delay * 2)
