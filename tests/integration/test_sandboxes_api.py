"""The sandbox API on a real server running real opencode processes (process backend)."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agentserver.api import sandboxes as sandboxes_api
from agentserver.sandboxes import process as process_backend
from agentserver.sandboxes.isolation import Isolation
from agentserver.sandboxes.service import Sandboxes
from tests.conftest import Server, register, start_server
from tests.support.sandboxes import (
    EventStream,
    agent_process,
    alive,
    disk_path_in,
    open_events,
    owner_with_workspace,
    processes_of,
    sandbox_settings_for,
)

SECRET_KEYS = {
    "agentSecret",
    "agent_secret",
    "password",
    "proxyToken",
    "proxy_token_hash",
    "endpointHost",
    "endpointPort",
}


def service(server: Server) -> Sandboxes:
    found: Sandboxes = server.deps.sandboxes
    return found


def home_of(server: Server, sandbox_id: str) -> Path:
    return server.deps.settings.data_dir / "sandboxes" / sandbox_id / "home"


async def create(
    client: httpx.AsyncClient, workspace_id: str, name: str = "box", type_: str = "opencode"
) -> dict[str, Any]:
    response = await client.post(
        f"/api/workspaces/{workspace_id}/sandboxes", json={"name": name, "type": type_}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_sandbox_lifecycle_create_pause_resume_delete(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """A sandbox goes creating → running (opencode answers with Basic auth), pause stops its
    process, resume starts it again, and delete removes its home directory."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    created = await create(client, wid)
    assert created["status"] == "creating"
    assert created["url"] == f"http://oc-{created['id']}.localhost:{sandbox_server.port}/"
    sid = created["id"]
    running = await events.until(sid, "running", "failed")
    assert running["status"] == "running", running

    # The API never shows a secret, and the agent needs its password.
    listed = (await client.get(f"/api/workspaces/{wid}/sandboxes")).json()
    one = (await client.get(f"/api/sandboxes/{sid}")).json()
    assert [s["id"] for s in listed] == [sid]
    for shown in (created, one, listed[0], running):
        assert not SECRET_KEYS & shown.keys()
        assert set(shown) == {
            "id",
            "name",
            "type",
            "status",
            "statusReason",
            "workspaceId",
            "createdBy",
            "createdAt",
            "updatedAt",
            "lastActivityAt",
            "pausedAt",
            "url",
            "pausedReason",  # why it was paused (migration 0010): idle or by whom
            "pausedBy",
            "pausedIdleSeconds",
            "private",  # only its creator, owners and maintainers open it (migration 0011)
            "lastSeenAt",  # a local agent's last heartbeat (shown while it is offline)
            "diskPath",  # where the workspace's shared disk is inside the sandbox
        }
    row = await service(sandbox_server).get(sid)
    assert row is not None
    assert row.endpoint_port is not None
    for secret in (row.agent_secret,):
        assert secret not in str(listed) + str(one)
    agent = f"http://{row.endpoint_host}:{row.endpoint_port}/"
    async with httpx.AsyncClient(timeout=10) as direct:
        assert (await direct.get(agent)).status_code == 401
        answer = await direct.get(agent + "session", auth=("opencode", row.agent_secret))
        assert answer.status_code == 200
        assert answer.json() == []

    pid = service(sandbox_server).backend.pid(sid)  # type: ignore[attr-defined]
    assert pid is not None
    assert alive(pid)
    paused = await client.post(f"/api/sandboxes/{sid}/pause")
    assert paused.status_code == 200
    assert paused.json()["status"] == "pausing"
    done = await events.until(sid, "paused", "failed")
    assert done["status"] == "paused"
    assert done["pausedAt"] is not None
    assert not alive(pid)
    assert home_of(sandbox_server, sid).is_dir()  # files stay

    resumed = await client.post(f"/api/sandboxes/{sid}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "resuming"
    again = await events.until(sid, "running", "failed", after=len(events.seen) - 1)
    assert again["status"] == "running", again
    assert alive(service(sandbox_server).backend.pid(sid))  # type: ignore[attr-defined]

    deleted = await client.delete(f"/api/sandboxes/{sid}")
    assert deleted.status_code == 204
    assert not home_of(sandbox_server, sid).exists()
    assert (await client.get(f"/api/sandboxes/{sid}")).status_code == 404
    events.close()
    await client.aclose()


async def start_running(
    server: Server, client: httpx.AsyncClient, events: EventStream, wid: str, name: str = "box"
) -> str:
    sid = (await create(client, wid, name))["id"]
    running = await events.until(sid, "running", "failed")
    assert running["status"] == "running", running
    return sid


def pid_of(server: Server, sandbox_id: str) -> int:
    pid = service(server).backend.pid(sandbox_id)  # type: ignore[attr-defined]
    assert pid is not None
    return int(pid)


async def test_shared_disk_and_workspace_delete(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """Two sandboxes of a workspace see one disk at the same path (a file written through A's
    view appears in B's); deleting the workspace removes its sandboxes and the disk."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    first = await start_running(sandbox_server, client, events, wid, "a")
    second = await start_running(sandbox_server, client, events, wid, "b")
    seen_by_a = disk_path_in(pid_of(sandbox_server, first))
    seen_by_b = disk_path_in(pid_of(sandbox_server, second))
    assert seen_by_a.name == seen_by_b.name == "disk0" or seen_by_a == seen_by_b
    (seen_by_a / "hello.txt").write_text("from a")
    assert (seen_by_b / "hello.txt").read_text() == "from a"
    disk = sandbox_server.deps.settings.data_dir / "workspaces" / wid / "disk"
    assert (disk / "hello.txt").read_text() == "from a"

    pids = [pid_of(sandbox_server, first), pid_of(sandbox_server, second)]
    events.close()
    assert (await client.delete(f"/api/workspaces/{wid}")).status_code == 204
    assert not disk.exists()
    assert not any(alive(pid) for pid in pids)
    assert not home_of(sandbox_server, first).exists()
    await client.aclose()


async def test_a_killed_agent_is_shown_failed_with_its_exit_status(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """When the opencode process dies on its own, the sandbox becomes failed and says how."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    sid = await start_running(sandbox_server, client, events, wid)
    os.kill(agent_process(pid_of(sandbox_server, sid)), signal.SIGKILL)
    failed = await events.until(sid, "failed")
    assert re.search(
        r"opencode (exited with status 137|was killed by signal 9)", failed["statusReason"]
    ), failed["statusReason"]
    logs = await client.get(f"/api/sandboxes/{sid}/logs")
    assert logs.status_code == 200
    assert "listening" in logs.json()["logs"]
    events.close()
    await client.aclose()


async def test_two_concurrent_pauses_one_wins(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """Two pause calls at once: exactly one gets 200, the other 409 (one conditional UPDATE)."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    sid = await start_running(sandbox_server, client, events, wid)
    codes: list[int] = []

    async def pause() -> None:
        codes.append((await client.post(f"/api/sandboxes/{sid}/pause")).status_code)

    async with trio.open_nursery() as both:
        both.start_soon(pause)
        both.start_soon(pause)
    assert sorted(codes) == [200, 409]
    assert (await events.until(sid, "paused", "failed"))["status"] == "paused"
    # A paused sandbox cannot be paused again, and a running one cannot be resumed.
    again = await client.post(f"/api/sandboxes/{sid}/pause")
    assert again.status_code == 409
    assert again.json()["error"]["message"] == "a paused sandbox cannot be paused"
    events.close()
    await client.aclose()


async def test_idle_sandbox_is_paused(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """With a 1 s idle timeout, a running sandbox nobody uses is paused by the idle watcher."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", opencode_bin, idle_timeout="1s")
    server = await start_server(nursery, settings)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    sid = await start_running(server, client, events, wid)
    pid = pid_of(server, sid)
    paused = await events.until(sid, "paused", "failed")
    assert paused["status"] == "paused"
    assert paused["statusReason"] == "paused after 1s without activity"
    assert not alive(pid)
    events.close()
    await client.aclose()
    server.shutdown.set()


async def test_delete_while_creating_cancels_the_start(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """Deleting a sandbox that is still starting cancels the start: no process, no files, no row."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    sid = (await create(client, wid))["id"]
    with trio.fail_after(60):  # delete once its process exists, before it is ready
        while not processes_of(sid) and not events.statuses(sid)[1:]:
            await trio.sleep(0.01)  # no event marks a spawned process: poll /proc, bounded
    assert events.statuses(sid) == ["creating"]
    assert (await client.delete(f"/api/sandboxes/{sid}")).status_code == 204
    assert processes_of(sid) == []
    assert not home_of(sandbox_server, sid).parent.exists()
    assert (await client.get(f"/api/sandboxes/{sid}")).status_code == 404
    assert events.statuses(sid) == ["creating"]  # never shown running or failed
    events.close()
    await client.aclose()


async def test_a_missing_binary_fails_with_a_readable_reason(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the opencode program the sandbox becomes failed and says what to configure;
    the event stream shows creating then failed, then the deletion, then heartbeats."""
    monkeypatch.setattr(sandboxes_api, "HEARTBEAT", 0.05)
    settings = sandbox_settings_for(db_url, tmp_path / "data", "/nonexistent/opencode")
    server = await start_server(nursery, settings)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    sid = (await create(client, wid))["id"]
    failed = await events.until(sid, "failed")
    assert failed["statusReason"] == (
        "the opencode program '/nonexistent/opencode' was not found; "
        "set --opencode-bin / OPENCODE_BIN"
    )
    assert events.statuses(sid) == ["creating", "failed"]
    assert (await client.delete(f"/api/sandboxes/{sid}")).status_code == 204
    with trio.fail_after(10):
        while not any(kind == "sandbox_deleted" for kind, _ in events.seen):
            await events.changed()
    with trio.fail_after(10):  # idle streams carry heartbeat comments
        while "heartbeat" not in events.comments:
            await events.changed()
    events.close()
    await client.aclose()
    server.shutdown.set()


async def test_bad_input_and_roles(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    """Names and types are validated (400, never 500); OpenClaw without its program is a clear
    400; a guest can view but not create, pause, resume, delete or read logs."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", "/nonexistent/opencode")
    server = await start_server(nursery, settings)
    owner, wid = await owner_with_workspace(server)
    url = f"/api/workspaces/{wid}/sandboxes"
    for body, field in (
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "a", "type": "vm"}, "type"),
        ({"name": "a", "type": "local"}, "type"),
        ({"name": 5}, "name"),
    ):
        response = await owner.post(url, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["field"] == field, body
    claw = await owner.post(url, json={"name": "claw", "type": "openclaw"})
    assert claw.status_code == 400
    assert "OpenClaw is unavailable on this server" in claw.json()["error"]["message"]

    sid = (await create(owner, wid))["id"]
    guest = server.client()
    await register(guest, "guest")
    added = await owner.post(
        f"/api/workspaces/{wid}/members", json={"username": "guest", "role": "guest"}
    )
    assert added.status_code == 201
    assert (await guest.get(f"/api/sandboxes/{sid}")).status_code == 200
    assert (await guest.get(url)).status_code == 200
    assert (await guest.post(url, json={"name": "mine"})).status_code == 403
    for method, path in (("POST", "pause"), ("POST", "resume"), ("GET", "logs")):
        assert (await guest.request(method, f"/api/sandboxes/{sid}/{path}")).status_code == 403
    assert (await guest.delete(f"/api/sandboxes/{sid}")).status_code == 403
    stranger = server.client()
    await register(stranger, "stranger")
    assert (await stranger.get(f"/api/sandboxes/{sid}")).status_code == 404
    assert (await owner.get("/api/sandboxes/nope")).status_code == 404
    for client in (owner, guest, stranger):
        await client.aclose()
    server.shutdown.set()


async def test_without_bubblewrap_the_disk_is_linked_from_the_home(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    opencode_bin: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where bubblewrap cannot run and unisolated sandboxes are allowed, they start; the
    workspace disk is the `disk0` link in the home and AGENTSERVER_DISK, and pausing stops the
    process group."""

    async def no_isolation(*args: object) -> Isolation:
        return Isolation()

    monkeypatch.setattr(process_backend, "probe_isolation", no_isolation)
    settings = sandbox_settings_for(
        db_url, tmp_path / "d", opencode_bin, allow_unisolated_sandboxes="true"
    )
    server = await start_server(nursery, settings)
    assert not service(server).backend.isolation.enabled  # type: ignore[attr-defined]
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    sid = await start_running(server, client, events, wid)
    disk = server.deps.settings.data_dir / "workspaces" / wid / "disk"
    assert (home_of(server, sid) / "disk0").resolve() == disk.resolve()
    assert disk_path_in(pid_of(server, sid)).resolve() == disk.resolve()
    pid = pid_of(server, sid)
    assert (await client.post(f"/api/sandboxes/{sid}/pause")).status_code == 200
    assert (await events.until(sid, "paused", "failed"))["status"] == "paused"
    assert not alive(pid)
    assert processes_of(sid) == []
    events.close()
    await client.aclose()
    server.shutdown.set()


async def test_a_taken_port_is_retried(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    opencode_bin: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If another program takes the agent's port before it binds, the start tries another port
    (where sandboxes share the server's network: with a namespace of its own each agent has
    all its ports to itself, so namespaces are off here)."""

    async def no_namespaces(*args: object) -> str:
        await trio.lowlevel.checkpoint()
        return "network namespaces are off for this test"

    monkeypatch.setattr(process_backend, "open_plumbing", no_namespaces)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = [busy.getsockname()[1]]
        real_free_port = process_backend.free_port
        monkeypatch.setattr(
            process_backend, "free_port", lambda: ports.pop() if ports else real_free_port()
        )
        server = await start_server(
            nursery, sandbox_settings_for(db_url, tmp_path / "d", opencode_bin)
        )
        client, wid = await owner_with_workspace(server)
        events = await open_events(nursery, client, wid)
        sid = await start_running(server, client, events, wid)
        row = await service(server).get(sid)
        assert row is not None
        assert row.endpoint_port != busy.getsockname()[1]
        assert ports == []  # the busy port was really offered first
    events.close()
    await client.aclose()
    server.shutdown.set()
