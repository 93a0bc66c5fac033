"""The REST layer: a request (method, path, query, body) → a reply, verbs as RBAC names them."""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.kube_api import errors, resources, validation
from tests.support.kube_api.admission import fill_server_fields, fold_string_data
from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.patches import apply_patch
from tests.support.kube_api.resources import NAMESPACES, PODS, SECRETS, Resource
from tests.support.kube_api.selectors import field_selector, label_selector
from tests.support.kube_api.store import Store, parse_resource_version
from tests.support.kube_api.watches import Scope, watch_lines

DEFAULT_WATCH_SECONDS = 1800


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes
    authorization: str
    warnings: list[str] = field(default_factory=list)  # `Warning` headers for the reply


@dataclass
class Reply:
    status: int
    body: dict[str, Any] | None = None
    stream: Iterator[bytes] | None = None
    text: str | None = None  # a plain-text answer (pods/log)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ApiCall:
    """One request as RBAC sees it: `verb` on `group`/`resource`[/`subresource`]."""

    method: str
    path: str
    verb: str  # get list watch create update patch delete deletecollection, or "discover"
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    content_type: str = ""
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """What a resource URL names."""

    resource: Resource
    namespace: str | None
    name: str
    subresource: str
    watch_prefix: bool


def _not_served(path: str) -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


class Rest:
    """Routes requests to the store; records every call; refuses a wrong bearer token."""

    def __init__(self, store: Store, token: str, served: resources.ServedVersion) -> None:
        self.store = store
        self.token = token
        self.served: resources.ServedVersion = served
        self.calls: list[ApiCall] = []
        self.internal_errors: list[str] = []
        # (verb, "group/resource[/sub]" as RBAC names it) → the error to answer instead.
        self.refusals: dict[tuple[str, str], ApiError] = {}
        # The output of a pod's agent (None: no process): set by the stand-in's controller.
        self.pod_output: Callable[[str, str], list[str] | None] = lambda namespace, name: None
        self._calls_lock = threading.Lock()

    def _record(self, request: Request, verb: str, target: Target | None, code: int) -> None:
        call = ApiCall(
            method=request.method,
            path=request.path,
            verb=verb,
            group=target.resource.group if target else "",
            resource=target.resource.plural if target else "",
            subresource=target.subresource if target else "",
            namespace=(target.namespace or "") if target else "",
            name=target.name if target else "",
            code=code,
            content_type=request.content_type,
            query=dict(request.query),
        )
        with self._calls_lock:
            self.calls.append(call)

    def handle(self, request: Request) -> Reply:
        target: Target | None = None
        verb = "discover"
        try:
            if request.authorization != f"Bearer {self.token}":
                raise errors.unauthorized()
            discovery = self._discovery(request.path)
            if discovery is not None:
                if request.method != "GET":
                    raise errors.method_not_allowed(request.method)
                reply = Reply(200, discovery)
            else:
                target = self._route(request.path)
                verb = _verb(request, target)
                self._refuse_if_told(verb, target)
                reply = self._dispatch(request, target, verb)
        except ApiError as exc:
            reply = Reply(exc.code, exc.status())
        except Exception as exc:  # a bug in the stand-in: answered as the server would, and kept
            self.internal_errors.append(traceback.format_exc())
            reply = Reply(500, ApiError(500, "InternalError", repr(exc)).status())
        reply.warnings = request.warnings
        self._record(request, verb, target, reply.status)
        return reply

    def _refuse_if_told(self, verb: str, target: Target) -> None:
        resource = target.resource.plural + (f"/{target.subresource}" if target.subresource else "")
        refusal = self.refusals.get((verb, resource))
        if refusal is not None:
            raise refusal

    # --- routing -----------------------------------------------------------------------------

    def _discovery(self, path: str) -> dict[str, Any] | None:
        parts = [p for p in path.split("/") if p]
        found: dict[str, Any] | None
        if parts == ["version"]:
            return resources.version_info()
        if parts == ["api"]:
            return resources.api_versions()
        if parts == ["api", "v1"]:
            return resources.api_resource_list("", "v1", self.served)
        if parts == ["apis"]:
            return resources.api_group_list(self.served)
        if len(parts) == 2 and parts[0] == "apis":
            found = resources.api_group(parts[1], self.served)
            if found is None:
                raise _not_served(path)
            return found
        if len(parts) == 3 and parts[0] == "apis":
            found = resources.api_resource_list(parts[1], parts[2], self.served)
            if found is None:
                raise _not_served(path)
            return found
        return None

    def _route(self, path: str) -> Target:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _not_served(path)
        watch_prefix = bool(rest) and rest[0] == "watch"
        if watch_prefix:
            rest = rest[1:]
        namespace: str | None = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _not_served(path)
        resource = resources.find(group, version, rest[0], self.served)
        if resource is None:
            raise _not_served(path)
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not (
            (sub == "status" and resource.status_subresource) or (sub == "log" and resource is PODS)
        ):
            raise _not_served(path)
        if namespace is not None and not resource.namespaced:
            raise _not_served(path)
        if resource.namespaced and namespace is None and name:
            raise _not_served(path)
        return Target(resource, namespace, name, sub, watch_prefix)

    def _dispatch(self, request: Request, target: Target, verb: str) -> Reply:
        if target.subresource == "log":
            if verb != "get":
                raise errors.method_not_allowed(request.method)
            return Reply(200, text=self._pod_log(request, target))
        if verb == "get":
            return Reply(200, self.store.get(target.resource, target.namespace or "", target.name))
        if verb == "list":
            return Reply(200, self._list(request, target))
        if verb == "watch":
            return Reply(200, stream=self._watch(request, target))
        if verb == "create":
            return Reply(201, self._create(request, target))
        if verb == "update":
            return Reply(200, self._update(request, target))
        if verb == "patch":
            return Reply(200, self._patch(request, target))
        if verb == "delete":
            return Reply(200, self._delete(request, target))
        if verb == "deletecollection":
            return Reply(200, self._delete_collection(request, target))
        raise errors.method_not_allowed(request.method)

    # --- verbs -------------------------------------------------------------------------------

    def _selected(self, request: Request, target: Target) -> tuple[list[dict[str, Any]], int]:
        labels = label_selector(request.query.get("labelSelector"))
        fields = field_selector(request.query.get("fieldSelector"))
        items, rv = self.store.list(target.resource, target.namespace)
        return [o for o in items if labels(o["metadata"].get("labels") or {}) and fields(o)], rv

    def _list(self, request: Request, target: Target) -> dict[str, Any]:
        items, rv = self._selected(request, target)
        if not target.resource.is_custom:
            # Built-in lists carry kind and apiVersion once, not per item (as the server does).
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return {
            "kind": f"{target.resource.kind}List",
            "apiVersion": target.resource.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }

    def _watch(self, request: Request, target: Target) -> Iterator[bytes]:
        query = request.query
        start = parse_resource_version(query.get("resourceVersion"))
        initial: list[dict[str, Any]] = []
        if not start:
            initial, start = self._selected(request, target)
        return watch_lines(
            self.store,
            Scope(
                target.resource,
                target.namespace,
                label_selector(query.get("labelSelector")),
                field_selector(query.get("fieldSelector")),
            ),
            initial,
            start,
            seconds=int(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS),
            bookmarks=query.get("allowWatchBookmarks") == "true",
        )

    def _pod_log(self, request: Request, target: Target) -> str:
        """A pod's output as `kubectl logs` gets it; 400 while its container is not running."""
        namespace = target.namespace or ""
        pod = self.store.get(PODS, namespace, target.name)
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = request.query.get("container") or names[0]
        if container not in names:
            raise errors.bad_request(f"container {container} is not valid for pod {target.name}")
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting")
        lines = self.pod_output(namespace, target.name)
        if waiting or lines is None:
            reason = (waiting or {}).get("reason", "ContainerCreating")
            raise errors.bad_request(
                f'container "{container}" in pod "{target.name}" is waiting to start: {reason}'
            )
        tail = request.query.get("tailLines")
        if tail:
            lines = lines[-int(tail) :] if int(tail) > 0 else []
        return "".join(f"{line}\n" for line in lines)

    def _body(self, request: Request) -> Any:
        try:
            return json.loads(request.body or b"null")
        except ValueError as exc:
            raise errors.bad_request(f"the body is not JSON: {exc}") from exc

    def _object_body(self, request: Request, target: Target) -> dict[str, Any]:
        body = self._body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a JSON object")
        resource = target.resource
        if body.get("apiVersion", resource.api_version) != resource.api_version:
            raise errors.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                f"expected API version ({resource.api_version})"
            )
        if body.get("kind", resource.kind) != resource.kind:
            raise errors.bad_request(
                f"the kind in the data ({body.get('kind')}) does not match the expected kind "
                f"({resource.kind})"
            )
        body.setdefault("apiVersion", resource.api_version)
        body.setdefault("kind", resource.kind)
        meta = body.setdefault("metadata", {})
        if target.namespace and meta.get("namespace", target.namespace) != target.namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        return body

    def _create(self, request: Request, target: Target) -> dict[str, Any]:
        if target.name:
            raise errors.method_not_allowed("POST")
        body = self._object_body(request, target)
        if not body["metadata"].get("name") and body["metadata"].get("generateName"):
            body["metadata"]["name"] = body["metadata"]["generateName"] + "x0000"
            generated = True
        else:
            generated = False
        body = validation.validate(
            target.resource,
            body,
            field_validation=request.query.get("fieldValidation"),
            warnings=request.warnings,
        )
        if generated:
            del body["metadata"]["name"]
        fill_server_fields(target.resource, body)
        return self.store.create(target.resource, target.namespace or "", body)

    def _checked(self, resource: Resource, request: Request) -> Any:
        def check(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
            validation.check_update(resource, old, new)
            new = validation.validate(
                resource,
                new,
                field_validation=request.query.get("fieldValidation"),
                warnings=request.warnings,
            )
            if resource is SECRETS:
                fold_string_data(new)
            return new

        return check

    def _update(self, request: Request, target: Target) -> dict[str, Any]:
        body = self._object_body(request, target)
        name = body["metadata"].get("name")
        if name != target.name:
            raise errors.bad_request(
                f"the name of the object ({name}) does not match the name on the URL "
                f"({target.name})"
            )
        if target.resource.is_custom and not body["metadata"].get("resourceVersion"):
            raise validation.reject(
                target.resource,
                target.name,
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update",
            )
        return self.store.replace(
            target.resource,
            target.namespace or "",
            target.name,
            body,
            status=target.subresource == "status",
            check=self._checked(target.resource, request),
        )

    def _patch(self, request: Request, target: Target) -> dict[str, Any]:
        patch = self._body(request)
        namespace = target.namespace or ""
        for attempt in range(10):
            current = self.store.get(target.resource, namespace, target.name)
            patched = apply_patch(request.content_type, current, patch)
            patched.setdefault("metadata", {})["name"] = target.name
            asked = patched["metadata"].get("resourceVersion")
            try:
                return self.store.replace(
                    target.resource,
                    namespace,
                    target.name,
                    patched,
                    status=target.subresource == "status",
                    check=self._checked(target.resource, request),
                )
            except ApiError as exc:
                # The server retries a patch that raced another write, unless it named a version.
                if exc.reason != "Conflict" or asked != current["metadata"]["resourceVersion"]:
                    raise
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def _delete(self, request: Request, target: Target) -> dict[str, Any]:
        options = self._body(request) or {}
        policy = request.query.get("propagationPolicy") or options.get("propagationPolicy")
        namespace = target.namespace or ""
        preconditions = options.get("preconditions") or {}
        if preconditions:
            current = self.store.get(target.resource, namespace, target.name)
            for key in ("uid", "resourceVersion"):
                if preconditions.get(key) and preconditions[key] != current["metadata"][key]:
                    raise ApiError(
                        409,
                        "Conflict",
                        f"Precondition failed: {key}: {preconditions[key]}, "
                        f"ObjectMeta.{key}: {current['metadata'][key]}",
                    )
        obj = self.store.delete(target.resource, namespace, target.name, orphan=policy == "Orphan")
        resource = target.resource
        if resource.is_custom or resource in (PODS, NAMESPACES):
            if resource is NAMESPACES:
                obj.setdefault("status", {})["phase"] = "Terminating"
            return obj
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": target.name,
                "group": resource.group,
                "kind": resource.plural,
                "uid": obj["metadata"]["uid"],
            },
        }

    def _delete_collection(self, request: Request, target: Target) -> dict[str, Any]:
        items, _ = self._selected(request, target)
        for item in items:
            meta = item["metadata"]
            try:
                self.store.delete(target.resource, meta.get("namespace", ""), meta["name"])
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return self._list(request, target) | {"items": items}


def _verb(request: Request, target: Target) -> str:
    method = request.method
    if method == "GET":
        if target.watch_prefix or request.query.get("watch") in ("true", "1"):
            return "watch"
        return "get" if target.name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if target.name else "deletecollection"
    raise errors.method_not_allowed(method)
