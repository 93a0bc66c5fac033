"""agentserver with `--backend kubernetes` against the stand-in API server: the API, the
subdomain proxy, the workspace disk, pause/resume/delete, restarts and failures."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from agentserver.sandboxes import kube_objects as ko
from agentserver.settings import Settings
from tests.conftest import Server, make_settings, start_server
from tests.support.kube_api import KubeApi
from tests.support.kube_api.resources import SANDBOXES
from tests.support.sandbox_login import SANDBOX_COOKIE, sandbox_client, sandbox_cookie
from tests.support.sandboxes import EventStream, open_events, owner_with_workspace
from tests.support.upstream import RecordingUpstream, serve_upstream

REAL_KEY = "sk-ant-real-key-that-must-never-enter-a-sandbox"


@pytest.fixture
def kube_server_settings(
    kube_api: KubeApi, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return make_settings(db_url, tmp_path / "data", backend="k8s", anthropic_api_key=REAL_KEY)


@pytest.fixture
async def kube_server(
    nursery: trio.Nursery, kube_server_settings: Settings
) -> AsyncIterator[Server]:
    server = await start_server(nursery, kube_server_settings)
    yield server
    server.shutdown.set()


async def create_running(
    api: httpx.AsyncClient, events: EventStream, wid: str, name: str
) -> dict[str, Any]:
    response = await api.post(f"/api/workspaces/{wid}/sandboxes", json={"name": name})
    assert response.status_code == 201, response.text
    done = await events.until(response.json()["id"], "running", "failed")
    assert done["status"] == "running", done.get("statusReason")
    return done


def where(settings: Settings, wid: str, sid: str) -> tuple[str, str]:
    """The namespace and name of a sandbox's Sandbox object."""
    return ko.namespace_for(wid, settings), ko.sandbox_name(sid)


async def test_kube_sandbox_lifecycle_through_api_and_proxy(
    kube_server: Server, kube_server_settings: Settings, kube_api: KubeApi, nursery: trio.Nursery
) -> None:
    """Create → running (opencode's UI and /session through the subdomain proxy, the endpoint
    the pod IP); two sandboxes share the workspace PVC; pause → Suspended and no pod; resume →
    running again with its home kept; delete → Sandbox, Secret and home PVC gone; deleting the
    workspace removes its disk and namespace."""
    settings = kube_server_settings
    api, wid = await owner_with_workspace(kube_server)
    events = await open_events(nursery, api, wid)
    first = await create_running(api, events, wid, "first")
    second = await create_running(api, events, wid, "second")
    sid = first["id"]
    namespace, name = where(settings, wid, sid)

    sandbox = kube_api.get("sandboxes", namespace, name)
    assert sandbox is not None
    assert sandbox["spec"]["operatingMode"] == "Running"
    assert sandbox["spec"]["service"] is True
    assert sandbox["metadata"]["labels"][ko.LABEL_SANDBOX] == sid
    assert sandbox["metadata"]["labels"][ko.LABEL_WORKSPACE] == wid
    agent = kube_api.agent(namespace, name)
    assert agent is not None
    row = await kube_server.deps.sandboxes.get(sid)
    assert (row.endpoint_host, row.endpoint_port) == (agent.ip, 4096)

    host = f"oc-{sid}.localhost:{kube_server.port}"
    async with await sandbox_client(kube_server.url, api, sid, host=host) as sub:
        page = await sub.get("/")
        sessions = await sub.get("/session")
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    assert sessions.status_code == 200

    other = kube_api.agent(*where(settings, wid, second["id"]))
    assert other is not None
    assert agent.mounts["/data/disk0"] == other.mounts["/data/disk0"]
    assert agent.mounts["/home/agent"] != other.mounts["/home/agent"]
    disk = kube_api.get("pvc", namespace, ko.disk_claim(wid, settings))
    assert disk is not None
    assert disk["spec"]["accessModes"] == ["ReadWriteMany"]
    assert kube_api.get("networkpolicies", namespace, ko.POLICY) is not None
    (agent.mounts["/home/agent"] / "own.txt").write_text("mine\n")

    assert (await api.post(f"/api/sandboxes/{sid}/pause")).status_code == 200
    assert (await events.until(sid, "paused", "failed"))["status"] == "paused"
    sandbox = kube_api.get("sandboxes", namespace, name)
    assert sandbox is not None
    assert sandbox["spec"]["operatingMode"] == "Suspended"
    assert kube_api.get("pods", namespace, name) is None
    home = f"{ko.HOME_CLAIM}-{name}"
    assert kube_api.get("pvc", namespace, home) is not None

    assert (await api.post(f"/api/sandboxes/{sid}/resume")).status_code == 200
    resumed = await events.until(sid, "running", "failed", after=len(events.seen) - 1)
    assert resumed["status"] == "running", resumed
    agent = kube_api.agent(namespace, name)
    assert agent is not None
    assert (agent.mounts["/home/agent"] / "own.txt").read_text() == "mine\n"
    async with await sandbox_client(kube_server.url, api, sid, host=host) as sub:
        assert (await sub.get("/session")).status_code == 200

    assert (await api.delete(f"/api/sandboxes/{sid}")).status_code == 204
    assert kube_api.get("sandboxes", namespace, name) is None
    assert kube_api.get("secrets", namespace, ko.secret_name(sid)) is None
    assert kube_api.get("pvc", namespace, home) is None
    assert kube_api.get("pvc", namespace, ko.disk_claim(wid, settings)) is not None
    assert (await api.delete(f"/api/sandboxes/{second['id']}")).status_code == 204
    assert (await api.delete(f"/api/workspaces/{wid}")).status_code == 204
    assert kube_api.get("pvc", namespace, ko.disk_claim(wid, settings)) is None
    assert kube_api.get("namespaces", "", namespace) is None
    await api.aclose()


async def test_restart_keeps_running_sandboxes_and_reconciles(
    kube_server_settings: Settings, kube_api: KubeApi
) -> None:
    """Restarting the server mid-life loses nothing: the running sandbox keeps its pod (same
    agent), a row whose Sandbox vanished meanwhile is started again, and a Sandbox of ours
    without a row is removed."""
    settings = kube_server_settings
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, settings)
        api, wid = await owner_with_workspace(server)
        events = await open_events(nursery, api, wid)
        keeper = (await create_running(api, events, wid, "keeper"))["id"]
        lost = (await create_running(api, events, wid, "lost"))["id"]
        await api.aclose()
        server.shutdown.set()
        nursery.cancel_scope.cancel()
    namespace = ko.namespace_for(wid, settings)
    before = kube_api.agent(namespace, ko.sandbox_name(keeper))
    assert before is not None
    kube_api.store.delete(SANDBOXES, namespace, ko.sandbox_name(lost))
    orphan = "orphan" + secrets.token_hex(5)
    body = {
        "apiVersion": ko.API_VERSION,
        "kind": "Sandbox",
        "metadata": {
            "name": ko.sandbox_name(orphan),
            "namespace": namespace,
            "labels": {ko.LABEL_MANAGED: ko.MANAGED_BY, ko.LABEL_SANDBOX: orphan},
        },
        "spec": {
            "operatingMode": "Suspended",
            "podTemplate": {"spec": {"containers": [{"name": "agent", "image": "x"}]}},
        },
    }
    kube_api.create_object("sandboxes", namespace, body)

    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, settings)
        async with server.client() as api:
            login = await api.post(
                "/api/auth/login", json={"username": "owner", "password": "correct-horse"}
            )
            assert login.status_code == 200, login.text
            events = await open_events(nursery, api, wid)
            row = await server.deps.sandboxes.get(keeper)
            assert row.status == "running"
            after = kube_api.agent(namespace, ko.sandbox_name(keeper))
            assert after is not None
            assert after.process is before.process
            assert kube_api.get("sandboxes", namespace, ko.sandbox_name(orphan)) is None
            again = await events.until(lost, "running", "failed")
            assert again["status"] == "running", again
            assert kube_api.get("sandboxes", namespace, ko.sandbox_name(lost)) is not None
            for sid in (keeper, lost):
                assert (await api.delete(f"/api/sandboxes/{sid}")).status_code == 204
        server.shutdown.set()
        nursery.cancel_scope.cancel()


async def test_an_image_that_cannot_be_pulled_fails_the_sandbox_with_a_reason(
    kube_api: KubeApi,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    nursery: trio.Nursery,
) -> None:
    """A sandbox whose image the cluster cannot pull becomes `failed`, its reason saying so."""
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig_path))
    image = "registry.invalid/agentserver-missing:never"
    kube_api.faults.image_pull_failures.add(image)
    settings = make_settings(db_url, tmp_path / "data", backend="kubernetes", agent_image=image)
    server = await start_server(nursery, settings)
    api, wid = await owner_with_workspace(server)
    events = await open_events(nursery, api, wid)
    response = await api.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "broken"})
    assert response.status_code == 201, response.text
    done = await events.until(response.json()["id"], "running", "failed")
    assert done["status"] == "failed"
    assert "ErrImagePull" in done["statusReason"]
    assert image in done["statusReason"]
    await api.aclose()
    server.shutdown.set()


async def test_a_sandbox_the_api_refuses_fails_with_the_servers_reason(
    kube_server: Server, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Sandbox the API server refuses with 422 leaves the sandbox `failed`, its reason the
    server's message (here a v1alpha1 field the v1beta1 schema lacks)."""
    build = ko.sandbox_object

    def with_unknown_field(*args: Any) -> dict[str, Any]:
        obj = build(*args)
        obj["spec"]["replicas"] = 1
        return obj

    monkeypatch.setattr(ko, "sandbox_object", with_unknown_field)
    api, wid = await owner_with_workspace(kube_server)
    events = await open_events(nursery, api, wid)
    response = await api.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "refused"})
    assert response.status_code == 201, response.text
    done = await events.until(response.json()["id"], "running", "failed")
    assert done["status"] == "failed"
    assert "Kubernetes refused the object" in done["statusReason"]
    assert "replicas" in done["statusReason"]
    await api.aclose()


async def test_a_dev_server_in_a_kube_sandbox_is_its_preview(
    kube_server: Server,
    kube_server_settings: Settings,
    kube_api: KubeApi,
    nursery: trio.Nursery,
) -> None:
    """p{port}-{id} reaches the port on the sandbox's pod address — a page, an event stream
    event by event, a WebSocket echo — and two sandboxes listening on the same port are two
    different previews."""
    api, wid = await owner_with_workspace(kube_server)
    events = await open_events(nursery, api, wid)
    sandboxes = [await create_running(api, events, wid, name) for name in ("one", "two")]
    ips = []
    for sandbox in sandboxes:
        agent = kube_api.agent(*where(kube_server_settings, wid, sandbox["id"]))
        assert agent is not None
        ips.append(agent.ip)
    with socket.socket() as probe:  # a port free on the first pod's address …
        probe.bind((ips[0], 0))
        port = probe.getsockname()[1]
    apps = []  # … where a dev server listens inside each sandbox
    for ip in ips:
        app = RecordingUpstream()
        await nursery.start(partial(serve_upstream, app, host=ip, port=port))
        apps.append(app)
    for sandbox, app in zip(sandboxes, apps, strict=True):
        host = f"p{port}-{sandbox['id']}.localhost:{kube_server.port}"
        async with httpx.AsyncClient(base_url=kube_server.url, headers={"Host": host}) as sub:
            cookie = await sandbox_cookie(api, sub, sandbox["id"])
            crumbs = {"Cookie": f"{SANDBOX_COOKIE}={cookie}"}
            page = await sub.get(f"/?of={sandbox['name']}", headers=crumbs)
            assert page.status_code == 200, page.text
            assert [seen.target for seen in app.requests] == [f"/?of={sandbox['name']}"]
            assert app.sse_send is not None
            async with sub.stream("GET", "/sse", headers=crumbs) as stream:
                lines = stream.aiter_lines()
                for n in range(2):
                    await app.sse_send.send(f"reload-{n}")
                    line = await anext(lines)
                    while not line.startswith("data:"):
                        line = await anext(lines)
                    assert json.loads(line[5:])["payload"] == f"reload-{n}"
                await app.sse_send.send("")
        tcp = await trio.open_tcp_stream("127.0.0.1", kube_server.port)
        ws = await trio_websocket.wrap_client_stream(
            nursery,
            tcp,
            host,
            "/ws",
            extra_headers=[
                (b"origin", f"http://{host}".encode()),
                (b"cookie", f"{SANDBOX_COOKIE}={cookie}".encode()),
            ],
        )
        await ws.send_message("ping")
        assert await ws.get_message() == "echo:ping"
        await ws.aclose()
