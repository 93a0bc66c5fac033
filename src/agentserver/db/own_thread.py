"""A blocking connection's life in a worker thread of its own, ended by cancellation.

The change listener (notify.py) and the leadership lock (advisory.py) each hold one dedicated
connection outside the pool for as long as the server runs. The blocking function gets a
`threading.Event` that is set when the caller is cancelled and must return soon after (it
polls it); a psycopg error it raises (the connection failed) is raised bare to the caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import trio


async def run_in_own_thread(blocking: Callable[[threading.Event], None]) -> None:
    """Run `blocking(stop)` until it returns or raises; cancelling the caller sets `stop`."""
    stop = threading.Event()

    async def stop_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop.set()  # the thread sees it at its next poll and returns

    failure: psycopg.Error | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_cancel)
        own_thread = trio.CapacityLimiter(1)  # never waits for, nor holds, a shared thread token
        try:
            await trio.to_thread.run_sync(blocking, stop, limiter=own_thread)
        except psycopg.Error as exc:
            failure = exc  # raised bare, not in the nursery's exception group
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
