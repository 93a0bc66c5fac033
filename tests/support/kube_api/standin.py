"""`KubeApi`: the running stand-in (HTTP server, store, controller) and the hooks tests use."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.kube_api import resources
from tests.support.kube_api.admission import fill_server_fields
from tests.support.kube_api.controller import Controller, Faults
from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.http import ApiHttpServer
from tests.support.kube_api.kubelet import Agent
from tests.support.kube_api.resources import NAMESPACES, RESOURCES, Resource
from tests.support.kube_api.rest import ApiCall, Rest
from tests.support.kube_api.store import Store


def resource_named(name: str) -> Resource:
    """A resource by plural, kind or short name: `sandboxes`, `Sandbox`, `pvc`."""
    for resource in RESOURCES:
        if name in (resource.plural, resource.kind, resource.key, *resource.short_names):
            return resource
    raise KeyError(name)


class KubeApi:
    """The stand-in API server; read state through it, inject faults, cut watches."""

    def __init__(
        self, root: Path, *, served: resources.ServedVersion, opencode_bin: str | None
    ) -> None:
        self.root = root
        self.token = secrets.token_urlsafe(16)
        self.store = Store()
        self.rest = Rest(self.store, self.token, served)
        self.http = ApiHttpServer(self.rest)
        self.controller = Controller(self.store, root, opencode_bin)
        self.rest.pod_output = self._pod_output
        self.url = f"http://127.0.0.1:{self.http.port}"
        self.kubeconfig_path = root / "kubeconfig"
        self._write_kubeconfig()
        self._running = False
        for name in ("default", "kube-system"):
            self.create_object(
                NAMESPACES,
                "",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": "default"},
                }
            ],
            "current-context": "standin",
        }
        self.kubeconfig_path.write_text(json.dumps(config, indent=2))  # YAML is a JSON superset

    def _pod_output(self, namespace: str, name: str) -> list[str] | None:
        output = self.controller.outputs.get((namespace, name))
        return list(output) if output is not None else None

    # --- lifetime ----------------------------------------------------------------------------

    def start(self) -> None:
        self.controller.start()
        self.http.start()
        self._running = True

    def stop(self) -> None:
        """Close the server (the cluster becomes unreachable); the controller's agents stop."""
        if not self._running:
            return
        self._running = False
        self.store.close()
        self.http.close()
        self.controller.close()

    def disconnect(self) -> None:
        """An API outage: stop listening and drop every connection (watches end, calls are
        refused); the objects, the controller and the agents stay."""
        self.store.end_watches()
        self.http.close()

    def reconnect(self) -> None:
        """The API comes back on the same address (after `disconnect()`)."""
        self.http = ApiHttpServer(self.rest, self.http.port)
        self.http.start()

    # --- reading state -----------------------------------------------------------------------

    def objects(
        self, kind: str, namespace: str | None = None, *, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Stored objects of a kind (`"sandboxes"`, `"Pod"`, `"pvc"`…), in one namespace or all."""
        items, _ = self.store.list(resource_named(kind), namespace)
        wanted = labels or {}
        return [
            o
            for o in items
            if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        resource = resource_named(kind)
        return self.store.find(resource, namespace if resource.namespaced else "", name)

    def create_object(self, kind: str | Resource, namespace: str, body: dict[str, Any]) -> Any:
        """Put an object in as an admin would (no validation), e.g. a pre-existing Secret."""
        resource = kind if isinstance(kind, Resource) else resource_named(kind)
        fill_server_fields(resource, body)
        return self.store.create(resource, namespace if resource.namespaced else "", body)

    @property
    def requests(self) -> list[ApiCall]:
        """Every request so far, in order (method, path, verb, group, resource, ...)."""
        return list(self.rest.calls)

    def verbs(self) -> set[tuple[str, str, str]]:
        """`(group, resource[/subresource], verb)` of every request: what RBAC must allow."""
        return {
            (c.group, f"{c.resource}/{c.subresource}" if c.subresource else c.resource, c.verb)
            for c in self.rest.calls
            if c.resource
        }

    def agent(self, namespace: str, name: str) -> Agent | None:
        """The running agent of a sandbox: `.ip`, `.port`, `.url`, `.cwd`, `.home`, `.mounts`."""
        return self.controller.agents.get((namespace, name))

    def volume_dir(self, namespace: str, claim: str) -> Path:
        """The host directory that holds a PVC's data."""
        return self.controller.volume_dir(namespace, claim)

    # --- hooks -------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """`.image_pull_failures` (image names), `.stuck_not_ready` (`"ns/name"` of sandboxes)."""
        return self.controller.faults

    def end_watches(self) -> None:
        """End every open watch stream now (the client must re-watch from its last version)."""
        self.store.end_watches()

    def compact(self) -> int:
        """Forget the change history: watching from any older resourceVersion answers 410."""
        return self.store.compact()

    @contextmanager
    def missed_by_watches(self) -> Iterator[None]:
        """Changes made in the block never reach open watches as events: the history that
        holds them is compacted before any watch can send it, so watches get 410 and a client
        sees the changes only by relisting."""
        with self.store.locked():
            yield
            self.store.compact()

    def refuse(self, verb: str, resource: str, code: int = 403, reason: str = "Forbidden") -> None:
        """Answer every `verb` on `resource` ("namespaces", "sandboxes", "pods/log") with an
        error, by default RBAC's 403 as a service account without that permission gets it."""
        group = resource_named(resource.split("/")[0]).group
        message = (
            f'{resource} is forbidden: User "system:serviceaccount:agentserver:agentserver" '
            f'cannot {verb} resource "{resource}" in API group "{group}"'
        )
        self.rest.refusals[(verb, resource)] = ApiError(
            code, reason, message, {"group": group, "kind": resource}
        )

    def fail_pod(self, namespace: str, name: str) -> None:
        """Crash a sandbox's agent: its Pod goes Failed, the Sandbox Ready=False `PodFailed`."""
        self.controller.fail_pod(namespace, name)

    def reconcile(self, namespace: str, name: str) -> None:
        """Ask the controller to look at a sandbox again (after changing `faults`)."""
        self.controller.enqueue((namespace, name))

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` configured from the kubeconfig (for tests)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig_path))


@contextmanager
def open_kube_api(
    root: Path,
    *,
    served: resources.ServedVersion = "v1beta1",
    opencode_bin: str | None = None,
    start: bool = True,
) -> Iterator[KubeApi]:
    """A running stand-in for the block's duration; its agents and threads gone afterwards.

    `served`: `"v1beta1"` (agent-sandbox v1.0), `"v1alpha1"` (older), `"none"` (no CRDs).
    `start=False`: nothing listens on the kubeconfig's address (an unreachable cluster).
    """
    root.mkdir(parents=True, exist_ok=True)
    api = KubeApi(root, served=served, opencode_bin=opencode_bin)
    if start:
        api.start()
    try:
        yield api
    finally:
        if api._running:
            api.stop()
        else:
            api.http.server_close()
        if api.controller.failures:
            raise AssertionError(f"the stand-in's controller failed: {api.controller.failures!r}")
        if api.rest.internal_errors:
            raise AssertionError(
                "the stand-in answered 500:\n" + "\n".join(api.rest.internal_errors)
            )
