"""A sandbox as Kubernetes objects, built without API calls: names, labels, the agent-sandbox
`Sandbox`, its Secret, the workspace's namespace, disk and NetworkPolicy (pure: no I/O).

Secrets (the agent's own, the proxy token, the creator's variables, a repository URL that may
hold a token) live only in the sandbox's Secret, which the pod reads by `secretKeyRef`; the
`Sandbox` object holds none of them, and the real Anthropic key is in no object at all.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime, timedelta
from typing import Any

from agentserver.kinds import OPENCLAW, LlmAccess, kind_of
from agentserver.sandboxes.base import SandboxSpec
from agentserver.sandboxes.containers import (
    DISK,
    HOME,
    OPENCLAW_COMMAND,
    OPENCLAW_CONFIG_FILE,
    SECRETS_DIR,
    image_for,
)
from agentserver.sandboxes.setup import clone_environment, with_clone
from agentserver.settings import Settings

Obj = dict[str, Any]

GROUP, VERSION, PLURAL = "agents.x-k8s.io", "v1beta1", "sandboxes"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = "agentserver"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_SANDBOX = "agentserver.io/sandbox-id"
LABEL_WORKSPACE = "agentserver.io/workspace-id"
LABEL_TYPE = "agentserver.io/sandbox-type"
# The idle timeout a Sandbox's shutdownTime follows (seconds), kept on it for keep_alive.
ANNOTATION_IDLE = "agentserver.io/idle-timeout"
OURS = f"{LABEL_MANAGED}={MANAGED_BY}"

HOME_CLAIM = "home"  # the controller names the PVC `home-<sandbox name>`
DISK_VOLUME = "workspace-disk"
SECRET_VOLUME = "agentserver"  # noqa: S105 — a volume name
POLICY = "agentserver-sandboxes"
# The image's agent user (container/sandbox.Dockerfile): uid and gid 1000; fsGroup makes the
# volumes (home, workspace disk, which start root-owned) writable by it.
AGENT_UID = 1000
# shutdownTime is this much past the idle timeout: the idle watcher pauses first; the cluster
# stops the pod by itself only when no agentserver is left to do it.
SHUTDOWN_MARGIN = timedelta(minutes=10)
# Ready's reasons after which the sandbox will not become ready by itself.
TERMINAL_REASONS = frozenset({"InvalidConfiguration", "PodFailed", "SandboxExpired"})
TERMINAL_WORDS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff")
# Egress never reaches these: private ranges, shared address space, link-local (the cloud
# metadata address 169.254.169.254 among them), and their IPv6 counterparts.
PRIVATE_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
PRIVATE_V6 = ("fc00::/7", "fe80::/10")
# Environment variables with these names come from the Secret (the pod's `env` order matters
# for nothing else: ours are last, so a creator's variable cannot replace them).
SECRET_PREFIX = "env."  # noqa: S105 — a key prefix
PROBE_VARIABLE = "AGENTSERVER_PROBE_AUTHORIZATION"
# The readiness probe: the kind's request with the agent's credentials (kinds.py's rule: no
# 5xx, no 401/403). Node is in both images; the header comes from the Secret, not the object.
PROBE_SCRIPT = (
    "const [m, u, b, t] = process.argv.slice(1);"
    "const h = {authorization: process.env." + PROBE_VARIABLE + "};"
    "if (t) h['content-type'] = t;"
    "fetch(u, {method: m, headers: h, body: b || undefined})"
    ".then(r => process.exit(r.status < 500 && r.status !== 401 && r.status !== 403 ? 0 : 1),"
    " () => process.exit(1));"
)
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def dns_label(text: str, prefix: str, suffix: str = "") -> str:
    """`prefix` + `text` + `suffix` as a DNS-1035 label (a letter first, at most 63
    characters); a long or altered text keeps a hash of the original so two never meet."""
    clean = _NOT_DNS.sub("-", text.lower()).strip("-")
    name = f"{prefix}{clean}"
    if clean != text or len(name) + len(suffix) > 63:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        name = f"{name[: 63 - 9 - len(suffix)].rstrip('-')}-{digest}"
    return name + suffix


def sandbox_name(sandbox_id: str) -> str:
    return dns_label(sandbox_id, "sandbox-")


def secret_name(sandbox_id: str) -> str:
    return dns_label(sandbox_id, "sandbox-", "-env")


def namespace_for(workspace_id: str, settings: Settings) -> str:
    """The namespace of the workspace's sandboxes: the configured one, or its own."""
    if settings.kube_namespace:
        return settings.kube_namespace
    return dns_label(workspace_id, settings.kube_namespace_prefix.rstrip("-") + "-")


def disk_claim(workspace_id: str, settings: Settings) -> str:
    """The workspace disk's PVC (named per workspace where workspaces share a namespace)."""
    if settings.kube_namespace:
        return dns_label(workspace_id, "workspace-", "-disk")
    return "workspace-disk"


def labels_for(spec: SandboxSpec) -> dict[str, str]:
    return {
        LABEL_MANAGED: MANAGED_BY,
        LABEL_SANDBOX: spec.id,
        LABEL_WORKSPACE: spec.workspace_id,
        LABEL_TYPE: str(spec.type),
    }


def workspace_labels(workspace_id: str) -> dict[str, str]:
    return {LABEL_MANAGED: MANAGED_BY, LABEL_WORKSPACE: workspace_id}


def shutdown_time(spec_idle: float, now: datetime) -> str | None:
    """When the cluster stops the pod unless activity puts it off (None: never)."""
    if spec_idle <= 0:
        return None
    at = now + timedelta(seconds=spec_idle) + SHUTDOWN_MARGIN
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the sandbox's Secret -----------------------------------------------------------------------


def secret_values(spec: SandboxSpec, settings: Settings) -> dict[str, str]:
    """Every variable the agent reads that may be secret (name → value), and OpenClaw's config
    file: the Secret's `stringData`. Creator's variables first; ours replace theirs."""
    kind = kind_of(spec.type)
    real = {s for s in (settings.anthropic_api_key, settings.anthropic_auth_token) if s}
    env = {k: v for k, v in spec.env.items() if v not in real}
    env.update(clone_environment(spec.git_url, spec.git_ref))
    env.update(kind.environment(spec.agent_secret, LlmAccess(spec.llm_base_url, spec.proxy_token)))
    env[PROBE_VARIABLE] = kind.credentials.header(spec.agent_secret)
    data = {SECRET_PREFIX + name: value for name, value in env.items()}
    if kind.config is not None:
        data[kind.name + ".json"] = kind.config(LlmAccess(spec.llm_base_url, spec.proxy_token))
    return data


def secret_object(spec: SandboxSpec, settings: Settings) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(spec.id), "labels": labels_for(spec)},
        "type": "Opaque",
        "data": {
            key: base64.b64encode(value.encode()).decode()
            for key, value in secret_values(spec, settings).items()
        },
    }


# -- the Sandbox ----------------------------------------------------------------------------------


def _command(spec: SandboxSpec) -> list[str]:
    kind = kind_of(spec.type)
    argv = OPENCLAW_COMMAND if kind is OPENCLAW else ["opencode", *kind.arguments("all", kind.port)]
    return with_clone(argv, {}, spec.git_url, spec.git_ref)[0]


def _env(spec: SandboxSpec, settings: Settings) -> list[Obj]:
    """The pod's variables: fixed ones inline, the rest by reference into the Secret."""
    secret = secret_name(spec.id)
    fixed = {"HOME": HOME, "TERM": "xterm-256color", "AGENTSERVER_DISK": DISK}
    env: list[Obj] = []
    for key in sorted(secret_values(spec, settings)):
        if key.startswith(SECRET_PREFIX) and key[len(SECRET_PREFIX) :] not in fixed:
            ref = {"secretKeyRef": {"name": secret, "key": key}}
            env.append({"name": key[len(SECRET_PREFIX) :], "valueFrom": ref})
    env.extend({"name": name, "value": value} for name, value in fixed.items())
    return env


def _resources(settings: Settings) -> Obj:
    limits: dict[str, str] = {}
    if settings.agent_nano_cpus > 0:
        limits["cpu"] = f"{max(1, settings.agent_nano_cpus // 1_000_000)}m"
    if settings.agent_memory_limit > 0:
        limits["memory"] = str(settings.agent_memory_limit)
    requests = {"cpu": settings.kube_cpu_request, "memory": settings.kube_memory_request}
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def _probe(spec: SandboxSpec) -> Obj:
    kind = kind_of(spec.type)
    ready = kind.readiness
    url = f"http://127.0.0.1:{kind.port}{ready.path}"
    argv = ["node", "-e", PROBE_SCRIPT, ready.method, url, ready.body.decode()]
    return {
        "exec": {"command": [*argv, ready.content_type or ""]},
        "periodSeconds": 2,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def _container(spec: SandboxSpec, settings: Settings) -> Obj:
    kind = kind_of(spec.type)
    mounts: list[Obj] = [
        {"name": HOME_CLAIM, "mountPath": HOME},
        {"name": DISK_VOLUME, "mountPath": DISK},
    ]
    if kind.config is not None:
        mounts.append({"name": SECRET_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True})
    container: Obj = {
        "name": "agent",
        "image": image_for(spec, settings),
        "command": _command(spec),
        "env": _env(spec, settings),
        "ports": [{"name": "agent", "containerPort": kind.port, "protocol": "TCP"}],
        "readinessProbe": _probe(spec),
        "resources": _resources(settings),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_UID,
        },
    }
    if kind is not OPENCLAW:
        container["workingDir"] = DISK  # opencode's project is the folder it starts in
    return container


def _volumes(spec: SandboxSpec, settings: Settings) -> list[Obj]:
    claim = {"claimName": disk_claim(spec.workspace_id, settings)}
    volumes: list[Obj] = [{"name": DISK_VOLUME, "persistentVolumeClaim": claim}]
    kind = kind_of(spec.type)
    if kind.config is not None:
        item = {"key": kind.name + ".json", "path": OPENCLAW_CONFIG_FILE.rsplit("/", 1)[1]}
        volumes.append(
            {
                "name": SECRET_VOLUME,
                "secret": {"secretName": secret_name(spec.id), "items": [item]},
            }
        )
    return volumes


def pod_spec(spec: SandboxSpec, settings: Settings) -> Obj:
    pod: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Always",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_UID,
            "fsGroup": AGENT_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec, settings)],
        "volumes": _volumes(spec, settings),
    }
    if settings.runtime_class:
        pod["runtimeClassName"] = settings.runtime_class
    return pod


def sandbox_object(spec: SandboxSpec, settings: Settings, now: datetime) -> Obj:
    """The agent-sandbox `Sandbox` for `spec`, Running, with its home as a claim template."""
    labels = labels_for(spec)
    body: Obj = {
        "apiVersion": API_VERSION,
        "kind": "Sandbox",
        "metadata": {
            "name": sandbox_name(spec.id),
            "labels": labels,
            "annotations": {ANNOTATION_IDLE: f"{spec.idle_timeout:g}"},
        },
        "spec": {
            "operatingMode": "Running",
            "service": True,
            "shutdownPolicy": "Retain",
            "podTemplate": {"metadata": {"labels": labels}, "spec": pod_spec(spec, settings)},
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": HOME_CLAIM, "labels": labels},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": settings.home_size}},
                    },
                }
            ],
        },
    }
    at = shutdown_time(spec.idle_timeout, now)
    if at is not None:
        body["spec"]["shutdownTime"] = at
    return body


def running_patch(spec_idle: float, now: datetime) -> Obj:
    """The merge patch that runs a sandbox again, with its shutdown time put off (and the idle
    timeout it follows, which its workspace may have changed; none: no shutdown time)."""
    return {
        "metadata": {"annotations": {ANNOTATION_IDLE: f"{spec_idle:g}"}},
        "spec": {"operatingMode": "Running", "shutdownTime": shutdown_time(spec_idle, now)},
    }


SUSPEND_PATCH: Obj = {"spec": {"operatingMode": "Suspended"}}


# -- the workspace ------------------------------------------------------------------------------


def namespace_object(workspace_id: str, settings: Settings) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace_for(workspace_id, settings),
            "labels": workspace_labels(workspace_id),
        },
    }


def disk_object(workspace_id: str, settings: Settings) -> Obj:
    """The workspace's shared disk: one ReadWriteMany claim every sandbox of it mounts."""
    spec: Obj = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": settings.workspace_disk_size}},
    }
    if settings.workspace_storage_class:
        spec["storageClassName"] = settings.workspace_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": disk_claim(workspace_id, settings),
            "labels": workspace_labels(workspace_id),
        },
        "spec": spec,
    }


def network_policy(settings: Settings, server_namespace: str) -> Obj:
    """Our policy for every sandbox pod of a namespace: in only from agentserver's pods; out to
    DNS, to agentserver (the LLM proxy) and to the internet, never to private ranges."""
    server = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": server_namespace}},
        "podSelector": {"matchLabels": dict(settings.kube_server_labels)},
    }
    dns = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    internet = {
        "to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_V4)}},
            {"ipBlock": {"cidr": "::/0", "except": list(PRIVATE_V6)}},
        ]
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": POLICY, "labels": {LABEL_MANAGED: MANAGED_BY}},
        "spec": {
            "podSelector": {"matchLabels": {LABEL_MANAGED: MANAGED_BY}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [server]}],
            "egress": [dns, {"to": [server]}, internet],
        },
    }


# -- reading a Sandbox's status -------------------------------------------------------------------


def ready_condition(obj: Obj) -> Obj | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return dict(condition)
    return None


def pod_ip(obj: Obj) -> str | None:
    """The pod's address once the sandbox is Ready (for this generation of its spec)."""
    ready = ready_condition(obj)
    if ready is None or ready.get("status") != "True":
        return None
    seen = ready.get("observedGeneration")
    if seen is not None and seen < (obj.get("metadata") or {}).get("generation", 0):
        return None  # from before our latest change
    for entry in (obj.get("status") or {}).get("podIPs") or []:
        address = entry.get("ip") if isinstance(entry, dict) else entry
        if address:
            return str(address)
    return None


def suspended(obj: Obj) -> bool:
    """Suspended with its pod gone (no address left)."""
    mode = (obj.get("spec") or {}).get("operatingMode", "Running")
    return mode == "Suspended" and not (obj.get("status") or {}).get("podIPs")


def failure(obj: Obj) -> str | None:
    """Why the sandbox will not become ready by itself, as users read it; None if it may."""
    ready = ready_condition(obj)
    if ready is None or ready.get("status") == "True":
        return None
    reason, message = str(ready.get("reason") or ""), str(ready.get("message") or "")
    if reason in TERMINAL_REASONS or any(word in message for word in TERMINAL_WORDS):
        return f"{reason}: {message}" if message else reason
    return None


def not_ready_text(obj: Obj | None) -> str:
    """What the Ready condition says now (for a timeout's reason)."""
    ready = None if obj is None else ready_condition(obj)
    if ready is None:
        return "no Ready condition yet"
    text = f"Ready {ready.get('status')}"
    if ready.get("reason"):
        text += f" ({ready['reason']}"
        text += f": {ready['message']})" if ready.get("message") else ")"
    return text
