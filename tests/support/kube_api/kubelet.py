"""The stand-in's kubelet: a pod's agent as a local `opencode serve` on its own 127.x.y.z."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.kube_api.resources import CONFIGMAPS, SECRETS
from tests.support.kube_api.store import Store

STOP_GRACE = 5.0


class ContainerConfigError(Exception):
    """The pod's env names a Secret or key that is not there (`CreateContainerConfigError`)."""


@dataclass
class Agent:
    """One running pod's agent process and where its volumes are on this machine."""

    namespace: str
    name: str
    uid: str
    ip: str
    port: int
    cwd: Path
    home: Path
    mounts: dict[str, Path]  # container mountPath → host directory
    env: dict[str, str]
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    output: list[str] = field(default_factory=list)
    listening: bool = False
    ready: bool = False
    exited: bool = False
    stopping: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)
    probe_failed: threading.Event = field(default_factory=threading.Event)  # at least once
    exit_code: int | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


def resolve_env(
    store: Store, namespace: str, container: dict[str, Any], pod: dict[str, Any]
) -> dict[str, str]:
    """The container's `env`, with `valueFrom` secret/configMap keys and pod fields resolved."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef") or source.get("configMapRef")
        if not ref:
            continue
        resource = SECRETS if "secretRef" in source else CONFIGMAPS
        obj = store.find(resource, namespace, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{resource.singular()} "{ref["name"]}" not found')
        for key, value in _data(obj).items():
            env[f"{source.get('prefix', '')}{key}"] = value
    for item in container.get("env") or []:
        if "value" in item or "valueFrom" not in item:
            env[item["name"]] = str(item.get("value", ""))
            continue
        frm = item["valueFrom"]
        if "fieldRef" in frm:
            path = frm["fieldRef"]["fieldPath"]
            env[item["name"]] = {
                "metadata.name": pod["metadata"]["name"],
                "metadata.namespace": namespace,
                "status.podIP": pod.get("status", {}).get("podIP", ""),
            }.get(path, "")
            continue
        ref = frm.get("secretKeyRef") or frm.get("configMapKeyRef")
        if not ref:
            continue
        resource = SECRETS if "secretKeyRef" in frm else CONFIGMAPS
        obj = store.find(resource, namespace, ref["name"])
        if obj is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{resource.singular()} "{ref["name"]}" not found')
        data = _data(obj)
        if ref["key"] not in data:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(
                f"couldn't find key {ref['key']} in {resource.kind} {namespace}/{ref['name']}"
            )
        env[item["name"]] = data[ref["key"]]
    return env


def _data(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Secret":
        values = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        values.update(obj.get("stringData") or {})
        return values
    return dict(obj.get("data") or {})


def host_path(value: str, mounts: dict[str, Path]) -> str:
    """A container path under a mount, as the host directory it maps to (else unchanged)."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path) :]
    return value


def start(agent: Agent, on_change: Callable[[Agent], None], probe: dict[str, Any] | None) -> None:
    """Start the process; `on_change(agent)` runs (on a pump thread) once it is ready (or never
    will be: it exited)."""
    agent.cwd.mkdir(parents=True, exist_ok=True)
    agent.home.mkdir(parents=True, exist_ok=True)
    agent.process = subprocess.Popen(
        agent.argv,
        cwd=agent.cwd,
        env=agent.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    thread = threading.Thread(
        target=_pump, args=(agent, on_change, probe), name=f"kubelet-{agent.name}"
    )
    agent._threads.append(thread)
    thread.start()


def _pump(agent: Agent, on_change: Callable[[Agent], None], probe: dict[str, Any] | None) -> None:
    process = agent.process
    assert process is not None
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.decode(errors="replace").rstrip()
        agent.output.append(line)
        if not agent.listening and "listening" in line.lower():
            agent.listening = True
            if not agent.stopping and _probe(agent, probe):
                agent.ready = True
                on_change(agent)
    agent.exit_code = process.wait()
    agent.exited = True
    on_change(agent)


def _probe(agent: Agent, probe: dict[str, Any] | None) -> bool:
    """The readiness probe, retried each period until it passes (or the agent stops)."""
    if probe is None or not ({"httpGet", "tcpSocket", "exec"} & set(probe)):
        return True  # no probe: ready once listening
    period = float(probe.get("periodSeconds", 10))
    timeout = float(probe.get("timeoutSeconds", 1))
    while not (agent.stopping or agent.exited):
        if _probe_once(agent, probe, timeout):
            return True
        agent.probe_failed.set()
        # The probe's period (shortened): the kubelet's schedule, ended early by a stop.
        agent.stopped.wait(min(period, 1.0) / 5)
    return False


def _probe_once(agent: Agent, probe: dict[str, Any], timeout: float) -> bool:
    """One probe as the kubelet counts it: a TCP connect, an HTTP GET answered below 400, or a
    command that exits 0."""
    if "exec" in probe:
        return _exec_probe(agent, list(probe["exec"].get("command") or []), timeout)
    action = probe.get("httpGet") or probe["tcpSocket"]
    port = action.get("port", agent.port)
    port = agent.port if isinstance(port, str) else int(port)  # a named port: the agent's
    if "tcpSocket" in probe:
        try:
            socket.create_connection((agent.ip, port), timeout=timeout).close()
        except OSError:
            return False
        return True
    headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
    conn = http.client.HTTPConnection(agent.ip, port, timeout=timeout)
    try:
        conn.request("GET", action.get("path", "/"), headers=headers)
        return conn.getresponse().status < 400
    except OSError:
        return False
    finally:
        conn.close()


def _exec_probe(agent: Agent, command: list[str], timeout: float) -> bool:
    """Run the probe's command here with the container's env; the pod's own loopback is its
    address here, so `127.0.0.1`/`localhost` in the arguments become the pod IP. A program this
    machine lacks counts as passing (noted in the agent's output); the timeout is at least 10 s,
    as starting a program here is slower than in a container on an idle node."""
    if not command:
        return False
    program = shutil.which(command[0], path=agent.env.get("PATH"))
    if program is None:
        agent.output.append(f"[kubelet] exec probe skipped: {command[0]} is not installed here")
        return True
    argv = [program] + [
        arg.replace("127.0.0.1", agent.ip).replace("localhost", agent.ip) for arg in command[1:]
    ]
    try:
        done = subprocess.run(
            argv,
            cwd=agent.cwd,
            env=agent.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(timeout, 10.0),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def stop(agent: Agent) -> None:
    """SIGTERM its process group, SIGKILL after a grace period; join its pump thread."""
    agent.stopping = True
    agent.stopped.set()
    process = agent.process
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for thread in agent._threads:
        if thread is not threading.current_thread():
            thread.join()
    if process is not None and process.stdout is not None:
        process.stdout.close()


def fail(agent: Agent) -> None:
    """Kill the agent as a crash would (the pod goes Failed)."""
    process = agent.process
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
