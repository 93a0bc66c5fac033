"""Watch streams: `{"type", "object"}` lines from a resourceVersion on, as the server sends them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.resources import Resource
from tests.support.kube_api.store import Event, Store


@dataclass(frozen=True)
class Scope:
    """What one watch follows: a resource, in a namespace (or all), through its selectors."""

    resource: Resource
    namespace: str | None
    labels: Callable[[Mapping[str, str]], bool]
    fields: Callable[[dict[str, Any]], bool]

    def selects(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        return self.labels(obj["metadata"].get("labels") or {}) and self.fields(obj)


def watch_lines(
    store: Store,
    scope: Scope,
    initial: list[dict[str, Any]],
    start: int,
    *,
    seconds: int,
    bookmarks: bool,
) -> Iterator[bytes]:
    """ADDED for `initial`, then every change after `start` in `scope`, until `seconds` pass or
    the store ends watches; an expired `start` is one ERROR event carrying a 410 `Status`."""
    deadline = time.monotonic() + seconds
    epoch = store.watch_epoch
    for obj in initial:
        yield _line("ADDED", obj)
    cursor = start
    try:
        for event in store.events_after(cursor, deadline, epoch):
            cursor = event.rv
            kind = _event_type(event, scope)
            if kind is not None:
                yield _line(kind, event.obj)
    except ApiError as exc:
        yield _line("ERROR", exc.status())
        return
    if bookmarks:
        rv = max(cursor, store.resource_version)
        yield _line(
            "BOOKMARK",
            {
                "kind": scope.resource.kind,
                "apiVersion": scope.resource.api_version,
                "metadata": {"resourceVersion": str(rv)},
            },
        )


def _event_type(event: Event, scope: Scope) -> str | None:
    """The type a selecting watch sees: an object moving into or out of the set is ADDED or
    DELETED, as the API server's watch cache reports it."""
    if event.resource.key != scope.resource.key:
        return None
    if scope.namespace is not None and event.namespace != scope.namespace:
        return None
    if event.type == "DELETED":
        return "DELETED" if scope.selects(event.obj) else None
    now = scope.selects(event.obj)
    if event.type == "ADDED":
        return "ADDED" if now else None
    was = scope.selects(event.before)
    if now:
        return "MODIFIED" if was else "ADDED"
    return "DELETED" if was else None


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"
