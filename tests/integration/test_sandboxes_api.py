"""The sandbox API on a real server running real opencode processes (process backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from agentserver.sandboxes.service import Sandboxes
from tests.conftest import Server
from tests.support.sandboxes import (
    alive,
    open_events,
    owner_with_workspace,
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
    found: Sandboxes = server.deps.extras["sandboxes"]
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
