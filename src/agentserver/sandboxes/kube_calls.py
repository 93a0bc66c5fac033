"""The Kubernetes API calls of the kubernetes backend: all blocking, run in worker threads.

Discovery at start, the workspace's namespace, policy and disk, each sandbox's Secret and
`Sandbox`, deletes and logs. `API_CALLS` lists every (group, resource, verb) made here and by
the watch (kube_watch.py), which is what the Helm chart's RBAC must grant.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client as k8s
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from agentserver.errors import ConfigError
from agentserver.sandboxes import kube_objects as ko
from agentserver.sandboxes.base import SandboxSpec
from agentserver.sandboxes.kube_objects import GROUP, PLURAL, VERSION, Obj
from agentserver.settings import Settings

T = TypeVar("T")

MERGE_PATCH = "application/merge-patch+json"
# A delete's answer is the object or a Status, depending on the resource and server: we need
# neither, so the client does not parse it.
NO_BODY: dict[str, Any] = {"_preload_content": False}
REQUEST_TIMEOUT = (10, 30)  # seconds to connect, and to wait for an answer
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# Every (API group, resource, verb) this backend calls: the Helm chart's RBAC grants exactly
# these, and an integration test checks the API server saw nothing else. ("" is the core group.)
# Discovery (GET /apis) is a non-resource URL every authenticated client may read.
API_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        (GROUP, PLURAL, "create"),
        (GROUP, PLURAL, "list"),
        (GROUP, PLURAL, "watch"),
        (GROUP, PLURAL, "patch"),
        (GROUP, PLURAL, "delete"),
        ("", "namespaces", "create"),
        ("", "namespaces", "get"),
        ("", "namespaces", "delete"),
        ("", "secrets", "create"),
        ("", "secrets", "update"),
        ("", "secrets", "patch"),
        ("", "secrets", "delete"),
        ("", "persistentvolumeclaims", "create"),
        ("", "persistentvolumeclaims", "delete"),
        ("", "pods/log", "get"),
        ("networking.k8s.io", "networkpolicies", "create"),
        ("networking.k8s.io", "networkpolicies", "delete"),
    }
)


def status_message(exc: ApiException) -> str:
    """The message of the API's `Status` answer (or the HTTP reason)."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    return str(body.get("message") or exc.reason or exc.status)


def reason(exc: Exception, host: str) -> str:
    """A readable sentence for a failed API call (shown to users as the sandbox's reason)."""
    if isinstance(exc, ApiException):
        if exc.status == 422:
            return f"Kubernetes refused the object: {status_message(exc)}"
        return f"Kubernetes: {status_message(exc)} ({exc.status})"
    return f"Kubernetes API unreachable at {host}: {exc}"


def _ignore(status: int, fn: Callable[[], T]) -> T | None:
    """`fn()`, or None when the API answers `status` (404 gone, 409 exists)."""
    try:
        return fn()
    except ApiException as exc:
        if exc.status != status:
            raise
        return None


def load_configuration() -> k8s.Configuration:
    """In-cluster config inside a pod, else KUBECONFIG (or ~/.kube/config)."""
    configuration = k8s.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            kubernetes.config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
            )  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        raise ConfigError(
            f"--backend kubernetes: no cluster configuration (in-cluster or KUBECONFIG): {exc}"
        ) from None
    return configuration


def check_api(api: k8s.ApiClient) -> None:
    """Discovery: the cluster answers and serves agent-sandbox's v1beta1 (ConfigError if not)."""
    host = api.configuration.host
    try:
        groups = k8s.ApisApi(api).get_api_versions(_request_timeout=10)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ConfigError(f"--backend kubernetes: {reason(exc, host)}") from None
    versions = {v.version for g in groups.groups or [] if g.name == GROUP for v in g.versions}
    if not versions:
        raise ConfigError(
            f"--backend kubernetes: the agent-sandbox CRDs are not installed at {host} "
            f"(no {GROUP} API group); install agent-sandbox v1.0 or later"
        )
    if VERSION not in versions:
        raise ConfigError(
            f"--backend kubernetes: {host} serves only {GROUP}/{', '.join(sorted(versions))}"
            f" (agent-sandbox before v1.0); agentserver needs {GROUP}/{VERSION}: upgrade"
            " agent-sandbox to v1.0 or later"
        )


def server_namespace(settings: Settings) -> str:
    if settings.kube_server_namespace:
        return settings.kube_server_namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class _Timed:
    """An API group's methods, each with our request timeout (the client's default is none:
    a hung API server would hold a worker thread, and a sandbox's operation, for ever)."""

    def __init__(self, api: object) -> None:
        self._api = api

    def __getattr__(self, name: str) -> Any:
        return partial(getattr(self._api, name), _request_timeout=REQUEST_TIMEOUT)


class ClusterCalls:
    """The backend's calls to the API server (blocking: call them from worker threads)."""

    def __init__(self, api: k8s.ApiClient, settings: Settings) -> None:
        self._settings = settings
        # Typed as Any: the client takes our plain dict bodies (kube_objects.py) as they are.
        self._core: Any = _Timed(k8s.CoreV1Api(api))
        self._custom: Any = _Timed(k8s.CustomObjectsApi(api))
        self._net: Any = _Timed(k8s.NetworkingV1Api(api))
        self._server_namespace = server_namespace(settings)

    def _namespace(self, workspace_id: str) -> str:
        return ko.namespace_for(workspace_id, self._settings)

    def prepare_workspace(self, workspace_id: str) -> None:
        """The workspace's namespace (unless one is configured), our policy in it, its disk."""
        namespace = self._namespace(workspace_id)
        if not self._settings.kube_namespace:
            body = ko.namespace_object(workspace_id, self._settings)
            _ignore(409, lambda: self._core.create_namespace(body))
        policy = ko.network_policy(self._settings, self._server_namespace)
        _ignore(409, lambda: self._net.create_namespaced_network_policy(namespace, policy))
        disk = ko.disk_object(workspace_id, self._settings)
        _ignore(409, lambda: self._core.create_namespaced_persistent_volume_claim(namespace, disk))

    def put_secret(self, spec: SandboxSpec) -> None:
        namespace = self._namespace(spec.workspace_id)
        body = ko.secret_object(spec, self._settings)
        name = body["metadata"]["name"]
        if _ignore(409, lambda: self._core.create_namespaced_secret(namespace, body)) is None:
            self._core.replace_namespaced_secret(name, namespace, body)

    def put_sandbox(self, spec: SandboxSpec, now: datetime) -> Obj:
        """Create the Sandbox, or run the one that exists (with the Secret as it is now)."""
        namespace = self._namespace(spec.workspace_id)
        body = ko.sandbox_object(spec, self._settings, now)
        created = _ignore(
            409,
            lambda: self._custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body
            ),
        )
        if created is not None:
            self.own_secret(namespace, spec.id, created)
            return dict(created)
        patch = ko.running_patch(spec.idle_timeout, now)
        return dict(
            self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                body["metadata"]["name"],
                patch,
                _content_type=MERGE_PATCH,
            )
        )

    def own_secret(self, namespace: str, sandbox_id: str, sandbox: Obj) -> None:
        """The Secret belongs to its Sandbox: the cluster deletes it with the Sandbox."""
        owner = {
            "apiVersion": ko.API_VERSION,
            "kind": "Sandbox",
            "name": sandbox["metadata"]["name"],
            "uid": sandbox["metadata"]["uid"],
        }
        patch = {"metadata": {"ownerReferences": [owner]}}
        _ignore(
            404,
            lambda: self._core.patch_namespaced_secret(
                ko.secret_name(sandbox_id), namespace, patch
            ),
        )

    def patch_sandbox(self, namespace: str, name: str, patch: Obj) -> Obj | None:
        found = _ignore(
            404,
            lambda: self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=MERGE_PATCH
            ),
        )
        return None if found is None else dict(found)

    def delete_sandbox(self, namespace: str, name: str, sandbox_id: str) -> None:
        _ignore(
            404,
            lambda: self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            ),
        )
        secret = ko.secret_name(sandbox_id)
        _ignore(
            404, lambda: _drained(self._core.delete_namespaced_secret(secret, namespace, **NO_BODY))
        )

    def delete_workspace(self, workspace_id: str) -> None:
        namespace = self._namespace(workspace_id)
        claim = ko.disk_claim(workspace_id, self._settings)
        _ignore(
            404,
            lambda: _drained(
                self._core.delete_namespaced_persistent_volume_claim(claim, namespace, **NO_BODY)
            ),
        )
        if self._settings.kube_namespace:
            return
        found = _ignore(404, lambda: self._core.read_namespace(namespace))
        labels = (found.metadata.labels or {}) if found is not None else {}
        if labels.get(ko.LABEL_MANAGED) == ko.MANAGED_BY:
            _ignore(404, lambda: _drained(self._core.delete_namespace(namespace, **NO_BODY)))
        elif found is not None:
            _ignore(
                404,
                lambda: _drained(
                    self._net.delete_namespaced_network_policy(ko.POLICY, namespace, **NO_BODY)
                ),
            )

    def logs(self, namespace: str, obj: Obj, lines: int) -> str:
        try:
            text = self._core.read_namespaced_pod_log(
                obj["metadata"]["name"], namespace, container="agent", tail_lines=lines
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # no pod now (suspended), or not started yet
                return ""
            raise
        return str(text or "")


def _drained(response: Any) -> None:
    """Read a raw answer to its end, so its connection goes back to the pool."""
    response.read()


def sandbox_lister(api: k8s.ApiClient, settings: Settings) -> Callable[..., Any]:
    """The list call for our Sandbox objects (in the one namespace, or in all)."""
    custom = k8s.CustomObjectsApi(api)
    if settings.kube_namespace:
        return partial(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            settings.kube_namespace,
            PLURAL,
            label_selector=ko.OURS,
        )
    return partial(
        custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, label_selector=ko.OURS
    )
