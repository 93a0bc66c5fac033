"""The Kubernetes backend on its own, with the real `kubernetes` client against the stand-in
API server: discovery refusals, watches that end or answer 410, stuck and refused Sandboxes,
and the API calls it makes (what the chart's RBAC grants)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agentserver.errors import BackendError, ConfigError
from agentserver.models import SandboxType
from agentserver.sandboxes import kube_objects as ko
from agentserver.sandboxes.base import Endpoint, SandboxSpec
from agentserver.sandboxes.kube_calls import API_CALLS
from agentserver.sandboxes.kubernetes import KubernetesBackend, open_backend
from agentserver.sandboxes.readiness import answers
from agentserver.settings import Settings, build_settings
from tests.support.kube_api import KubeApi
from tests.support.kube_api.resources import SANDBOXES

REAL_KEY = "sk-ant-real-key-that-must-never-enter-a-sandbox"


class Exits:
    """The exit notices the backend gave, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._send, self._receive = trio.open_memory_channel[tuple[str, str]](100)

    async def notice(self, sandbox_id: str, reason: str) -> None:
        self.seen.append((sandbox_id, reason))
        await self._send.send((sandbox_id, reason))

    async def next(self) -> tuple[str, str]:
        with trio.fail_after(30):
            return await self._receive.receive()


@pytest.fixture
def kube_settings(kube_api: KubeApi, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for the kubernetes backend, the client pointed at the stand-in."""
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return build_settings(
        {"backend": "kubernetes", "anthropic_api_key": REAL_KEY, "idle_timeout": "30m"}, {}
    )


def make_spec(sandbox_id: str, workspace_id: str = "wspkubetest00001") -> SandboxSpec:
    return SandboxSpec(
        id=sandbox_id,
        workspace_id=workspace_id,
        type=SandboxType.OPENCODE,
        agent_secret=f"secret-of-{sandbox_id}",
        llm_base_url="http://127.0.0.1:9/proxy/anthropic",
        proxy_token=f"token-of-{sandbox_id}",
        idle_timeout=1800.0,
    )


@asynccontextmanager
async def backend_on(settings: Settings) -> AsyncIterator[tuple[KubernetesBackend, Exits]]:
    """The backend, open, with the exit notices it gave."""
    exits = Exits()
    async with open_backend(settings, exits.notice) as backend:
        yield backend, exits


async def agent_answers(spec: SandboxSpec, host: str, port: int) -> bool:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        return await answers(http, spec.type, f"http://{host}:{port}", spec.agent_secret)


def namespace_of(spec: SandboxSpec, settings: Settings) -> str:
    return ko.namespace_for(spec.workspace_id, settings)


async def test_lifecycle_uses_only_the_declared_api_calls(
    kube_api: KubeApi, kube_settings: Settings
) -> None:
    """Create, logs, keep-alive, pause, resume, delete and workspace removal touch only the
    (group, resource, verb) triples of API_CALLS, which the Helm chart's RBAC grants."""
    spec = make_spec("apicalls00000001")
    async with backend_on(kube_settings) as (backend, exits):
        endpoint = await backend.create(spec)
        assert await agent_answers(spec, endpoint.host, endpoint.port)
        assert backend.preview_endpoint(spec.id, endpoint, 3000) == Endpoint(endpoint.host, 3000)
        await backend.logs(spec.id)
        await backend.keep_alive(spec.id)
        await backend.pause(spec.id)
        await backend.resume(spec)
        await backend.destroy(spec.id)
        await backend.destroy_workspace(spec.workspace_id)
    assert exits.seen == []
    seen = kube_api.verbs()
    assert seen, "the stand-in recorded no calls"
    assert seen <= API_CALLS, sorted(seen - API_CALLS)


async def test_activity_puts_the_shutdown_time_off(
    kube_api: KubeApi, kube_settings: Settings
) -> None:
    """A sandbox gets a shutdownTime a little past its idle timeout; activity moves it forward,
    so only sandboxes nobody uses stop when no server is left to pause them."""
    spec = make_spec("keepalive0000001")
    namespace, name = namespace_of(spec, kube_settings), ko.sandbox_name(spec.id)
    async with backend_on(kube_settings) as (backend, _):
        await backend.create(spec)
        first = kube_api.get("sandboxes", namespace, name)
        assert first is not None
        assert first["spec"]["shutdownPolicy"] == "Retain"
        planned = datetime.fromisoformat(first["spec"]["shutdownTime"])
        expected = datetime.now(UTC) + timedelta(seconds=spec.idle_timeout) + ko.SHUTDOWN_MARGIN
        assert abs((planned - expected).total_seconds()) < 60
        soon = (datetime.now(UTC) + timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        first["spec"]["shutdownTime"] = soon
        kube_api.store.replace(SANDBOXES, namespace, name, first)
        with trio.fail_after(30):
            await backend.view.wait_for(
                lambda: backend.view.objects[spec.id]["spec"].get("shutdownTime") == soon
            )
        await backend.keep_alive(spec.id)
        moved = kube_api.get("sandboxes", namespace, name)
        assert moved is not None
        assert datetime.fromisoformat(moved["spec"]["shutdownTime"]) >= planned
        await backend.destroy(spec.id)


async def test_a_watch_that_ends_is_resumed_without_missing_a_change(
    kube_api: KubeApi, kube_settings: Settings
) -> None:
    """After the API server ends every watch, a change made meanwhile still reaches the
    backend: the watch reopens from the last resourceVersion."""
    spec = make_spec("watchends0000001")
    async with backend_on(kube_settings) as (backend, exits):
        await backend.create(spec)
        opened = backend.watch.reopens
        kube_api.end_watches()
        kube_api.fail_pod(namespace_of(spec, kube_settings), ko.sandbox_name(spec.id))
        sandbox_id, reason = await exits.next()
        assert sandbox_id == spec.id
        assert "PodFailed" in reason
        assert backend.watch.reopens > opened
        await backend.destroy(spec.id)


async def test_a_watch_answered_410_lists_again_and_misses_nothing(
    kube_api: KubeApi, kube_settings: Settings
) -> None:
    """When the server has forgotten the watch's resourceVersion (410 Gone) before it could
    send a change, the backend lists again and still learns of that change."""
    spec = make_spec("watchgone0000001")
    async with backend_on(kube_settings) as (backend, exits):
        await backend.create(spec)
        relists = backend.watch.relists
        # The open watch cannot send the deletion before the history that holds it is
        # forgotten: it answers 410 instead.
        with kube_api.missed_by_watches():
            kube_api.store.delete(
                SANDBOXES, namespace_of(spec, kube_settings), ko.sandbox_name(spec.id)
            )
        sandbox_id, reason = await exits.next()
        assert sandbox_id == spec.id
        assert "deleted outside agentserver" in reason
        assert backend.watch.relists > relists
        await backend.destroy(spec.id)


async def test_a_sandbox_stuck_not_ready_fails_with_the_ready_condition(
    kube_api: KubeApi, kube_settings: Settings
) -> None:
    """A Sandbox whose pod never becomes ready fails after the wait, saying what Ready says."""
    spec = make_spec("stuckready000001")
    name = ko.sandbox_name(spec.id)
    kube_api.faults.stuck_not_ready.add(f"{namespace_of(spec, kube_settings)}/{name}")
    async with backend_on(kube_settings) as (backend, _):
        backend.ready_timeout = 8.0
        with pytest.raises(BackendError, match="did not become ready within 8s") as caught:
            await backend.create(spec)
        assert "DependenciesNotReady" in caught.value.message
        await backend.destroy(spec.id)


async def test_a_refused_sandbox_object_is_a_readable_error(
    kube_api: KubeApi, kube_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Sandbox the API server refuses (422: a field the v1beta1 schema lacks) fails the
    start with the server's message."""
    build = ko.sandbox_object

    def with_unknown_field(*args: Any) -> dict[str, Any]:
        obj = build(*args)
        obj["spec"]["replicas"] = 1  # v1alpha1's field, gone in v1beta1
        return obj

    monkeypatch.setattr(ko, "sandbox_object", with_unknown_field)
    async with backend_on(kube_settings) as (backend, _):
        with pytest.raises(BackendError, match="Kubernetes refused the object") as caught:
            await backend.create(make_spec("refused000000001"))
    assert "replicas" in caught.value.message


async def test_no_object_holds_the_real_key_and_the_sandbox_holds_no_secret(
    kube_api: KubeApi, kube_settings: Settings
) -> None:
    """After a start, the real Anthropic key is in no stored object (Secrets decoded), and the
    agent's secret and proxy token are only in the sandbox's Secret."""
    spec = make_spec("nosecrets0000001")
    async with backend_on(kube_settings) as (backend, _):
        await backend.create(spec)
        everything = []
        for kind in ("sandboxes", "pods", "secrets", "pvc", "namespaces", "networkpolicies"):
            for obj in kube_api.objects(kind):
                everything.append(json.dumps(obj))
                if obj["kind"] == "Secret":
                    data = obj.get("data") or {}
                    everything.extend(base64.b64decode(v).decode() for v in data.values())
        assert not any(REAL_KEY in text for text in everything)
        for kind in ("sandboxes", "pods"):
            for obj in kube_api.objects(kind):
                assert spec.agent_secret not in json.dumps(obj)
                assert spec.proxy_token not in json.dumps(obj)
        agent = kube_api.agent(namespace_of(spec, kube_settings), ko.sandbox_name(spec.id))
        assert agent is not None
        assert REAL_KEY not in json.dumps(agent.env)
        await backend.destroy(spec.id)


@pytest.mark.parametrize("kube_api_served", ["v1alpha1"])
async def test_start_refuses_a_cluster_serving_only_v1alpha1(kube_settings: Settings) -> None:
    """agent-sandbox before v1.0 (only v1alpha1 served) is refused at start, saying so."""
    with pytest.raises(ConfigError, match=r"serves only agents\.x-k8s\.io/v1alpha1"):
        async with backend_on(kube_settings):
            pass


@pytest.mark.parametrize("kube_api_served", ["none"])
async def test_start_refuses_a_cluster_without_the_crds(kube_settings: Settings) -> None:
    """A cluster without the agent-sandbox CRDs is refused at start, saying so."""
    with pytest.raises(ConfigError, match="agent-sandbox CRDs are not installed"):
        async with backend_on(kube_settings):
            pass


async def test_start_refuses_an_unreachable_cluster(
    kube_api: KubeApi, kube_settings: Settings
) -> None:
    """With the API server gone, opening the backend fails naming its address."""
    kube_api.stop()
    with pytest.raises(ConfigError, match="Kubernetes API unreachable at") as caught:
        async with backend_on(kube_settings):
            pass
    assert kube_api.url in caught.value.message


def test_serve_exits_2_when_the_cluster_is_unreachable(
    db_url: str, tmp_path: Path, kube_api: KubeApi
) -> None:
    """`agentserver serve --backend k8s` with no API server exits with status 2 and one line."""
    import os
    import subprocess
    import sys

    kube_api.stop()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "KUBECONFIG": str(kube_api.kubeconfig_path),
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("PYTHON")})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentserver.cli",
            "serve",
            "--backend",
            "k8s",
            "--listen",
            "127.0.0.1:0",
            "--db-url",
            db_url,
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Kubernetes API unreachable at" in result.stderr
    assert kube_api.url in result.stderr
