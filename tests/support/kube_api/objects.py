"""Small builders of objects for tests of (and against) the stand-in."""

from __future__ import annotations

import base64
from typing import Any

from tests.support.kube_api.resources import SANDBOXES

AGENT_PORT = 4096


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}},
    }


def secret(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def pvc(name: str, size: str = "1Gi", mode: str = "ReadWriteMany") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": size}}},
    }


def agent_sandbox(
    name: str,
    *,
    env_from: str = "agent",
    image: str = "agent:test",
    workspace_claim: str | None = None,
    home_size: str | None = "1Gi",
    probe: bool = True,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A Sandbox whose agent is opencode on AGENT_PORT, its password from the `password` key
    of the Secret `env_from`, its home on a `home` volume claim template, (optionally) a
    workspace PVC at /data/disk0, and a TCP readiness probe."""
    container: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "ports": [{"containerPort": AGENT_PORT, "name": "http"}],
        "env": [
            {"name": "HOME", "value": "/home/agent"},
            {
                "name": "OPENCODE_SERVER_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": env_from, "key": "password"}},
            },
        ],
        "volumeMounts": [],
    }
    volumes: list[dict[str, Any]] = []
    templates: list[dict[str, Any]] = []
    if home_size is not None:
        container["volumeMounts"].append({"name": "home", "mountPath": "/home/agent"})
        templates.append(
            {
                "metadata": {"name": "home"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": home_size}},
                },
            }
        )
    if workspace_claim is not None:
        container["volumeMounts"].append({"name": "disk", "mountPath": "/data/disk0"})
        volumes.append({"name": "disk", "persistentVolumeClaim": {"claimName": workspace_claim}})
    if probe:
        container["readinessProbe"] = {
            "tcpSocket": {"port": AGENT_PORT},
            "periodSeconds": 1,
        }
    body: dict[str, Any] = {
        "apiVersion": SANDBOXES.api_version,
        "kind": "Sandbox",
        "metadata": {"name": name, "labels": labels or {"app": "agent"}},
        "spec": {
            "podTemplate": {
                "metadata": {"labels": labels or {"app": "agent"}},
                "spec": {"containers": [container], "volumes": volumes},
            },
            "service": True,
        },
    }
    if templates:
        body["spec"]["volumeClaimTemplates"] = templates
    body["spec"].update(spec)
    return body
