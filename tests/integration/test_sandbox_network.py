"""Process sandboxes on network namespaces of their own: previews at their own address, and
no way to another sandbox or to the server other than the LLM relay (root servers only)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url, wrap_client_stream

from agentserver.sandboxes import process as process_backend
from agentserver.sandboxes.base import Endpoint
from agentserver.sandboxes.isolation import Isolation
from agentserver.sandboxes.netns import NETNS_DIR
from agentserver.sandboxes.process import Child, ProcessBackend
from agentserver.sandboxes.subnet import namespace_name
from agentserver.settings import Settings
from tests.conftest import Server, start_server
from tests.support.preview_world import Previews
from tests.support.sandbox_login import SANDBOX_COOKIE
from tests.support.sandboxes import (
    open_events,
    owner_with_workspace,
    processes_of,
    sandbox_settings_for,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need a root server")
APP = (Path(__file__).parents[1] / "support" / "preview_app.py").read_text()
PYTHON = "/usr/bin/python3"
PORT = 3000


def backend_of(server: Server) -> ProcessBackend:
    backend = server.deps.sandboxes.backend
    assert isinstance(backend, ProcessBackend)
    if backend.networks is None:
        pytest.skip(f"no network namespaces here: {backend.network_note}")
    return backend


@dataclass
class Box:
    """A running sandbox: its ids, and its agent's endpoint."""

    id: str
    workspace_id: str
    agent: Endpoint


async def start_boxes(server: Server, nursery: trio.Nursery, count: int) -> list[Box]:
    """`count` running opencode sandboxes in one workspace."""
    client, boxes = await start_boxes_of(server, nursery, count)
    await client.aclose()
    return boxes


async def start_boxes_of(
    server: Server, nursery: trio.Nursery, count: int
) -> tuple[httpx.AsyncClient, list[Box]]:
    """`count` running opencode sandboxes in one workspace, and their owner's client."""
    backend = backend_of(server)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    boxes = []
    for n in range(count):
        created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": f"b{n}"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        assert (await events.until(sid, "running", "failed"))["status"] == "running"
        (managed,) = [m for m in await backend.list_managed() if m.id == sid]
        assert managed.endpoint is not None
        boxes.append(Box(sid, wid, managed.endpoint))
    events.close()
    return client, boxes


def spawn_inside(backend: ProcessBackend, box: Box, *args: str) -> Child:
    """`python3 preview_app.py args` run the way the sandbox's agent runs: its namespace, its
    bubblewrap, its user."""
    net = backend.networks.get(box.id) if backend.networks else None
    assert net is not None
    home, disk = backend.home(box.id), backend.disk(box.workspace_id)
    argv = backend.isolation.wrap(
        [PYTHON, "-c", APP, *args], home=home, disk=disk, data_dir=backend.settings.data_dir
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    account = backend.account_of(box.id, box.workspace_id)
    fd = net.open_namespace()
    try:
        return Child.spawn(argv, env, str(home), account, netns=fd)
    finally:
        os.close(fd)


async def output_of(child: Child) -> str:
    output = b""
    async with child.stdout:
        while chunk := await child.stdout.receive_some(65536):
            output += chunk
    await child.wait()
    return output.decode(errors="replace").strip()


async def run_inside(backend: ProcessBackend, box: Box, *args: str) -> str:
    """A probe's output (preview_app.py --connect / --get) from inside the sandbox."""
    return await output_of(spawn_inside(backend, box, *args))


async def first_line(stream: trio.abc.ReceiveStream) -> bytes:
    """What a process printed up to its first newline."""
    data = b""
    while b"\n" not in data and (chunk := await stream.receive_some(100)):
        data += chunk
    return data.split(b"\n")[0]


@asynccontextmanager
async def app_inside(
    backend: ProcessBackend, box: Box, name: str, port: int = PORT, *host: str
) -> AsyncIterator[None]:
    """preview_app.py listening on `port` inside the sandbox, until the block ends."""
    child = spawn_inside(backend, box, name, str(port), *host)
    try:
        assert await first_line(child.stdout) == b"ready"
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        await child.wait()
        await child.stdout.aclose()


def preview(backend: ProcessBackend, box: Box, port: int = PORT) -> Endpoint:
    endpoint = backend.preview_endpoint(box.id, box.agent, port)
    assert endpoint is not None
    return endpoint


async def hello(endpoint: Endpoint) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        answer = await http.get(f"http://{endpoint.host}:{endpoint.port}/hello")
    assert answer.status_code == 200
    return answer.text


async def test_a_server_in_the_sandbox_answers_at_its_preview_endpoint(
    nursery: trio.Nursery, sandbox_server: Server
) -> None:
    """An app started inside the sandbox answers a GET, streams server-sent events and echoes
    over a WebSocket at its preview endpoint (the sandbox's own address), and is listed among
    the sandbox's listening ports, which leave the agent's port out."""
    backend = backend_of(sandbox_server)
    (box,) = await start_boxes(sandbox_server, nursery, 1)
    assert await backend.listening_ports(box.id) == []
    async with app_inside(backend, box, "one"):
        endpoint = preview(backend, box)
        assert endpoint.host == box.agent.host != "127.0.0.1"
        assert await hello(endpoint) == "hello from one"
        async with (
            httpx.AsyncClient(trust_env=False, timeout=10) as http,
            http.stream("GET", f"http://{endpoint.host}:{PORT}/events") as events,
        ):
            assert events.headers["content-type"] == "text/event-stream"
            lines = [line async for line in events.aiter_lines() if line]
        assert lines == ["data: one 0", "data: one 1", "data: one 2"]
        async with open_websocket_url(f"ws://{endpoint.host}:{PORT}/echo") as ws:
            await ws.send_message("ping")
            assert await ws.get_message() == "ping"
        assert await backend.listening_ports(box.id) == [PORT]
    assert backend.preview_endpoint(box.id, box.agent, box.agent.port) is None


async def test_an_app_on_the_sandbox_loopback_only_is_a_preview_too(
    nursery: trio.Nursery, sandbox_server: Server
) -> None:
    """A dev server listening on localhost only (most do by default) is reached at the
    sandbox's address all the same, and listed."""
    backend = backend_of(sandbox_server)
    (box,) = await start_boxes(sandbox_server, nursery, 1)
    async with app_inside(backend, box, "local", 5173, "127.0.0.1"):
        assert await hello(preview(backend, box, 5173)) == "hello from local"
        assert await backend.listening_ports(box.id) == [5173]


async def test_two_sandboxes_on_the_same_port_are_different_previews(
    nursery: trio.Nursery, sandbox_server: Server
) -> None:
    """Two sandboxes both listen on the same port; each preview reaches its own app."""
    backend = backend_of(sandbox_server)
    one, two = await start_boxes(sandbox_server, nursery, 2)
    async with app_inside(backend, one, "one"), app_inside(backend, two, "two"):
        assert preview(backend, one) != preview(backend, two)
        assert await hello(preview(backend, one)) == "hello from one"
        assert await hello(preview(backend, two)) == "hello from two"


async def test_previews_through_the_proxy_reach_each_sandboxs_own_app(
    nursery: trio.Nursery, sandbox_server: Server
) -> None:
    """Through the API and the subdomain proxy (ticket sign-in, `p3000-{id}` hosts), two
    sandboxes' apps on the same port are listed and answer each for itself, and an event
    stream and a WebSocket echo work end to end."""
    backend = backend_of(sandbox_server)
    owner, (one, two) = await start_boxes_of(sandbox_server, nursery, 2)
    world = SimpleNamespace(server=sandbox_server, owner=owner)
    previews = Previews(world, backend, nursery)  # type: ignore[arg-type]
    async with app_inside(backend, one, "one"), app_inside(backend, two, "two"):
        for box, name in ((one, "one"), (two, "two")):
            listed = (await owner.get(f"/api/sandboxes/{box.id}/previews")).json()
            assert listed["available"] is True
            assert [p["port"] for p in listed["previews"]] == [PORT]
            cookie = await previews.open(box.id, PORT)
            async with previews.client(box.id, PORT, cookie) as browser:
                answer = await browser.get("/hello")
                assert (answer.status_code, answer.text) == (200, f"hello from {name}")
                async with browser.stream("GET", "/events") as events:
                    lines = [line async for line in events.aiter_lines() if line]
                assert lines == [f"data: {name} {n}" for n in range(3)]
            stream = await trio.open_tcp_stream("127.0.0.1", sandbox_server.port)
            headers = [
                (b"origin", previews.origin(box.id, PORT).encode()),
                (b"cookie", f"{SANDBOX_COOKIE}={cookie}".encode()),
            ]
            ws = await wrap_client_stream(
                nursery, stream, previews.host(box.id, PORT), "/echo", extra_headers=headers
            )
            await ws.send_message(f"ping {name}")
            assert await ws.get_message() == f"ping {name}"
            await ws.aclose()
    await owner.aclose()


async def test_a_sandbox_reaches_neither_another_sandbox_nor_the_server(
    nursery: trio.Nursery, sandbox_server: Server
) -> None:
    """From inside a sandbox, another sandbox's app and agent, the server's listener (on
    loopback and on the host's end of the sandbox's link) and the host's other addresses are
    out of reach, while the sandbox's own app is reachable the same way (the control)."""
    backend = backend_of(sandbox_server)
    one, two = await start_boxes(sandbox_server, nursery, 2)
    net = backend.networks.get(one.id) if backend.networks else None
    assert net is not None
    async with app_inside(backend, one, "one"), app_inside(backend, two, "two"):
        for host in ("127.0.0.1", net.address):
            assert await run_inside(backend, one, "--connect", host, str(PORT)) == "connected"
        host_addresses = (await trio.run_process(["hostname", "-I"], capture_stdout=True)).stdout
        targets = [
            (two.agent.host, PORT),
            (two.agent.host, two.agent.port),
            ("127.0.0.1", sandbox_server.port),
            (net.slot.host_address, sandbox_server.port),
            *((address, sandbox_server.port) for address in host_addresses.decode().split()[:3]),
        ]
        async with trio.open_nursery() as probes:
            outputs: dict[tuple[str, int], str] = {}

            async def probe(host: str, port: int) -> None:
                outputs[host, port] = await run_inside(backend, one, "--connect", host, str(port))

            for host, port in targets:
                probes.start_soon(probe, host, port)
        for target, output in outputs.items():
            assert output.startswith("not connected"), (target, output)


async def test_the_relay_passes_only_the_llm_proxy(
    nursery: trio.Nursery, sandbox_server: Server
) -> None:
    """The sandbox's LLM base URL is its relay: a call there reaches the LLM proxy (which
    refuses a wrong token with 401), while any other path of the server is answered 404."""
    backend = backend_of(sandbox_server)
    (box,) = await start_boxes(sandbox_server, nursery, 1)
    net = backend.networks.get(box.id) if backend.networks else None
    assert net is not None
    assert backend.networks is not None
    base = backend.networks.llm_base_url(net, sandbox_server.deps.settings.llm_proxy_url)
    assert base.startswith(f"http://{net.slot.host_address}:")
    root = base.removesuffix("/proxy/anthropic")
    assert await run_inside(backend, box, "--get", f"{base}/v1/models") == "401"
    for path in ("/api/auth/config", "/", "/proxy/anthropic/../api/auth/config"):
        assert await run_inside(backend, box, "--get", f"{root}{path}") == "404", path


def namespace_exists(sandbox_id: str) -> bool:
    return (NETNS_DIR / namespace_name(sandbox_id)).exists()


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


async def test_a_network_goes_with_its_agent(nursery: trio.Nursery, sandbox_server: Server) -> None:
    """Pausing removes the sandbox's namespace and link, resuming makes new ones, a crashed
    agent's go too, and deleting leaves none."""
    backend = backend_of(sandbox_server)
    owner, (box,) = await start_boxes_of(sandbox_server, nursery, 1)
    net = backend.networks.get(box.id) if backend.networks else None
    assert net is not None
    assert namespace_exists(box.id)
    events = await open_events(nursery, owner, box.workspace_id)
    assert (await owner.post(f"/api/sandboxes/{box.id}/pause")).status_code == 200
    paused = await events.index_of(box.id, "paused", "failed")
    assert events.seen[paused][1]["status"] == "paused"
    assert not namespace_exists(box.id)
    assert not link_exists(net.slot.link)
    assert backend.preview_endpoint(box.id, box.agent, PORT) is None

    assert (await owner.post(f"/api/sandboxes/{box.id}/resume")).status_code == 200
    running = await events.index_of(box.id, "running", "failed", after=paused + 1)
    assert events.seen[running][1]["status"] == "running"
    assert namespace_exists(box.id)
    pid = backend.pid(box.id)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    crashed = await events.until(box.id, "failed", "paused", after=running + 1)
    assert crashed["status"] == "failed"
    assert not namespace_exists(box.id)
    assert processes_of(box.id) == []
    assert (await owner.delete(f"/api/sandboxes/{box.id}")).status_code == 204
    assert not namespace_exists(box.id)
    events.close()
    await owner.aclose()


async def test_orphan_namespaces_of_any_server_are_removed_once_old(
    nursery: trio.Nursery, sandbox_server: Server
) -> None:
    """A namespace of ours with no process in it (its server was killed and its data
    directory removed) is swept once old enough; one with a process in it is kept, and so is
    a fresh one (another server is about to start its agent there)."""
    backend = backend_of(sandbox_server)
    assert backend.networks is not None
    plumbing = backend.networks.plumbing
    (box,) = await start_boxes(sandbox_server, nursery, 1)
    orphan = "orphan000000001"
    await trio.run_process(["ip", "netns", "add", namespace_name(orphan)])
    try:
        # Only ours are asserted on: a machine may hold other servers' namespaces too.
        fresh = await trio.to_thread.run_sync(plumbing.sweep, [])
        assert orphan not in fresh
        assert box.id not in fresh
        old_enough = await trio.to_thread.run_sync(plumbing.sweep, [], 0.0)
        assert orphan in old_enough
        assert box.id not in old_enough
        assert not namespace_exists(orphan)
        assert namespace_exists(box.id)
    finally:
        if namespace_exists(orphan):
            await trio.run_process(["ip", "netns", "del", namespace_name(orphan)])


async def test_leftover_namespaces_of_our_sandboxes_are_removed_at_start(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """A namespace left by an earlier run for a sandbox of this data directory is removed when
    the server starts; another server's (a sandbox it does not hold) is left alone."""
    settings = sandbox_settings_for(db_url, tmp_path / "d", opencode_bin)
    ours, theirs = "leftover0000001", "otherserver0001"
    (settings.data_dir / "sandboxes" / ours).mkdir(parents=True)
    for sandbox_id in (ours, theirs):
        await trio.run_process(["ip", "netns", "add", namespace_name(sandbox_id)])
    try:
        server = await start_server(nursery, settings)
        backend_of(server)
        assert not namespace_exists(ours)
        assert namespace_exists(theirs)
        server.shutdown.set()
    finally:
        for sandbox_id in (ours, theirs):
            if namespace_exists(sandbox_id):
                await trio.run_process(["ip", "netns", "del", namespace_name(sandbox_id)])


@pytest.fixture
def no_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    async def unusable(*args: object) -> Isolation:
        await trio.lowlevel.checkpoint()
        return Isolation(problem="bubblewrap does not work here (test)")

    monkeypatch.setattr(process_backend, "probe_isolation", unusable)


@pytest.mark.usefixtures("no_bubblewrap")
async def test_unisolated_sandboxes_share_the_network_and_refuse_previews(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """Without isolation no namespace is made: the agent stays on loopback, previews are
    refused (no endpoint, no ports listed) and the operator is told at start."""
    settings: Settings = sandbox_settings_for(
        db_url, tmp_path / "d", opencode_bin, allow_unisolated_sandboxes="true"
    )
    server = await start_server(nursery, settings)
    backend = server.deps.sandboxes.backend
    assert isinstance(backend, ProcessBackend)
    assert backend.networks is None
    assert "previews are refused" in backend.describe()
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "box"})
    sid = created.json()["id"]
    assert (await events.until(sid, "running", "failed"))["status"] == "running"
    (managed,) = await backend.list_managed()
    assert managed.endpoint is not None
    assert managed.endpoint.host == "127.0.0.1"
    assert backend.preview_endpoint(sid, managed.endpoint, PORT) is None
    assert await backend.listening_ports(sid) is None
    assert not namespace_exists(sid)
    events.close()
    await client.aclose()
    server.shutdown.set()
