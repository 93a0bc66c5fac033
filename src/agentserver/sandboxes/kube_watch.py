"""Following our `Sandbox` objects: one watch thread feeding a trio channel, and the view it keeps.

The thread lists once, then watches from the list's resourceVersion; a watch that ends is
opened again from the last resourceVersion seen (bookmarks included), and one answered 410
Gone lists again. It never polls: between events it blocks in the stream. The trio side applies
each event to `SandboxView` and wakes whoever waits for a sandbox to change.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from agentserver.sandboxes.kube_objects import LABEL_SANDBOX, Obj

log = logging.getLogger(__name__)
WATCH_SECONDS = 300  # the server ends each watch after this; we open the next one at once
RETRY = (0.5, 30.0)  # backoff bounds while the API server cannot be reached


@dataclass(frozen=True, slots=True)
class Listed:
    """The whole set of our Sandbox objects at one resourceVersion (after a (re)list)."""

    items: list[Obj]


@dataclass(frozen=True, slots=True)
class Changed:
    """One watch event: ADDED, MODIFIED or DELETED, with the object as it is now."""

    type: str
    object: Obj


Update = Listed | Changed


def sandbox_id(obj: Obj) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_SANDBOX)


@dataclass
class SandboxView:
    """Our Sandbox objects by sandbox id, as the watch last reported them."""

    objects: dict[str, Obj] = field(default_factory=dict)
    listed: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event)
    # Called with (sandbox id, the object before, the object now or None when deleted).
    on_change: Callable[[str, Obj | None, Obj | None], None] | None = None

    def apply(self, update: Update) -> None:
        if isinstance(update, Listed):
            previous = self.objects
            self.objects = {}
            for obj in update.items:
                if (sid := sandbox_id(obj)) is not None:
                    self.objects[sid] = obj
            for sid in previous.keys() | self.objects.keys():
                self._notify(sid, previous.get(sid), self.objects.get(sid))
            self.listed.set()
        else:
            sid = sandbox_id(update.object)
            if sid is None:
                return
            before = self.objects.get(sid)
            if update.type == "DELETED":
                self.objects.pop(sid, None)
                self._notify(sid, before, None)
            else:
                self.objects[sid] = update.object
                self._notify(sid, before, update.object)
        self._changed.set()
        self._changed = trio.Event()

    def _notify(self, sid: str, before: Obj | None, now: Obj | None) -> None:
        if self.on_change is not None and before is not now:
            self.on_change(sid, before, now)

    def remember(self, obj: Obj) -> None:
        """An object our own call returned: newer than (or as new as) what the watch said."""
        sid = sandbox_id(obj)
        if sid is None:
            return
        old = self.objects.get(sid)
        if old is None or _version(obj) >= _version(old):
            self.objects[sid] = obj

    async def wait_for(self, check: Callable[[], bool]) -> None:
        """Return once `check()` holds (tried now and after every change)."""
        while True:
            changed = self._changed
            if check():
                await trio.lowlevel.checkpoint()
                return
            await changed.wait()


def _version(obj: Obj) -> int:
    text = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    try:
        return int(text)
    except ValueError:
        return 0


class SandboxWatch:
    """The watch thread's side: list, then watch from the resourceVersion, forever."""

    def __init__(self, lister: Callable[..., Any]) -> None:
        # `lister(**kwargs)`: the client's list call for our Sandbox objects (label selector and
        # namespace already bound); with watch=True and _preload_content=False, the stream.
        self._lister = lister
        self._stop = threading.Event()
        self._response: Any = None
        self.resource_version: str | None = None
        self.relists = 0
        self.reopens = 0

    def stop(self) -> None:
        """Make the thread end soon: no further calls, and the open stream is shut."""
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # already closed
                log.debug("watch stream already closed", exc_info=True)

    def run(self, send: Callable[[Update], None]) -> None:
        """Blocking: feed `send` until stopped (it blocks while the trio side is behind)."""
        delay = RETRY[0]
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    send(self._list())
                self._follow(send)
                delay = RETRY[0]
            except ApiException as exc:
                if exc.status == 410:
                    log.info("Sandbox watch: resourceVersion gone (410); listing again")
                    self.resource_version = None
                    continue
                log.warning("Sandbox watch failed: %s %s; retrying", exc.status, exc.reason)
            except (trio.RunFinishedError, trio.Cancelled):
                return
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("Sandbox watch broke (%s); retrying", exc)
            # Backoff against an API server that is away, not a wait for a state.
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, RETRY[1])

    def _list(self) -> Listed:
        body = self._lister()
        self.relists += 1
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion")
        return Listed(list(body.get("items") or []))

    def _follow(self, send: Callable[[Update], None]) -> None:
        response = self._lister(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(10, WATCH_SECONDS + 30),
        )
        self._response = response
        self.reopens += 1
        try:
            for event in _events(response):
                if self._stop.is_set():
                    return
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if kind != "BOOKMARK":
                    send(Changed(str(kind), obj))
                if version:
                    self.resource_version = version
        finally:
            self._response = None
            response.release_conn()


def _events(response: Any) -> Iterator[dict[str, Any]]:
    for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
        if line:
            yield json.loads(line)
