"""What a member loses when removed or demoted: unspent agent codes and open event streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Server, make_settings, register, start_server
from tests.support.accounts import owner_of_workspace


@dataclass
class Team:
    server: Server
    owner: httpx.AsyncClient
    dev: httpx.AsyncClient
    dev_id: str
    workspace_id: str

    @property
    def dev_url(self) -> str:
        return f"/api/workspaces/{self.workspace_id}/members/{self.dev_id}"

    async def code(self) -> str:
        response = await self.dev.post(f"/api/workspaces/{self.workspace_id}/agent-code")
        assert response.status_code == 201, response.text
        return str(response.json()["code"])

    async def register_agent(self, code: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.server.url, timeout=30) as agent:
            return await agent.post("/api/agent/register", json={"code": code, "name": "laptop"})

    async def sandboxes(self) -> list[dict[str, Any]]:
        response = await self.owner.get(f"/api/workspaces/{self.workspace_id}/sandboxes")
        assert response.status_code == 200, response.text
        return list(response.json())


@pytest.fixture
async def team(server: Server) -> AsyncIterator[Team]:
    """An owner and a developer in one workspace."""
    async with server.client() as owner, server.client() as dev:
        _, workspace = await owner_of_workspace(owner)
        dev_user = await register(dev, "dev")
        added = await owner.post(
            f"/api/workspaces/{workspace['id']}/members",
            json={"username": "dev", "role": "developer"},
        )
        assert added.status_code == 201, added.text
        yield Team(server, owner, dev, dev_user["id"], workspace["id"])


async def test_a_removed_members_unspent_agent_code_registers_nothing(team: Team) -> None:
    """After the owner removes a developer, the code that developer minted registers no sandbox."""
    code = await team.code()
    removed = await team.owner.delete(team.dev_url)
    assert removed.status_code == 204
    response = await team.register_agent(code)
    assert response.status_code in (401, 403), response.text
    assert "error" in response.json()
    assert await team.sandboxes() == []


async def test_a_member_demoted_to_guest_loses_their_unspent_agent_code(team: Team) -> None:
    """A developer demoted to guest can no longer spend a code minted before the demotion."""
    code = await team.code()
    demoted = await team.owner.put(team.dev_url, json={"role": "guest"})
    assert demoted.status_code == 200, demoted.text
    response = await team.register_agent(code)
    assert response.status_code in (401, 403), response.text
    assert await team.sandboxes() == []


async def test_a_promotion_keeps_the_members_agent_code(team: Team) -> None:
    """A developer made maintainer may still spend the code they minted before."""
    code = await team.code()
    promoted = await team.owner.put(team.dev_url, json={"role": "maintainer"})
    assert promoted.status_code == 200, promoted.text
    response = await team.register_agent(code)
    assert response.status_code == 201, response.text


async def test_a_code_whose_creator_lost_the_role_after_minting_is_refused(team: Team) -> None:
    """A code that survived its creator's demotion (changed behind the API's back) is refused
    at spend time with 403, because the creator's current role is checked then."""
    code = await team.code()
    await team.server.deps.db.transaction(
        lambda tx: tx.exec(
            "set_member_role", workspace_id=team.workspace_id, user_id=team.dev_id, role="guest"
        )
    )
    response = await team.register_agent(code)
    assert response.status_code == 403, response.text
    assert await team.sandboxes() == []


async def stream_ends(client: httpx.AsyncClient, workspace_id: str, act: Any) -> bool:
    """Open the workspace event stream with `client`, run `act()` once it is connected, and
    say whether the server then ended the stream (within 20 s; heartbeats come every 15 s)."""
    async with client.stream(
        "GET", f"/api/workspaces/{workspace_id}/events", timeout=httpx.Timeout(30, read=None)
    ) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert await anext(lines) == ": connected"
        await act()
        with trio.move_on_after(20):
            async for _ in lines:
                pass
            return True
    return False


async def test_removing_a_member_ends_their_open_event_stream(team: Team) -> None:
    """A removed member's open workspace event stream ends instead of reporting on."""

    async def remove() -> None:
        assert (await team.owner.delete(team.dev_url)).status_code == 204

    assert await stream_ends(team.dev, team.workspace_id, remove)
    again = await team.dev.get(f"/api/workspaces/{team.workspace_id}/events")
    assert again.status_code == 404


async def test_demoting_a_member_ends_their_open_event_stream(team: Team) -> None:
    """A demoted member's stream ends, so the browser reconnects under the new role."""

    async def demote() -> None:
        assert (await team.owner.put(team.dev_url, json={"role": "guest"})).status_code == 200

    assert await stream_ends(team.dev, team.workspace_id, demote)


async def test_a_removal_on_one_replica_ends_the_stream_held_on_another(
    team: Team, nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """The stream is on replica B, the removal on replica A: B ends it too (the revocation is
    announced to every replica), and B refuses the stream afterwards."""
    other = await start_server(nursery, make_settings(db_url, tmp_path / "other"))
    async with other.client(cookies=team.dev.cookies) as dev_on_b:

        async def remove_on_a() -> None:
            assert (await team.owner.delete(team.dev_url)).status_code == 204

        assert await stream_ends(dev_on_b, team.workspace_id, remove_on_a)
        again = await dev_on_b.get(f"/api/workspaces/{team.workspace_id}/events")
        assert again.status_code == 404
    other.shutdown.set()
