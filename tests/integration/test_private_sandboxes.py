"""Private sandboxes and who may manage which sandbox, across the role matrix: owner,
maintainer, the developer who created the sandbox, another developer and a guest, on private
and shared sandboxes, with and without the workspace's `membersManageAllSandboxes`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Server, register
from tests.support.accounts import add_member, owner_of_workspace
from tests.support.proxy_world import World
from tests.support.sandbox_login import redeem, sandbox_client
from tests.support.workspace_events import open_events

OWNER, MAINTAINER, CREATOR, OTHER, GUEST = "owner", "maintainer", "creator", "other", "guest"
CALLERS = (OWNER, MAINTAINER, CREATOR, OTHER, GUEST)
ROLES = {MAINTAINER: "maintainer", CREATOR: "developer", OTHER: "developer", GUEST: "guest"}
WITHHELD_KEYS = {
    "id",
    "name",
    "type",
    "status",
    "workspaceId",
    "createdBy",
    "createdAt",
    "updatedAt",
    "private",
}


@dataclass
class Team:
    clients: dict[str, httpx.AsyncClient]
    users: dict[str, dict[str, Any]]
    workspace_id: str

    async def sandbox(self, name: str, private: bool) -> dict[str, Any]:
        """A sandbox the creator (a developer) made, private or not."""
        created = await self.clients[CREATOR].post(
            f"/api/workspaces/{self.workspace_id}/sandboxes",
            json={"name": name, "private": private},
        )
        assert created.status_code == 201, created.text
        assert created.json()["private"] is private
        return dict(created.json())

    async def members_manage_all(self, on: bool) -> None:
        changed = await self.clients[OWNER].patch(
            f"/api/workspaces/{self.workspace_id}", json={"membersManageAllSandboxes": on}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["membersManageAllSandboxes"] is on


@pytest.fixture
async def team(server: Server) -> AsyncIterator[Team]:
    """An owner with a workspace, and a maintainer, two developers and a guest in it."""
    clients = {name: server.client() for name in CALLERS}
    try:
        owner, workspace = await owner_of_workspace(clients[OWNER])
        users = {OWNER: owner}
        for name, role in ROLES.items():
            users[name] = await register(clients[name], name)
            await add_member(clients[OWNER], workspace["id"], name, role)
        yield Team(clients, users, workspace["id"])
    finally:
        for client in clients.values():
            await client.aclose()


def sees_in_full(caller: str, private: bool) -> bool:
    return not private or caller in (OWNER, MAINTAINER, CREATOR)


def may_manage(caller: str, members_manage_all: bool) -> bool:
    return caller in (OWNER, MAINTAINER, CREATOR) or (caller == OTHER and members_manage_all)


def verdict(response: httpx.Response) -> str:
    if response.status_code == 403:
        assert response.json()["error"]["message"], response.text
        return "denied"
    assert response.status_code in (200, 204, 302, 409), response.text
    return "allowed"


@pytest.mark.parametrize("members_manage_all", [False, True])
@pytest.mark.parametrize("private", [False, True])
async def test_every_caller_on_a_developers_sandbox(
    team: Team, private: bool, members_manage_all: bool
) -> None:
    """Read, list, open, logs, toggle, pause, resume and delete answer each caller as the role
    matrix says for a private or shared sandbox, with the workspace's setting off or on."""
    await team.members_manage_all(members_manage_all)
    sandbox = await team.sandbox("box", private)
    sid, wrong = sandbox["id"], []
    for caller in CALLERS:
        client = team.clients[caller]
        full = sees_in_full(caller, private)
        got = {
            "read": (await client.get(f"/api/sandboxes/{sid}")).json(),
            "listed": next(
                s
                for s in (await client.get(f"/api/workspaces/{team.workspace_id}/sandboxes")).json()
                if s["id"] == sid
            ),
        }
        for what, shown in got.items():
            if ("url" in shown) != full or shown["private"] is not private:
                wrong.append(f"{caller} {what}: {shown}")
            if not full and set(shown) != WITHHELD_KEYS:
                wrong.append(f"{caller} {what} shows too much: {sorted(shown)}")
        answers = {
            "open": (verdict(await client.get(f"/api/sandboxes/{sid}/open")), full),
            "logs": (
                verdict(await client.get(f"/api/sandboxes/{sid}/logs")),
                full and caller != GUEST,
            ),
            "toggle": (
                verdict(await client.patch(f"/api/sandboxes/{sid}", json={"private": private})),
                caller in (OWNER, MAINTAINER, CREATOR),
            ),
            "pause": (
                verdict(await client.post(f"/api/sandboxes/{sid}/pause")),
                may_manage(caller, members_manage_all),
            ),
            "resume": (
                verdict(await client.post(f"/api/sandboxes/{sid}/resume")),
                may_manage(caller, members_manage_all),
            ),
        }
        for what, (answer, allowed) in answers.items():
            if answer != ("allowed" if allowed else "denied"):
                wrong.append(f"{caller} {what}: {answer}, expected allowed={allowed}")
    for n, caller in enumerate(CALLERS):
        doomed = await team.sandbox(f"doomed-{n}", private)
        deleted = verdict(await team.clients[caller].delete(f"/api/sandboxes/{doomed['id']}"))
        if deleted != ("allowed" if may_manage(caller, members_manage_all) else "denied"):
            wrong.append(f"{caller} delete: {deleted}")
    assert not wrong, "\n".join(wrong)


async def test_the_private_flag_toggles_and_is_shown(team: Team) -> None:
    """The creator makes a shared sandbox private and shared again; others see the change,
    and a browser that may not open the private one gets a styled refusal page."""
    sid = (await team.sandbox("box", False))["id"]
    creator, other = team.clients[CREATOR], team.clients[OTHER]
    made = await creator.patch(f"/api/sandboxes/{sid}", json={"private": True})
    assert made.status_code == 200, made.text
    assert made.json()["private"] is True
    seen = (await other.get(f"/api/sandboxes/{sid}")).json()
    assert seen["private"] is True
    assert "url" not in seen
    page = await other.get(f"/api/sandboxes/{sid}/open", headers={"Accept": "text/html"})
    assert page.status_code == 403
    assert page.headers["content-type"].startswith("text/html")
    assert "private" in page.text
    shared = await creator.patch(f"/api/sandboxes/{sid}", json={"private": False})
    assert shared.status_code == 200
    assert shared.json()["private"] is False
    assert (await other.get(f"/api/sandboxes/{sid}/open")).status_code == 302


async def test_only_owners_and_maintainers_change_the_workspace_setting(team: Team) -> None:
    """`membersManageAllSandboxes` starts off; owners and maintainers may change it through the
    workspace PATCH, developers and guests get 403 and it stays as it was."""
    url = f"/api/workspaces/{team.workspace_id}"
    assert (await team.clients[OTHER].get(url)).json()["membersManageAllSandboxes"] is False
    for caller, status in ((CREATOR, 403), (GUEST, 403), (MAINTAINER, 200), (OWNER, 200)):
        response = await team.clients[caller].patch(url, json={"membersManageAllSandboxes": True})
        assert response.status_code == status, (caller, response.text)
    assert (await team.clients[GUEST].get(url)).json()["membersManageAllSandboxes"] is True
    both = await team.clients[MAINTAINER].patch(
        url, json={"name": "Renamed", "membersManageAllSandboxes": False}
    )
    assert both.status_code == 200, both.text
    assert (both.json()["name"], both.json()["membersManageAllSandboxes"]) == ("Renamed", False)
    assert (await team.clients[OWNER].patch(url, json={})).status_code == 400


async def sandbox_ok(sub: httpx.AsyncClient) -> bool:
    """Whether a sandbox-host client's session still reaches the agent."""
    response = await sub.get("/json")
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


async def test_making_a_sandbox_private_ends_another_members_session(world: World) -> None:
    """When its creator makes a sandbox private, another developer's open sandbox-host session
    is refused at once (though just used, so cached); the creator's and the owner's go on."""
    sid = await world.sandbox()
    creator = await world.member("creator", "developer")
    other = await world.member("other", "developer")
    creator_id = (await creator.get("/api/auth/me")).json()["id"]
    await world.sql("UPDATE sandboxes SET created_by = %s WHERE id = %s", creator_id, sid)
    url = world.server.url
    try:
        await ends_on_private(
            creator,
            other,
            await sandbox_client(url, creator, sid),
            await sandbox_client(url, other, sid),
            await sandbox_client(url, world.owner, sid),
            sid,
        )
    finally:
        await creator.aclose()
        await other.aclose()


async def ends_on_private(
    creator: httpx.AsyncClient,
    other: httpx.AsyncClient,
    as_creator: httpx.AsyncClient,
    as_other: httpx.AsyncClient,
    as_owner: httpx.AsyncClient,
    sid: str,
) -> None:
    async with as_creator, as_other, as_owner:
        assert await sandbox_ok(as_other)
        made = await creator.patch(f"/api/sandboxes/{sid}", json={"private": True})
        assert made.status_code == 200, made.text
        assert not await sandbox_ok(as_other)
        assert await sandbox_ok(as_creator)
        assert await sandbox_ok(as_owner)
        # Opening it again is refused too: /open and its ticket check the flag.
        assert (await other.get(f"/api/sandboxes/{sid}/open")).status_code == 403


async def test_a_ticket_minted_before_the_sandbox_went_private_is_refused(world: World) -> None:
    """A ticket another developer got while the sandbox was shared opens nothing once the
    owner has made it private (redemption checks the flag)."""
    sid = await world.sandbox()
    other = await world.member("other", "developer")
    try:
        ticket = await world.ticket_url(other, sid)
        made = await world.owner.patch(f"/api/sandboxes/{sid}", json={"private": True})
        assert made.status_code == 200, made.text
        async with world.sub(sid) as sub:
            response = await redeem(sub, ticket, world.nonces[sid])
        assert "agentserver_sandbox" not in response.cookies
    finally:
        await other.aclose()


async def test_making_a_sandbox_private_ends_another_members_open_stream(world: World) -> None:
    """An event stream another developer has open through the sandbox's host ends when the
    owner makes the sandbox private, and the agent sees its client go."""
    sid = await world.sandbox()
    other = await world.member("other", "developer")
    try:
        token = await world.open(sid, other)
        async with world.sub(sid, token) as sub, sub.stream("GET", "/forever") as response:
            assert response.status_code == 200
            chunks = response.aiter_raw()
            await anext(chunks)
            made = await world.owner.patch(f"/api/sandboxes/{sid}", json={"private": True})
            assert made.status_code == 200, made.text
            with trio.fail_after(10):
                with contextlib.suppress(httpx.HTTPError):
                    async for _ in chunks:
                        pass
        with trio.fail_after(10):
            await world.upstream.stream_closed.wait()
    finally:
        await other.aclose()


async def test_the_event_stream_withholds_a_private_sandbox_from_others(
    team: Team, nursery: trio.Nursery
) -> None:
    """Another developer's workspace event stream carries someone else's private sandbox
    withheld while the owner's carries it in full; made shared, it comes in full to both."""
    as_other = await open_events(nursery, team.clients[OTHER], team.workspace_id)
    as_owner = await open_events(nursery, team.clients[OWNER], team.workspace_id)
    sid = (await team.sandbox("box", True))["id"]
    statuses = ("creating", "running", "failed")
    withheld = await as_other.until(sid, *statuses)
    assert set(withheld) == WITHHELD_KEYS
    assert "url" in await as_owner.until(sid, *statuses)
    after = len(as_other.seen)
    shared = await team.clients[CREATOR].patch(f"/api/sandboxes/{sid}", json={"private": False})
    assert shared.status_code == 200, shared.text
    with trio.fail_after(30):
        while not any(
            kind == "sandbox" and data["id"] == sid and data["private"] is False
            for kind, data in as_other.seen[after:]
        ):
            await as_other.changed()
    shown = next(d for k, d in as_other.seen[after:] if k == "sandbox" and not d["private"])
    assert "url" in shown
    as_other.close()
    as_owner.close()


async def test_a_taken_name_leaves_the_setting_as_it_was(team: Team) -> None:
    """A workspace PATCH whose new name is taken answers 409 and changes no setting either."""
    owner = team.clients[OWNER]
    assert (await owner.post("/api/workspaces", json={"name": "taken"})).status_code == 201
    url = f"/api/workspaces/{team.workspace_id}"
    both = await owner.patch(url, json={"name": "taken", "membersManageAllSandboxes": True})
    assert both.status_code == 409, both.text
    assert (await owner.get(url)).json()["membersManageAllSandboxes"] is False
