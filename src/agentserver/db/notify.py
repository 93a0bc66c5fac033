"""Change notices between replicas: PostgreSQL LISTEN/NOTIFY fanned out to in-process subscribers.

A change is announced in the transaction that makes it (a trigger, see migration 0020), with an
id as its payload and nothing else: subscribers re-read what they need. Two paths deliver it:

- every replica's `listen` task holds one dedicated connection in a worker thread, LISTENing on
  the channels, and hands each notification to the subscribers (after the change commits);
- the session that made the change gets a NOTICE as well, which `Database.transaction` hands to
  the same subscribers before it returns, so the replica that made a change never serves its
  old copy, not even for the next request.

A gap in the stream (the listener's connection lost, or not yet re-established) cannot be
replayed: subscribers are told to `reset` (drop everything) when it is found and again when the
listener is back, and `live` is False in between so nothing is cached without notices.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import trio
from psycopg import sql

from agentserver.db.own_thread import run_in_own_thread

log = logging.getLogger(__name__)

# How often the listener thread looks up from waiting to see whether it must stop.
POLL = 0.2
# Reconnect backoff after the listener's connection is lost: doubles from FIRST up to MOST.
FIRST_RETRY = 0.5
MOST_RETRY = 15.0
# The NOTICE a trigger raises alongside its NOTIFY (migration 0020): channel in detail, id in hint.
NOTICE_MESSAGE = "agentserver change"
# The channels migration 0020's triggers announce on; each payload is one id.
SANDBOX_CHANGED = "sandbox_changed"  # a sandbox's status, token, name, owner or workspace; deleted
LLM_QUOTA_CHANGED = "llm_quota_changed"  # a workspace's LLM limit overrides
# What a dashboard shows changed (migration 0023, sandboxes/event_relay.py): NOTIFY only, no
# NOTICE, since the replica that made the change publishes it itself; payload "<kind> <ids>".
WORKSPACE_EVENT = "workspace_event"
# Access ended on one replica (api/revocation.py): a JSON `Revocation` the others apply too.
ACCESS_REVOKED = "access_revoked"
TUNNEL_OWNER_CHANGED = "tunnel_owner_changed"  # who serves a local sandbox's tunnel (0022)
CHANNELS = (
    SANDBOX_CHANGED,
    LLM_QUOTA_CHANGED,
    WORKSPACE_EVENT,
    ACCESS_REVOKED,
    TUNNEL_OWNER_CHANGED,
)


@dataclass(frozen=True, slots=True)
class Notice:
    """One change: which kind (the channel) and of what (an id)."""

    channel: str
    payload: str


class Subscriber(Protocol):
    """What a cache does with notices: forget one thing, or everything after a gap."""

    def notice(self, notice: Notice) -> None: ...

    def reset(self) -> None: ...


class Changes:
    """The subscribers of each channel, and whether notices are flowing (`live`)."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Subscriber]] = {}
        # False until a listener runs (and while it reconnects): caches must not serve then.
        self.live = False

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(channel, []).append(subscriber)

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        found = self._subscribers.get(channel, [])
        if subscriber in found:
            found.remove(subscriber)

    def publish(self, notice: Notice) -> None:
        """Hand one notice to its channel's subscribers (never blocks)."""
        for subscriber in list(self._subscribers.get(notice.channel, ())):
            subscriber.notice(notice)

    def reset(self) -> None:
        """Tell every subscriber that notices may have been missed."""
        for subscriber in {id(s): s for subs in self._subscribers.values() for s in subs}.values():
            subscriber.reset()

    def set_live(self, live: bool) -> None:
        self.live = live
        self.reset()


def notice_of(diagnostic: Any) -> Notice | None:
    """The change a server NOTICE announces, or None for any other notice."""
    if getattr(diagnostic, "message_primary", None) != NOTICE_MESSAGE:
        return None
    channel, payload = diagnostic.message_detail, diagnostic.message_hint
    if not isinstance(channel, str) or not isinstance(payload, str):
        return None
    return Notice(channel, payload)


def _listen_blocking(
    url: str,
    channels: Iterable[str],
    stop: threading.Event,
    ready: Callable[[], None],
    deliver: Callable[[Notice], None],
) -> None:
    """The worker thread: LISTEN, then pass each notification on until `stop` is set."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        for channel in channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        ready()
        while not stop.is_set():
            for found in conn.notifies(timeout=POLL):
                deliver(Notice(found.channel, found.payload))


async def _listen_once(
    url: str, channels: tuple[str, ...], changes: Changes, on_ready: Callable[[], None]
) -> None:
    """One connection's life: returns only by cancellation, raises when the connection fails."""

    def ready() -> None:
        trio.from_thread.run_sync(on_ready)

    def deliver(notice: Notice) -> None:
        trio.from_thread.run_sync(changes.publish, notice)

    await run_in_own_thread(lambda stop: _listen_blocking(url, channels, stop, ready, deliver))


async def listen(
    url: str,
    channels: tuple[str, ...],
    changes: Changes,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep one LISTEN connection for `channels` up, reconnecting with backoff; started once the
    first one listens (a database that cannot be reached at start fails the start)."""
    started = False
    delay = FIRST_RETRY

    def on_ready() -> None:
        nonlocal started, delay
        changes.set_live(True)  # subscribers drop what they hold: the gap is behind us
        delay = FIRST_RETRY
        if not started:
            started = True
            task_status.started()

    while True:
        try:
            await _listen_once(url, channels, changes, on_ready)
        except psycopg.Error as exc:
            if not started:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("change notices lost (%s); reconnecting in %.1f s", first, delay)
        finally:
            if changes.live:
                changes.set_live(False)  # a gap begins: forget everything, cache nothing
        await trio.sleep(delay)
        delay = min(MOST_RETRY, delay * 2)
