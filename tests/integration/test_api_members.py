"""Workspace members over real HTTP: add by username or email, roles, and the last owner."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.conftest import Server, register


async def setup(
    server: Server, *names: str
) -> tuple[dict[str, httpx.AsyncClient], dict[str, Any], str]:
    """Register `names` (the first creates the workspace); returns clients, users and its id."""
    clients = {n: server.client() for n in names}
    users = {n: await register(c, n, email=f"{n}@example.com") for n, c in clients.items()}
    ws = await clients[names[0]].post("/api/workspaces", json={"name": "w"})
    return clients, users, ws.json()["id"]


async def close(clients: dict[str, httpx.AsyncClient]) -> None:
    for client in clients.values():
        await client.aclose()


async def test_add_by_username_or_email_and_list(server: Server) -> None:
    """Members are added by username or email, developer by default, listed in join order."""
    clients, users, wid = await setup(server, "alice", "bob", "carol")
    try:
        owner = clients["alice"]
        by_name = await owner.post(f"/api/workspaces/{wid}/members", json={"username": "bob"})
        assert by_name.status_code == 201
        assert by_name.json()["role"] == "developer"
        assert by_name.json()["userId"] == users["bob"]["id"]
        by_email = await owner.post(
            f"/api/workspaces/{wid}/members", json={"email": "CAROL@example.com", "role": "Guest"}
        )
        assert by_email.status_code == 201
        assert by_email.json()["role"] == "guest"
        listed = (await clients["carol"].get(f"/api/workspaces/{wid}/members")).json()
        assert [(m["username"], m["role"]) for m in listed] == [
            ("alice", "owner"),
            ("bob", "developer"),
            ("carol", "guest"),
        ]
        assert set(listed[0]) == {"userId", "username", "email", "role", "createdAt"}
    finally:
        await close(clients)


async def test_adding_is_validated(server: Server) -> None:
    """Unknown roles are 400, unknown users 404, existing members 409, no login 400."""
    clients, _, wid = await setup(server, "alice", "bob")
    owner = clients["alice"]
    try:
        url = f"/api/workspaces/{wid}/members"
        bad_role = await owner.post(url, json={"username": "bob", "role": "admin"})
        assert bad_role.status_code == 400
        assert bad_role.json()["error"]["field"] == "role"
        assert "owner, maintainer, developer, guest" in bad_role.json()["error"]["message"]
        nobody = await owner.post(url, json={"username": "zed"})
        assert nobody.status_code == 404
        neither = await owner.post(url, json={"role": "guest"})
        assert neither.status_code == 400
        assert neither.json()["error"]["field"] == "username"
        assert (await owner.post(url, json={"username": "bob"})).status_code == 201
        again = await owner.post(url, json={"username": "bob"})
        assert again.status_code == 409
        owner_again = await owner.post(url, json={"username": "alice"})
        assert owner_again.status_code == 409
    finally:
        await close(clients)


async def test_a_maintainer_adds_members_but_never_owners(server: Server) -> None:
    """A maintainer may add maintainers, developers and guests, but not an owner."""
    clients, _, wid = await setup(server, "alice", "mia", "bob", "carol")
    try:
        url = f"/api/workspaces/{wid}/members"
        await clients["alice"].post(url, json={"username": "mia", "role": "maintainer"})
        maint = clients["mia"]
        as_owner = await maint.post(url, json={"username": "bob", "role": "owner"})
        assert as_owner.status_code == 403
        assert (
            await maint.post(url, json={"username": "bob", "role": "maintainer"})
        ).status_code == 201
        assert (
            await maint.post(url, json={"username": "carol", "role": "guest"})
        ).status_code == 201
        promote = await maint.put(
            f"{url}/{(await maint.get(url)).json()[2]['userId']}", json={"role": "owner"}
        )
        assert promote.status_code == 403
    finally:
        await close(clients)


async def test_the_owner_changes_roles_but_the_last_owner_stays(server: Server) -> None:
    """The last owner can be neither demoted nor removed; with a second owner both work."""
    clients, users, wid = await setup(server, "alice", "bob")
    try:
        owner = clients["alice"]
        url = f"/api/workspaces/{wid}/members"
        alice_id, bob_id = users["alice"]["id"], users["bob"]["id"]
        demote = await owner.put(f"{url}/{alice_id}", json={"role": "developer"})
        assert demote.status_code == 409
        assert "last owner" in demote.json()["error"]["message"]
        remove = await owner.delete(f"{url}/{alice_id}")
        assert remove.status_code == 409
        await owner.post(url, json={"username": "bob"})
        promoted = await owner.put(f"{url}/{bob_id}", json={"role": "owner"})
        assert promoted.status_code == 200
        assert promoted.json()["role"] == "owner"
        assert (await owner.put(f"{url}/{alice_id}", json={"role": "guest"})).status_code == 200
        bob_removes_alice = await clients["bob"].delete(f"{url}/{alice_id}")
        assert bob_removes_alice.status_code == 204
        listed = (await clients["bob"].get(url)).json()
        assert [(m["username"], m["role"]) for m in listed] == [("bob", "owner")]
        assert (await owner.get(url)).status_code == 404
    finally:
        await close(clients)


async def test_role_changes_are_validated(server: Server) -> None:
    """A bad role is 400 naming `role`; changing a user who is not a member is 404."""
    clients, users, wid = await setup(server, "alice", "bob")
    try:
        owner = clients["alice"]
        url = f"/api/workspaces/{wid}/members"
        bad = await owner.put(f"{url}/{users['alice']['id']}", json={"role": "superuser"})
        assert bad.status_code == 400
        assert bad.json()["error"]["field"] == "role"
        missing = await owner.put(f"{url}/{users['bob']['id']}", json={"role": "guest"})
        assert missing.status_code == 404
        gone = await owner.delete(f"{url}/{users['bob']['id']}")
        assert gone.status_code == 404
    finally:
        await close(clients)


async def test_anyone_may_leave_but_only_owners_remove_others(server: Server) -> None:
    """A guest may remove themselves (204) but not another member (403)."""
    clients, users, wid = await setup(server, "alice", "bob", "carol")
    try:
        url = f"/api/workspaces/{wid}/members"
        for name in ("bob", "carol"):
            await clients["alice"].post(url, json={"username": name, "role": "guest"})
        other = await clients["bob"].delete(f"{url}/{users['carol']['id']}")
        assert other.status_code == 403
        leave = await clients["bob"].delete(f"{url}/{users['bob']['id']}")
        assert leave.status_code == 204
        assert (await clients["bob"].get(f"/api/workspaces/{wid}")).status_code == 404
    finally:
        await close(clients)


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(server: Server) -> None:
    """Concurrent demotions are serialised: one succeeds, the other is 409, an owner remains."""
    clients, users, wid = await setup(server, "alice", "bob")
    try:
        url = f"/api/workspaces/{wid}/members"
        await clients["alice"].post(url, json={"username": "bob", "role": "owner"})
        statuses: list[int] = []

        async def demote(actor: str, target: str) -> None:
            response = await clients[actor].put(
                f"{url}/{users[target]['id']}", json={"role": "developer"}
            )
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(demote, "alice", "bob")
            nursery.start_soon(demote, "bob", "alice")
        assert sorted(statuses) in ([200, 403], [200, 409])
        owners = [m for m in (await clients["alice"].get(url)).json() if m["role"] == "owner"]
        assert len(owners) == 1
    finally:
        await close(clients)
