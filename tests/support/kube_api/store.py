"""The stand-in's etcd: objects by resource, one resourceVersion counter, the watch history."""

from __future__ import annotations

import bisect
import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.support.kube_api import errors
from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.resources import NAMESPACES, RESOURCES, Resource

Key = tuple[str, str, str]  # (resource key, namespace or "", name)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    """One change, as a watch sends it; `before` lets a selector see objects leave its set."""

    rv: int
    resource: Resource
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    before: dict[str, Any] | None


Listener = Callable[[Event], None]


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """Thread-safe: every method takes the one lock; watchers wait on its condition."""

    def __init__(self, history_limit: int = 100_000) -> None:
        self._cond = threading.Condition()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._rv = 0
        self._history: list[Event] = []
        self._history_rvs: list[int] = []
        self._floor = 0  # the oldest resourceVersion a watch may start from
        self._history_limit = history_limit
        self._watch_epoch = 0
        self._closed = False
        self._listeners: list[Listener] = []

    # --- bookkeeping -------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def subscribe(self, listener: Listener) -> None:
        """`listener(event)` runs under the store's lock after each change: keep it to a put."""
        with self._cond:
            self._listeners.append(listener)

    def _record(
        self,
        resource: Resource,
        namespace: str,
        kind: str,
        obj: dict[str, Any],
        before: dict[str, Any] | None,
    ) -> None:
        event = Event(self._rv, resource, namespace, kind, copy.deepcopy(obj), before)
        self._history.append(event)
        self._history_rvs.append(event.rv)
        if len(self._history) > self._history_limit:
            dropped = self._history.pop(0)
            self._history_rvs.pop(0)
            self._floor = dropped.rv
        for listener in self._listeners:
            listener(event)
        self._cond.notify_all()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's (re-entrant) lock: no watch sends anything meanwhile."""
        with self._cond:
            yield

    def compact(self) -> int:
        """Forget all history: a watch from any older resourceVersion now gets 410 Expired."""
        with self._cond:
            self._history.clear()
            self._history_rvs.clear()
            self._floor = self._rv
            return self._rv

    def end_watches(self) -> None:
        """End every open watch stream now (as an API server restart or LB timeout does)."""
        with self._cond:
            self._watch_epoch += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def watch_epoch(self) -> int:
        with self._cond:
            return self._watch_epoch

    # --- reads -------------------------------------------------------------------------------

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        with self._cond:
            obj = self._objects.get((resource.key, namespace, name))
            if obj is None:
                raise errors.not_found(resource.plural, resource.group, name)
            return copy.deepcopy(obj)

    def find(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            obj = self._objects.get((resource.key, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: Resource, namespace: str | None) -> tuple[list[dict[str, Any]], int]:
        """Objects of `resource` (in `namespace`, or everywhere for None), sorted by ns/name."""
        with self._cond:
            items = [
                copy.deepcopy(obj)
                for (key, ns, _), obj in sorted(self._objects.items())
                if key == resource.key and (namespace is None or ns == namespace)
            ]
            return items, self._rv

    # --- writes ------------------------------------------------------------------------------

    def _namespace_must_exist(self, resource: Resource, namespace: str) -> None:
        if resource.namespaced and (NAMESPACES.key, "", namespace) not in self._objects:
            raise errors.not_found("namespaces", "", namespace)

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        with self._cond:
            self._namespace_must_exist(resource, namespace)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            name = str(meta.get("name") or "")
            key = (resource.key, namespace, name)
            if key in self._objects:
                raise errors.already_exists(resource.plural, resource.group, name)
            self._rv += 1
            if resource.namespaced:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = str(self._rv)
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            obj["apiVersion"] = resource.api_version
            obj["kind"] = resource.kind
            self._objects[key] = obj
            self._record(resource, namespace, "ADDED", obj, None)
            return copy.deepcopy(obj)

    def replace(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: dict[str, Any],
        *,
        status: bool = False,
        check: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """PUT (or the status subresource's PUT): optimistic concurrency on resourceVersion.

        `check(old, new)` returns the object to store (validation with defaults) or raises.
        """
        with self._cond:
            key = (resource.key, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise errors.not_found(resource.plural, resource.group, name)
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and str(wanted) != old["metadata"]["resourceVersion"]:
                raise errors.conflict(resource.plural, resource.group, name)
            if status:
                new = copy.deepcopy(old)
                new["status"] = copy.deepcopy(body.get("status"))
                if new["status"] is None:
                    del new["status"]
            else:
                new = copy.deepcopy(body)
                new.setdefault("metadata", {})
                if resource.status_subresource:
                    new.pop("status", None)
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
            if check is not None:
                new = check(old, new)
            meta = new["metadata"]
            for kept in ("uid", "creationTimestamp", "namespace", "generation"):
                if kept in old["metadata"]:
                    meta[kept] = old["metadata"][kept]
                else:
                    meta.pop(kept, None)
            meta["name"] = name
            new["apiVersion"] = resource.api_version
            new["kind"] = resource.kind
            if _spec_part(new) != _spec_part(old):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                # A no-op write: the server answers the object without a new resourceVersion.
                return copy.deepcopy(old)
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[key] = new
            self._record(resource, namespace, "MODIFIED", new, copy.deepcopy(old))
            return copy.deepcopy(new)

    def delete(
        self, resource: Resource, namespace: str, name: str, *, orphan: bool = False
    ) -> dict[str, Any]:
        """Delete one object and, unless `orphan`, what it owns (the garbage collector's work,
        done at once); a namespace takes everything in it along."""
        with self._cond:
            key = (resource.key, namespace, name)
            obj = self._objects.get(key)
            if obj is None:
                raise errors.not_found(resource.plural, resource.group, name)
            self._delete_locked(resource, key, orphan=orphan)
            return copy.deepcopy(obj)

    def _delete_locked(self, resource: Resource, key: Key, *, orphan: bool) -> None:
        obj = self._objects.pop(key, None)
        if obj is None:
            return
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._record(resource, key[1], "DELETED", obj, None)
        uid = obj["metadata"]["uid"]
        dependents = []
        for other_key, other in self._objects.items():
            if (resource is NAMESPACES and other_key[1] == key[2]) or (
                not orphan
                and any(
                    ref.get("uid") == uid for ref in other["metadata"].get("ownerReferences") or []
                )
            ):
                dependents.append(other_key)
        by_key = {r.key: r for r in RESOURCES}
        for other_key in dependents:
            self._delete_locked(by_key[other_key[0]], other_key, orphan=False)

    # --- watch -------------------------------------------------------------------------------

    def events_after(self, cursor: int, deadline: float, epoch: int) -> Iterator[Event]:
        """Events with resourceVersion > `cursor` as they happen, until `deadline` (monotonic),
        `end_watches()` or `close()`; 410 Expired if `cursor` is older than the history kept."""
        while True:
            with self._cond:
                while True:
                    if self._closed or self._watch_epoch != epoch:
                        return
                    if cursor < self._floor:
                        raise errors.expired(cursor, self._floor)
                    start = bisect.bisect_right(self._history_rvs, cursor)
                    batch = self._history[start:]
                    if batch:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._cond.wait(remaining)
            yield from batch
            cursor = batch[-1].rv

    def check_cursor(self, cursor: int) -> None:
        with self._cond:
            if cursor < self._floor:
                raise errors.expired(cursor, self._floor)


def parse_resource_version(text: str | None) -> int | None:
    """None for "" (most recent); an int otherwise; a non-number is 400 like the server's."""
    if not text:
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"invalid resource version {text!r}") from exc
