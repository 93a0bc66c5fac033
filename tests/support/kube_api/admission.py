"""What the API server (and the cluster's own controllers) fill in when an object is created."""

from __future__ import annotations

import base64
from typing import Any

from tests.support.kube_api.resources import NAMESPACES, PODS, PVCS, SECRETS, SERVICES, Resource


def fill_server_fields(resource: Resource, body: dict[str, Any]) -> None:
    """What the API server and its controllers fill in at once: a namespace is Active, a PVC is
    Bound (dynamic provisioning), a Service has a cluster IP, a new Pod is Pending."""
    if resource is SECRETS:
        fold_string_data(body)
        body.setdefault("type", "Opaque")
    elif resource is NAMESPACES:
        body.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        body["status"] = {"phase": "Active"}
    elif resource is PVCS:
        spec = body.setdefault("spec", {})
        spec.setdefault("volumeMode", "Filesystem")
        spec.setdefault("storageClassName", "standard")
        requested = (spec.get("resources") or {}).get("requests", {}).get("storage", "1Gi")
        body["status"] = {
            "phase": "Bound",
            "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
            "capacity": {"storage": requested},
        }
    elif resource is SERVICES:
        spec = body.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        if spec.get("clusterIP") != "None":
            spec["clusterIP"] = "10.96.0.10"
        spec["clusterIPs"] = [spec["clusterIP"]]
        body["status"] = {"loadBalancer": {}}
    elif resource is PODS:
        body["status"] = {"phase": "Pending"}
    elif resource.status_subresource:
        body.pop("status", None)


def fold_string_data(body: dict[str, Any]) -> None:
    """A Secret's stringData is write-only: the server merges it into data, base64-encoded."""
    if "stringData" in body:
        data = body.get("data") or {}
        for key, value in (body.pop("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        body["data"] = data
