"""Per-workspace event pub/sub: bounded buffers, and slow subscribers are dropped, not waited on.

Events reach `publish_nowait` by two paths: from the code on this replica that made a change
(with the row it wrote, before its request returns), and from other replicas' changes through
the database's notices (sandboxes/event_relay.py, which re-reads the row). A sandbox's row
carries a version (migration 0023) that only grows: a row no newer than the one already handed
on is dropped, and so is any event of a sandbox already deleted, so each change reaches each
stream once and a sandbox's state never goes back.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from agentserver.auth.revocation import Revocation
from agentserver.models import Sandbox

log = logging.getLogger(__name__)

Event = dict[str, Any]
# Events a subscriber may fall behind by before it is dropped (it then reconnects and
# re-reads the current state, which is cheaper than making every publisher wait for it).
BUFFER = 64
# How many deleted sandboxes are remembered, so that a late notice cannot bring one back.
GONE_KEPT = 4096


class Subscription:
    """One listener: read `inbox` until it ends (it ends when dropped as too slow or closed).

    Registered from the moment `WorkspaceEvents.subscribe` returns; use it as a context
    manager (or call `close`) to unregister.
    """

    def __init__(
        self,
        hub: WorkspaceEvents,
        workspace_id: str,
        buffer: int,
        user_id: str | None = None,
        session_hash: str | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        # Whose stream this is, opened from which main session: ended when that access ends.
        self.user_id = user_id
        self.session_hash = session_hash
        self._hub = hub
        self._send, self.inbox = trio.open_memory_channel[Event](buffer)
        self.dropped = False

    def offer(self, event: Event) -> bool:
        """Queue `event` without blocking; False when the buffer is full or the reader left."""
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def end(self) -> None:
        """Stop delivering: the reader sees the end of its inbox after what is queued."""
        self._hub.forget(self)
        self._send.close()

    def close(self) -> None:
        self.end()
        self.inbox.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkspaceEvents:
    """Who listens to which workspace; `publish_nowait` never blocks the publisher."""

    def __init__(self, buffer: int = BUFFER) -> None:
        self._buffer = buffer
        self._listeners: dict[str, set[Subscription]] = {}
        self._observers: list[Callable[[str, Event], None]] = []
        # Names this process in the notices it sends itself (previews): it skips their echo.
        self.origin = secrets.token_hex(8)
        self._versions: dict[str, int] = {}  # the newest row version handed on, per sandbox
        self._gone: OrderedDict[str, None] = OrderedDict()  # deletions handed on (the newest)

    def subscribe(
        self, workspace_id: str, user_id: str | None = None, session_hash: str | None = None
    ) -> Subscription:
        """Start listening to one workspace (close the subscription when done); `user_id` and
        `session_hash` say whose it is, so `end` can find it when their access ends."""
        sub = Subscription(self, workspace_id, self._buffer, user_id, session_hash)
        self._listeners.setdefault(workspace_id, set()).add(sub)
        return sub

    def observe(self, observer: Callable[[str, Event], None]) -> None:
        """Also hand every event of every workspace to `observer` (the proxy forgetting a
        sandbox's connections); called synchronously, so it must not block."""
        self._observers.append(observer)

    def publish_nowait(self, workspace_id: str, event: Event) -> int:
        """Give `event` to every listener of the workspace (and to the observers); returns how
        many got it. A sandbox event older than one handed on already goes to nobody."""
        if not self._news(event):
            return 0
        for observer in self._observers:
            try:
                observer(workspace_id, event)
            except Exception:  # an observer's bug must not stop the publisher
                log.exception("an observer of workspace events failed")
        delivered = 0
        for sub in list(self._listeners.get(workspace_id, ())):
            if sub.offer(event):
                delivered += 1
            else:
                sub.dropped = True
                log.info("dropping a slow event subscriber of workspace %s", workspace_id)
                sub.end()
        return delivered

    def _news(self, event: Event) -> bool:
        """Whether `event` tells something not handed on yet (and note that it is)."""
        kind = event.get("type")
        deleted = event.get("sandbox_deleted")
        if kind == "sandbox_deleted" and isinstance(deleted, dict) and "id" in deleted:
            sandbox_id = str(deleted["id"])
            if sandbox_id in self._gone:
                return False
            self._gone[sandbox_id] = None
            while len(self._gone) > GONE_KEPT:
                self._gone.popitem(last=False)
            self._versions.pop(sandbox_id, None)
            return True
        row = event.get("sandbox")
        if kind != "sandbox" or not isinstance(row, Sandbox):
            return True
        if row.id in self._gone:
            return False
        if row.version is None:  # a row read without its version: cannot be ordered
            return True
        if row.version <= self._versions.get(row.id, -1):
            return False
        self._versions[row.id] = row.version
        return True

    def close_workspace(self, workspace_id: str) -> None:
        """End every subscription of a deleted workspace."""
        for sub in list(self._listeners.get(workspace_id, ())):
            sub.end()

    def end(self, revocation: Revocation) -> int:
        """End the subscriptions whose access `revocation` covers (a browser that reconnects
        is checked afresh); returns how many."""
        ended = [
            sub
            for subs in self._listeners.values()
            for sub in subs
            if sub.user_id is not None
            and revocation.covers(sub.user_id, sub.workspace_id, sub.session_hash)
        ]
        for sub in ended:
            sub.end()
        return len(ended)

    def close_all(self) -> None:
        """End every subscription (server shutdown: open streams finish instead of hanging)."""
        for workspace_id in list(self._listeners):
            self.close_workspace(workspace_id)

    def watched(self) -> list[str]:
        """The workspaces someone listens to now."""
        return list(self._listeners)

    def listeners(self, workspace_id: str) -> int:
        return len(self._listeners.get(workspace_id, ()))

    def forget(self, sub: Subscription) -> None:
        subs = self._listeners.get(sub.workspace_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._listeners[sub.workspace_id]
