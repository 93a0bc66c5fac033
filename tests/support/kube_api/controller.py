"""The agent-sandbox controller's part: Sandbox → Pod, PVCs, Service, status; faults to inject."""

from __future__ import annotations

import copy
import hashlib
import heapq
import itertools
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.kube_api import kubelet, validation
from tests.support.kube_api.admission import fill_server_fields
from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.kubelet import Agent, ContainerConfigError
from tests.support.kube_api.resources import PODS, PVCS, SANDBOXES, SECRETS, SERVICES, Resource
from tests.support.kube_api.sandbox_status import PodState, sandbox_status
from tests.support.kube_api.store import Event, Store, now_rfc3339

NAME_HASH_LABEL = "agents.x-k8s.io/sandbox-name-hash"
CLUSTER_DOMAIN = "cluster.local"
NODE = "standin-node"

SandboxKey = tuple[str, str]


@dataclass
class Faults:
    """What tests make go wrong (by image name or by sandbox `namespace/name`)."""

    image_pull_failures: set[str] = field(default_factory=set)
    stuck_not_ready: set[str] = field(default_factory=set)


def name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _owner(sandbox: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": SANDBOXES.api_version,
        "kind": "Sandbox",
        "name": sandbox["metadata"]["name"],
        "uid": sandbox["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Controller:
    """One thread reconciles Sandboxes queued by store events, pod changes and deadlines."""

    def __init__(self, store: Store, root: Path, opencode_bin: str | None) -> None:
        self.store = store
        self.root = root
        self.opencode_bin = opencode_bin
        self.faults = Faults()
        self.agents: dict[SandboxKey, Agent] = {}
        self.pod_states: dict[SandboxKey, PodState] = {}
        self.failures: list[Exception] = []
        self.outputs: dict[SandboxKey, list[str]] = {}  # a pod's log, kept after its agent ends
        self._cond = threading.Condition()
        self._pending: set[SandboxKey] = set()
        self._timers: list[tuple[float, SandboxKey]] = []
        self._closed = False
        # A block of loopback addresses of its own: stand-ins of test runs side by side (and
        # their pods' fixed ports) never meet.
        block = secrets.randbelow(180) + 64
        self._ips = (f"127.{block}.{n // 250}.{n % 250 + 2}" for n in itertools.count())
        self._thread = threading.Thread(target=self._run, name="kube-api-controller")
        store.subscribe(self._on_event)

    # --- queueing ----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        meta = event.obj["metadata"]
        if event.resource is SANDBOXES:
            self.enqueue((event.namespace, meta["name"]))
        elif event.resource is SECRETS:
            # A pod waiting for a Secret starts once it exists.
            for key in list(self.pod_states):
                if key[0] == event.namespace:
                    self.enqueue(key)
        elif event.resource is PODS and event.type == "DELETED":
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "Sandbox":
                    self.enqueue((event.namespace, ref["name"]))

    def enqueue(self, key: SandboxKey, at: float | None = None) -> None:
        with self._cond:
            if at is None:
                self._pending.add(key)
            else:
                heapq.heappush(self._timers, (at, key))
            self._cond.notify_all()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        for agent in list(self.agents.values()):
            kubelet.stop(agent)
        self.agents.clear()

    def _next(self) -> SandboxKey | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.time()
                while self._timers and self._timers[0][0] <= now:
                    self._pending.add(heapq.heappop(self._timers)[1])
                if self._pending:
                    return self._pending.pop()
                timeout = self._timers[0][0] - now if self._timers else None
                self._cond.wait(timeout)

    def _run(self) -> None:
        while (key := self._next()) is not None:
            try:
                self.reconcile(*key)
            except ApiError as exc:
                if exc.code not in (404, 409):
                    self.failures.append(exc)
                    continue
                # Raced a client's write or delete: look again shortly, as controllers do.
                self.enqueue(key, at=time.time() + 0.05)
            except Exception as exc:  # a bug in the stand-in: the fixture reports it
                self.failures.append(exc)

    # --- reconcile ---------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        sandbox = self.store.find(SANDBOXES, namespace, name)
        agent = self.agents.get(key)
        if agent is not None and (sandbox is None or sandbox["metadata"]["uid"] != agent.uid):
            self._stop(key)
        if sandbox is None:
            self.pod_states.pop(key, None)
            self.outputs.pop(key, None)
            return
        spec = sandbox["spec"]
        self._ensure_pvcs(sandbox)
        if spec.get("service") is True:
            self._ensure_service(sandbox)
        else:
            self._drop_service(sandbox)
        expired = False
        if spec.get("shutdownTime"):
            at = datetime.fromisoformat(spec["shutdownTime"]).timestamp()
            expired = at <= time.time()
            if not expired:
                self.enqueue(key, at=at)
        if expired or spec.get("operatingMode") == "Suspended":
            self._stop(key)
            self._delete_pod(namespace, name)
            self.pod_states.pop(key, None)
            self._write_status(sandbox, None, expired=expired)
            if expired and spec.get("shutdownPolicy") == "Delete":
                self.store.delete(SANDBOXES, namespace, name)
            return
        state = self._run_pod(sandbox)
        self._write_status(sandbox, state, expired=False)

    def _ensure_pvcs(self, sandbox: dict[str, Any]) -> None:
        namespace, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        for template in sandbox["spec"].get("volumeClaimTemplates") or []:
            claim = f"{template['metadata']['name']}-{name}"
            if self.store.find(PVCS, namespace, claim) is not None:
                continue
            meta = copy.deepcopy(template.get("metadata") or {})
            meta.update(name=claim, namespace=namespace, ownerReferences=[_owner(sandbox)])
            body = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": meta,
                "spec": copy.deepcopy(template.get("spec") or {}),
            }
            self._create(PVCS, namespace, body)

    def _ensure_service(self, sandbox: dict[str, Any]) -> None:
        namespace, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        if self.store.find(SERVICES, namespace, name) is not None:
            return
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "ownerReferences": [_owner(sandbox)],
            },
            "spec": {"clusterIP": "None", "selector": {NAME_HASH_LABEL: name_hash(name)}},
        }
        self._create(SERVICES, namespace, body)

    def _drop_service(self, sandbox: dict[str, Any]) -> None:
        namespace, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        service = self.store.find(SERVICES, namespace, name)
        if service is not None and any(
            ref.get("uid") == sandbox["metadata"]["uid"]
            for ref in service["metadata"].get("ownerReferences") or []
        ):
            self.store.delete(SERVICES, namespace, name)

    def _create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> None:
        fill_server_fields(resource, body)
        try:
            self.store.create(resource, namespace, body)
        except ApiError as exc:
            if exc.code != 409:
                raise

    def volume_dir(self, namespace: str, claim: str) -> Path:
        """Where a PVC's data lives on this machine (made on first use)."""
        path = self.root / "volumes" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _mounts(self, sandbox: dict[str, Any], pod_spec: dict[str, Any]) -> dict[str, Path]:
        namespace, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        volumes: dict[str, Path] = {}
        for template in sandbox["spec"].get("volumeClaimTemplates") or []:
            tpl = template["metadata"]["name"]
            volumes[tpl] = self.volume_dir(namespace, f"{tpl}-{name}")
        for volume in pod_spec.get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                volumes[volume["name"]] = self.volume_dir(namespace, claim)
            elif volume["name"] not in volumes:
                path = self.root / "pods" / namespace / name / volume["name"]
                path.mkdir(parents=True, exist_ok=True)
                volumes[volume["name"]] = path
        container = pod_spec["containers"][0]
        return {
            m["mountPath"]: volumes[m["name"]]
            for m in container.get("volumeMounts") or []
            if m["name"] in volumes
        }

    def _pod_object(self, sandbox: dict[str, Any]) -> dict[str, Any]:
        template = sandbox["spec"]["podTemplate"]
        name = sandbox["metadata"]["name"]
        meta = copy.deepcopy(template.get("metadata") or {})
        labels = dict(meta.get("labels") or {})
        labels[NAME_HASH_LABEL] = name_hash(name)
        spec = copy.deepcopy(template["spec"])
        spec["nodeName"] = NODE
        volumes = spec.setdefault("volumes", [])
        for tpl in sandbox["spec"].get("volumeClaimTemplates") or []:
            claim = f"{tpl['metadata']['name']}-{name}"
            volumes.append(
                {"name": tpl["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}}
            )
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": sandbox["metadata"]["namespace"],
                "labels": labels,
                "annotations": meta.get("annotations") or {},
                "ownerReferences": [_owner(sandbox)],
            },
            "spec": spec,
        }

    def _run_pod(self, sandbox: dict[str, Any]) -> PodState:
        namespace, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        key = (namespace, name)
        pod = self.store.find(PODS, namespace, name)
        if pod is None and key in self.agents:
            self._stop(key)  # someone deleted the pod: its container goes, a new pod comes
            self.pod_states.pop(key, None)
            self.outputs.pop(key, None)
        if pod is None:
            body = self._pod_object(sandbox)
            fill_server_fields(PODS, body)
            pod = self.store.create(PODS, namespace, body)
        agent = self.agents.get(key)
        container = pod["spec"]["containers"][0]
        if agent is None:
            state = self.pod_states.get(key)
            if state is not None and state.phase == "Failed":
                return state
            if container.get("image") in self.faults.image_pull_failures:
                state = PodState.waiting(
                    "ErrImagePull",
                    f'Failed to pull image "{container["image"]}": not found',
                )
            else:
                try:
                    agent = self._start_agent(sandbox, pod)
                    state = PodState.running(agent.ip, ready=False)
                except ContainerConfigError as exc:
                    state = PodState.waiting("CreateContainerConfigError", str(exc))
        else:
            if agent.exited:
                message = f"exit code {agent.exit_code}: " + " | ".join(agent.output[-3:])
                state = PodState.failed(agent.ip, message)
                self._stop(key)
            else:
                stuck = f"{namespace}/{name}" in self.faults.stuck_not_ready
                state = PodState.running(agent.ip, ready=agent.ready and not stuck)
        self.pod_states[key] = state
        self._write_pod(pod, state)
        return state

    def _start_agent(self, sandbox: dict[str, Any], pod: dict[str, Any]) -> Agent:
        namespace, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        spec = pod["spec"]
        container = spec["containers"][0]
        env = kubelet.resolve_env(self.store, namespace, container, pod)
        if self.opencode_bin is None:
            raise ContainerConfigError("no opencode binary (set OPENCODE_BIN)")
        mounts = self._mounts(sandbox, spec)
        scratch = self.root / "pods" / namespace / name / "root"
        home = Path(kubelet.host_path(env.get("HOME", ""), mounts)) if env.get("HOME") else None
        if home is None or not home.is_absolute():
            claimed = [p for m, p in mounts.items() if m != "/data/disk0"]
            home = claimed[0] if claimed else scratch / "home"
        cwd = mounts.get("/data/disk0", home)
        env = {k: kubelet.host_path(v, mounts) for k, v in env.items()}
        env.update(
            HOME=str(home),
            PATH=os.environ.get("PATH", "/usr/bin:/bin"),
            LANG=os.environ.get("LANG", "C.UTF-8"),
        )
        ports = container.get("ports") or []
        port = int(ports[0]["containerPort"]) if ports else 4096
        ip = next(self._ips)
        argv = [self.opencode_bin, "serve", "--hostname", ip, "--port", str(port)]
        agent = Agent(
            namespace, name, sandbox["metadata"]["uid"], ip, port, cwd, home, mounts, env, argv
        )
        self.agents[(namespace, name)] = agent
        self.outputs[(namespace, name)] = agent.output
        kubelet.start(
            agent, lambda a: self.enqueue((a.namespace, a.name)), container.get("readinessProbe")
        )
        return agent

    def _stop(self, key: SandboxKey) -> None:
        agent = self.agents.pop(key, None)
        if agent is not None:
            kubelet.stop(agent)

    def _delete_pod(self, namespace: str, name: str) -> None:
        self.outputs.pop((namespace, name), None)
        try:
            self.store.delete(PODS, namespace, name)
        except ApiError as exc:
            if exc.code != 404:
                raise

    def _write_pod(self, pod: dict[str, Any], state: PodState) -> None:
        status = state.pod_status(pod, now_rfc3339())
        old = pod.get("status") or {}
        for cond in status.get("conditions", []):
            before = next((c for c in old.get("conditions", []) if c["type"] == cond["type"]), None)
            if before is not None and before["status"] == cond["status"]:
                cond["lastTransitionTime"] = before["lastTransitionTime"]
        if "startTime" in old:
            status["startTime"] = old["startTime"]
        if status != old:
            self.store.replace(
                PODS,
                pod["metadata"]["namespace"],
                pod["metadata"]["name"],
                pod | {"status": status},
                status=True,
            )

    def _write_status(
        self, sandbox: dict[str, Any], state: PodState | None, *, expired: bool
    ) -> None:
        meta = sandbox["metadata"]
        with_service = sandbox["spec"].get("service") is True
        status = sandbox_status(
            name=meta["name"],
            namespace=meta["namespace"],
            generation=int(meta.get("generation", 1)),
            pod=state,
            suspended=sandbox["spec"].get("operatingMode") == "Suspended",
            expired=expired,
            service=with_service
            and self.store.find(SERVICES, meta["namespace"], meta["name"]) is not None,
            service_wanted=with_service,
            selector=f"{NAME_HASH_LABEL}={name_hash(meta['name'])}",
            cluster_domain=CLUSTER_DOMAIN,
            previous=sandbox.get("status") or {},
            now=now_rfc3339(),
        )
        if status != (sandbox.get("status") or {}):
            updated = sandbox | {"status": status}
            validation.validate(SANDBOXES, copy.deepcopy(updated))  # our writes obey the CRD too
            self.store.replace(SANDBOXES, meta["namespace"], meta["name"], updated, status=True)

    # --- hooks -------------------------------------------------------------------------------

    def fail_pod(self, namespace: str, name: str) -> None:
        """Crash the sandbox's agent: the pod goes Failed and Ready=False `PodFailed`."""
        agent = self.agents.get((namespace, name))
        if agent is not None:
            kubelet.fail(agent)
