"""Local agent registration codes, registration and the tunnel endpoint's authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
import trio_websocket

from agentserver.tunnel import Tunnel, WebSocketLink
from agentserver.tunnel.connection import Role
from tests.conftest import Server, make_settings, register, start_server
from tests.support.workspace_events import watch_statuses


@dataclass
class Team:
    server: Server
    owner: httpx.AsyncClient
    workspace_id: str
    db_url: str

    async def code(self, client: httpx.AsyncClient | None = None) -> str:
        response = await (client or self.owner).post(
            f"/api/workspaces/{self.workspace_id}/agent-code"
        )
        assert response.status_code == 201, response.text
        return str(response.json()["code"])

    async def register_agent(self, code: str, name: str = "laptop") -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.server.url, timeout=30) as agent:
            return await agent.post("/api/agent/register", json={"code": code, "name": name})

    async def sql(self, query: str, *params: Any) -> None:
        def run() -> None:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                conn.execute(query, params)  # type: ignore[arg-type]

        await trio.to_thread.run_sync(run)


@pytest.fixture
async def team(server: Server, db_url: str) -> AsyncIterator[Team]:
    async with server.client() as owner:
        await register(owner, "owner")
        workspace = (await owner.post("/api/workspaces", json={"name": "w"})).json()
        yield Team(server, owner, workspace["id"], db_url)


@asynccontextmanager
async def tunnel_to(
    server: Server, sandbox_id: str, token: str | None, query: str = ""
) -> AsyncIterator[Tunnel]:
    """A client-side tunnel dialled with the token in the Authorization header."""
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    url = f"ws://127.0.0.1:{server.port}/api/tunnel/{sandbox_id}{query}"
    async with (
        trio_websocket.open_websocket_url(url, extra_headers=headers) as ws,
        trio.open_nursery() as nursery,
    ):
        tunnel = Tunnel(WebSocketLink(ws), role=Role.CLIENT)
        await nursery.start(tunnel.run)
        yield tunnel
        await tunnel.aclose()


async def rejected(server: Server, sandbox_id: str, token: str | None, query: str = "") -> int:
    with pytest.raises(trio_websocket.ConnectionRejected) as caught:
        async with tunnel_to(server, sandbox_id, token, query):
            pass
    return int(caught.value.status_code)


async def test_code_registers_a_local_sandbox_once(team: Team) -> None:
    """A code gives one offline `local` sandbox created by the code's user; a second use of the
    code is refused with 410."""
    code = await team.code()
    first = await team.register_agent(code, "My MacBook")
    assert first.status_code == 201, first.text
    body = first.json()
    assert set(body) == {"sandboxId", "tunnelToken", "workspaceId"}
    assert body["workspaceId"] == team.workspace_id
    sandbox = (await team.owner.get(f"/api/sandboxes/{body['sandboxId']}")).json()
    assert (sandbox["type"], sandbox["status"], sandbox["name"]) == (
        "local",
        "offline",
        "My MacBook",
    )
    me = (await team.owner.get("/api/auth/me")).json()
    assert sandbox["createdBy"] == (me.get("user") or me)["id"]
    again = await team.register_agent(code)
    assert again.status_code == 410
    assert "already used" in again.json()["error"]["message"]


async def test_code_and_token_are_stored_hashed(team: Team) -> None:
    """Neither the code nor the tunnel token appears in the database, only their hashes."""
    code = await team.code()
    token = (await team.register_agent(code)).json()["tunnelToken"]

    def dump() -> str:
        with psycopg.connect(team.db_url) as conn:
            rows = conn.execute("SELECT code_hash FROM agent_codes").fetchall()
            rows += conn.execute("SELECT tunnel_token_hash, agent_secret FROM sandboxes").fetchall()
        return repr(rows)

    stored = await trio.to_thread.run_sync(dump)
    assert code not in stored
    assert token not in stored


async def test_expired_code_is_refused(team: Team) -> None:
    """A code past its 10 minutes gets a 410 saying it expired."""
    code = await team.code()
    await team.sql("UPDATE agent_codes SET expires_at = now() - interval '1 second'")
    response = await team.register_agent(code)
    assert response.status_code == 410
    assert "expired" in response.json()["error"]["message"]


async def test_code_expires_in_ten_minutes(team: Team) -> None:
    """The answer's expiresAt is ten minutes from now."""
    response = await team.owner.post(f"/api/workspaces/{team.workspace_id}/agent-code")
    from datetime import UTC, datetime

    expires = datetime.fromisoformat(response.json()["expiresAt"].replace("Z", "+00:00"))
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 540 < left <= 600


async def test_wrong_code_is_401_and_guessing_is_rate_limited(team: Team) -> None:
    """Wrong codes get 401 until ten failures, then 429 with Retry-After, even for a right code."""
    for attempt in range(10):
        response = await team.register_agent(f"wrong-{attempt}")
        assert response.status_code == 401, response.text
    code = await team.code()
    limited = await team.register_agent(code)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1


async def test_register_validates_the_body(team: Team) -> None:
    """A missing name is a 400 naming the field, not a 500."""
    async with httpx.AsyncClient(base_url=team.server.url) as agent:
        response = await agent.post("/api/agent/register", json={"code": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "name"


async def test_guest_cannot_create_codes(team: Team) -> None:
    """A guest of the workspace gets 403 for a registration code."""
    async with team.server.client() as guest:
        await register(guest, "guest")
        added = await team.owner.post(
            f"/api/workspaces/{team.workspace_id}/members",
            json={"username": "guest", "role": "guest"},
        )
        assert added.status_code == 201
        response = await guest.post(f"/api/workspaces/{team.workspace_id}/agent-code")
    assert response.status_code == 403


async def test_tunnel_token_only_in_the_header(team: Team) -> None:
    """The tunnel opens with the token in Authorization; in the query string, absent or wrong,
    it is refused."""
    body = (await team.register_agent(await team.code())).json()
    sid, token = body["sandboxId"], body["tunnelToken"]
    assert await rejected(team.server, sid, None, f"?token={token}") == 400
    assert await rejected(team.server, sid, None) == 401
    assert await rejected(team.server, sid, "not-the-token") == 401
    async with watch_statuses(team.owner, team.workspace_id) as watch:
        async with tunnel_to(team.server, sid, token) as tunnel:
            await watch.until(sid, "running")
            assert not tunnel.closed
            assert team.server.deps.hub.get(sid) is not None
        await watch.until(sid, "offline")


async def test_deleting_the_sandbox_revokes_the_token_and_closes_the_tunnel(team: Team) -> None:
    """DELETE of a local sandbox ends its live tunnel and the token no longer opens one."""
    body = (await team.register_agent(await team.code())).json()
    sid, token = body["sandboxId"], body["tunnelToken"]
    hub = team.server.deps.hub
    async with (
        watch_statuses(team.owner, team.workspace_id) as watch,
        tunnel_to(team.server, sid, token) as tunnel,
    ):
        await watch.until(sid, "running")
        server_side = hub.get(sid)
        assert server_side is not None
        deleted = await team.owner.delete(f"/api/sandboxes/{sid}")
        assert deleted.status_code == 204
        await hub.wait_finished(server_side)
        with trio.fail_after(10):
            while not tunnel.closed:
                await trio.sleep(0.01)
    assert hub.get(sid) is None
    assert await rejected(team.server, sid, token) == 401


async def test_a_server_start_shows_every_local_sandbox_offline(
    db_url: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """No tunnel survives a restart: a local sandbox left `running` is `offline` after a start."""
    first = await start_server(nursery, make_settings(db_url, tmp_path / "data"))
    async with first.client() as owner:
        await register(owner, "owner")
        workspace = (await owner.post("/api/workspaces", json={"name": "w"})).json()
        team = Team(first, owner, workspace["id"], db_url)
        sid = (await team.register_agent(await team.code())).json()["sandboxId"]
    await team.sql("UPDATE sandboxes SET status = 'running' WHERE id = %s", sid)
    first.shutdown.set()
    second = await start_server(nursery, make_settings(db_url, tmp_path / "data"))
    async with second.client() as owner:
        signed_in = await owner.post(
            "/api/auth/login", json={"username": "owner", "password": "correct-horse"}
        )
        assert signed_in.status_code == 200, signed_in.text
        sandbox = (await owner.get(f"/api/sandboxes/{sid}")).json()
    assert sandbox["status"] == "offline"
    second.shutdown.set()
