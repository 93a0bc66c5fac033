"""Workspaces over real HTTP: create, list, read, rename, delete, and what non-members see."""

from __future__ import annotations

from datetime import datetime

from tests.conftest import Server, register


def is_rfc3339(text: str) -> bool:
    return text.endswith("Z") and datetime.fromisoformat(text).tzinfo is not None


async def test_create_makes_the_caller_owner(server: Server) -> None:
    """POST answers 201: a camelCase workspace, role owner, times in RFC 3339."""
    async with server.client() as client:
        await register(client, "alice")
        response = await client.post("/api/workspaces", json={"name": "Team"})
        assert response.status_code == 201
        ws = response.json()
        assert set(ws) == {
            "id",
            "name",
            "role",
            "createdAt",
            "updatedAt",
            "idleTimeoutSeconds",  # its own idle timeout (migration 0012), and the server's
            "defaultIdleTimeoutSeconds",
            "maxIdleTimeoutSeconds",
            "membersManageAllSandboxes",
        }
        assert (ws["name"], ws["role"]) == ("Team", "owner")
        assert is_rfc3339(ws["createdAt"])
        assert is_rfc3339(ws["updatedAt"])
        members = (await client.get(f"/api/workspaces/{ws['id']}/members")).json()
        assert [(m["username"], m["role"]) for m in members] == [("alice", "owner")]


async def test_list_shows_only_my_workspaces_with_my_role(server: Server) -> None:
    """Each user lists the workspaces they belong to, oldest first, with their own role."""
    async with server.client() as alice, server.client() as bob:
        await register(alice, "alice")
        await register(bob, "bob")
        first = (await alice.post("/api/workspaces", json={"name": "first"})).json()
        await alice.post("/api/workspaces", json={"name": "second"})
        await bob.post("/api/workspaces", json={"name": "bobs"})
        await alice.post(
            f"/api/workspaces/{first['id']}/members", json={"username": "bob", "role": "guest"}
        )
        mine = (await alice.get("/api/workspaces")).json()
        assert [(w["name"], w["role"]) for w in mine] == [("first", "owner"), ("second", "owner")]
        bobs = (await bob.get("/api/workspaces")).json()
        assert sorted((w["name"], w["role"]) for w in bobs) == [
            ("bobs", "owner"),
            ("first", "guest"),
        ]


async def test_get_rename_and_delete(server: Server) -> None:
    """A member reads the workspace; the owner renames and deletes it, after which it is gone."""
    async with server.client() as client:
        await register(client, "alice")
        ws = (await client.post("/api/workspaces", json={"name": "old"})).json()
        got = await client.get(f"/api/workspaces/{ws['id']}")
        assert got.status_code == 200
        assert got.json() == ws
        renamed = await client.patch(f"/api/workspaces/{ws['id']}", json={"name": "new"})
        assert renamed.status_code == 200
        assert renamed.json()["name"] == "new"
        deleted = await client.delete(f"/api/workspaces/{ws['id']}")
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert (await client.get(f"/api/workspaces/{ws['id']}")).status_code == 404
        assert (await client.get("/api/workspaces")).json() == []


async def test_a_non_member_learns_nothing(server: Server) -> None:
    """For a non-member, an existing workspace answers exactly like one that does not exist."""
    async with server.client() as alice, server.client() as mallory:
        await register(alice, "alice")
        await register(mallory, "mallory")
        ws = (await alice.post("/api/workspaces", json={"name": "secret"})).json()
        for method, suffix, body in [
            ("GET", "", None),
            ("DELETE", "", None),
            ("PATCH", "", {"name": "x"}),
            ("GET", "/members", None),
            ("POST", "/members", {"username": "mallory"}),
        ]:
            real = await mallory.request(method, f"/api/workspaces/{ws['id']}{suffix}", json=body)
            fake = await mallory.request(method, f"/api/workspaces/no-such-id{suffix}", json=body)
            assert real.status_code == fake.status_code == 404, (method, suffix)
            assert real.json() == fake.json()


async def test_workspace_routes_need_a_session(server: Server) -> None:
    """Anonymous callers get 401 on the workspace collection."""
    async with server.client() as client:
        assert (await client.get("/api/workspaces")).status_code == 401
        assert (await client.post("/api/workspaces", json={"name": "x"})).status_code == 401


async def test_names_are_validated(server: Server) -> None:
    """An empty, too long or non-string name is a 400 naming `name`."""
    async with server.client() as client:
        await register(client, "alice")
        for body in ({"name": ""}, {"name": "x" * 101}, {"name": 5}, {}):
            response = await client.post("/api/workspaces", json=body)
            assert response.status_code == 400, body
            assert response.json()["error"]["field"] == "name", body
        blank = await client.post("/api/workspaces", json={"name": "   "})
        assert blank.status_code == 400
        assert blank.json()["error"]["field"] == "name"
