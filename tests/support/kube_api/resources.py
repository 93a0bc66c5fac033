"""The resources the stand-in serves and the discovery documents that announce them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

AGENTS_GROUP = "agents.x-k8s.io"
ServedVersion = Literal["v1beta1", "v1alpha1", "none"]

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    """One REST resource: where it lives and what its objects are called."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """`sandboxes.agents.x-k8s.io`, `pods` (how RBAC and messages name it)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def is_custom(self) -> bool:
        return self.group == AGENTS_GROUP

    def singular(self) -> str:
        return self.kind.lower()


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",))
SECRETS = Resource("", "v1", "secrets", "Secret", namespaced=True)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True, short_names=("cm",))
PVCS = Resource(
    "",
    "v1",
    "persistentvolumeclaims",
    "PersistentVolumeClaim",
    namespaced=True,
    status_subresource=True,
    short_names=("pvc",),
)
PODS = Resource("", "v1", "pods", "Pod", namespaced=True, status_subresource=True)
SERVICES = Resource(
    "", "v1", "services", "Service", True, status_subresource=True, short_names=("svc",)
)
NETWORK_POLICIES = Resource(
    "networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, short_names=("netpol",)
)
SANDBOXES = Resource(
    AGENTS_GROUP, "v1beta1", "sandboxes", "Sandbox", True, True, short_names=("sandbox",)
)

CORE = [NAMESPACES, SECRETS, CONFIGMAPS, PVCS, PODS, SERVICES]
RESOURCES = [*CORE, NETWORK_POLICIES, SANDBOXES]


def find(group: str, version: str, plural: str, served: ServedVersion) -> Resource | None:
    """The resource at `/apis/{group}/{version}/{plural}` (or `/api/v1/...` with group "")."""
    for resource in RESOURCES:
        if (resource.group, resource.plural) != (group, plural):
            continue
        if resource.is_custom:
            return resource if served == version == "v1beta1" else None
        return resource if resource.version == version else None
    return None


# --- discovery -------------------------------------------------------------------------------


def version_info() -> dict[str, Any]:
    return {
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group_versions(served: ServedVersion) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {"networking.k8s.io": ["v1"]}
    if served != "none":
        groups[AGENTS_GROUP] = [served]
    return groups


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def api_group_list(served: ServedVersion) -> dict[str, Any]:
    groups = [_group(name, versions) for name, versions in _group_versions(served).items()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(name: str, served: ServedVersion) -> dict[str, Any] | None:
    versions = _group_versions(served).get(name)
    return _group(name, versions) if versions else None


def _resource_entries(resource: Resource) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": resource.plural,
        "singularName": resource.singular(),
        "namespaced": resource.namespaced,
        "kind": resource.kind,
        "verbs": VERBS,
    }
    if resource.short_names:
        entry["shortNames"] = list(resource.short_names)
    entries = [entry]
    if resource.status_subresource:
        entries.append(
            {
                "name": f"{resource.plural}/status",
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
    if resource is PODS:
        entries.append(
            {
                "name": "pods/log",
                "singularName": "",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["get"],
            }
        )
    return entries


def api_resource_list(group: str, version: str, served: ServedVersion) -> dict[str, Any] | None:
    """`APIResourceList` for `/api/v1` or `/apis/{group}/{version}`; None if not served."""
    if group == AGENTS_GROUP:
        if served != version:
            return None
        # A v1alpha1-only cluster (agent-sandbox before v1.0) still lists sandboxes there.
        chosen = [SANDBOXES]
    else:
        chosen = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
        if not chosen:
            return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [entry for r in chosen for entry in _resource_entries(r)],
    }
