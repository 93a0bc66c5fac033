"""Unique names: a user's workspaces and a workspace's sandboxes, enforced by the database
(migration 0009) and answered with a 409 that names the duplicate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from agentserver.db.migrate import apply_migrations, migration_files
from tests.conftest import Server, make_settings, register, start_server


@pytest.fixture
async def sandbox_server(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> AsyncIterator[Server]:
    """A server whose sandboxes cannot start (no agent binary): creating one is quick."""
    settings = make_settings(db_url, tmp_path / "data", opencode_bin="/nonexistent/opencode")
    srv = await start_server(nursery, settings)
    yield srv
    srv.shutdown.set()


async def test_a_users_workspace_names_are_unique_ignoring_case_and_spaces(
    server: Server,
) -> None:
    """Creating a second workspace named like one of yours (other case, extra spaces) is a
    409 naming it; another user may use the same name."""
    async with server.client() as alice, server.client() as bob:
        await register(alice, "alice")
        await register(bob, "bob")
        assert (await alice.post("/api/workspaces", json={"name": "Demo"})).status_code == 201
        again = await alice.post("/api/workspaces", json={"name": "  dEMO "})
        assert again.status_code == 409, again.text
        error = again.json()["error"]
        assert error["code"] == "conflict"
        assert error["message"] == 'you already have a workspace named "dEMO"'
        assert error["field"] == "name"
        assert (await bob.post("/api/workspaces", json={"name": "demo"})).status_code == 201
        names = [w["name"] for w in (await alice.get("/api/workspaces")).json()]
        assert names == ["Demo"]


async def test_renaming_onto_another_of_the_owners_names_is_refused(server: Server) -> None:
    """A rename to the name of another of the owner's workspaces is a 409 naming it (also
    when a maintainer renames); a rename that only changes the case of its own name is fine."""
    async with server.client() as alice, server.client() as bob:
        await register(alice, "alice")
        await register(bob, "bob")
        first = (await alice.post("/api/workspaces", json={"name": "alpha"})).json()
        second = (await alice.post("/api/workspaces", json={"name": "beta"})).json()
        clash = await alice.patch(f"/api/workspaces/{second['id']}", json={"name": "ALPHA"})
        assert clash.status_code == 409, clash.text
        assert clash.json()["error"]["message"] == 'you already have a workspace named "ALPHA"'
        added = await alice.post(
            f"/api/workspaces/{second['id']}/members",
            json={"username": "bob", "role": "maintainer"},
        )
        assert added.status_code == 201, added.text
        by_bob = await bob.patch(f"/api/workspaces/{second['id']}", json={"name": "Alpha"})
        assert by_bob.status_code == 409, by_bob.text
        assert by_bob.json()["error"]["message"] == (
            'its owner alice already has a workspace named "Alpha"'
        )
        recased = await alice.patch(f"/api/workspaces/{first['id']}", json={"name": "Alpha"})
        assert recased.status_code == 200, recased.text
        assert recased.json()["name"] == "Alpha"


async def test_a_workspaces_sandbox_names_are_unique(sandbox_server: Server) -> None:
    """A second sandbox of the same name (ignoring case and spaces) in one workspace is a 409
    naming it; another workspace may use the name."""
    async with sandbox_server.client() as alice:
        await register(alice, "alice")
        one = (await alice.post("/api/workspaces", json={"name": "one"})).json()
        two = (await alice.post("/api/workspaces", json={"name": "two"})).json()
        made = await alice.post(f"/api/workspaces/{one['id']}/sandboxes", json={"name": "Web"})
        assert made.status_code == 201, made.text
        again = await alice.post(f"/api/workspaces/{one['id']}/sandboxes", json={"name": " web  "})
        assert again.status_code == 409, again.text
        assert again.json()["error"]["message"] == (
            'this workspace already has a sandbox named "web"'
        )
        elsewhere = await alice.post(f"/api/workspaces/{two['id']}/sandboxes", json={"name": "web"})
        assert elsewhere.status_code == 201, elsewhere.text
        listed = await alice.get(f"/api/workspaces/{one['id']}/sandboxes")
        assert [s["name"] for s in listed.json()] == ["Web"]


async def test_concurrent_creates_of_one_name_make_one_workspace(server: Server) -> None:
    """Eight creates of the same name at once: one 201, the rest 409 (the unique index)."""
    async with server.client() as alice:
        await register(alice, "alice")
        statuses: list[int] = []

        async def create() -> None:
            response = await alice.post("/api/workspaces", json={"name": "race"})
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(create)
        assert sorted(statuses) == [201] + [409] * 7, statuses


def test_migration_0009_renames_existing_duplicates(db_url: str, tmp_path: Path) -> None:
    """Upgrading a database that already has duplicate names keeps the oldest name and gives
    every later duplicate the first free " (n)" suffix, within 100 characters."""
    files = migration_files()
    for path in files:
        if path.stem < "0009":
            (tmp_path / path.name).write_text(path.read_text())
    apply_migrations(db_url, tmp_path)
    long = "x" * 100
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, username) VALUES ('u1', 'ann'), ('u2', 'ben')")
        workspaces = [
            ("w1", "Demo", "u1"),
            ("w2", "demo ", "u1"),
            ("w3", "Demo (2)", "u1"),
            ("w4", "DEMO", "u1"),
            ("w5", "demo", "u2"),
            ("w6", long, "u1"),
            ("w7", long, "u1"),
        ]
        for n, (wid, name, owner) in enumerate(workspaces):
            conn.execute(
                "INSERT INTO workspaces (id, name, created_at) VALUES"
                " (%s, %s, now() + make_interval(secs => %s))",
                (wid, name, n),
            )
            conn.execute(
                "INSERT INTO workspace_members (workspace_id, user_id, role)"
                " VALUES (%s, %s, 'owner')",
                (wid, owner),
            )
        for n, (sid, wid, name) in enumerate(
            [("s1", "w1", "web"), ("s2", "w1", "Web"), ("s3", "w5", "web")]
        ):
            conn.execute(
                "INSERT INTO sandboxes (id, workspace_id, name, type, agent_secret, created_at)"
                " VALUES (%s, %s, %s, 'opencode', 'x', now() + make_interval(secs => %s))",
                (sid, wid, name, n),
            )
    for path in files:
        (tmp_path / path.name).write_text(path.read_text())
    assert "0009_accounts_and_names" in apply_migrations(db_url, tmp_path)
    with psycopg.connect(db_url) as conn:
        names = dict(conn.execute("SELECT id, name FROM workspaces").fetchall())
        sandboxes = dict(conn.execute("SELECT id, name FROM sandboxes").fetchall())
        owners = dict(conn.execute("SELECT id, created_by FROM workspaces").fetchall())
    assert names == {
        "w1": "Demo",
        "w2": "demo (3)",
        "w3": "Demo (2)",
        "w4": "DEMO (4)",
        "w5": "demo",
        "w6": long,
        "w7": "x" * 96 + " (2)",
    }
    assert sandboxes == {"s1": "web", "s2": "Web (2)", "s3": "web"}
    assert owners["w5"] == "u2"
    assert owners["w1"] == "u1"


async def test_a_local_agent_with_a_taken_name_keeps_its_code(server: Server) -> None:
    """Registering a local agent under a name the workspace already has is a 409 naming it,
    and the one-time code stays unspent: the same code then registers another name."""
    async with server.client() as owner, httpx.AsyncClient(base_url=server.url) as agent:
        await register(owner, "owner")
        wid = (await owner.post("/api/workspaces", json={"name": "w"})).json()["id"]
        first = (await owner.post(f"/api/workspaces/{wid}/agent-code")).json()["code"]
        made = await agent.post("/api/agent/register", json={"code": first, "name": "laptop"})
        assert made.status_code == 201, made.text
        code = (await owner.post(f"/api/workspaces/{wid}/agent-code")).json()["code"]
        taken = await agent.post("/api/agent/register", json={"code": code, "name": "Laptop"})
        assert taken.status_code == 409, taken.text
        assert taken.json()["error"]["message"] == (
            'this workspace already has a sandbox named "Laptop"; choose another --name'
        )
        again = await agent.post("/api/agent/register", json={"code": code, "name": "desktop"})
        assert again.status_code == 201, again.text
