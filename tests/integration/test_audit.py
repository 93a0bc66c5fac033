"""The audit log against a real server: every recorded action leaves exactly one entry with the
right actor and target; who may read it; paging, filters and the JSON-lines export; nothing lost
on a clean shutdown; a failing write never fails the action; the table is append-only."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
import trio_websocket

from agentserver.auth.tokens import new_id
from agentserver.tunnel import Tunnel, WebSocketLink
from agentserver.tunnel.connection import Role
from tests.conftest import Server, make_settings, register, start_server
from tests.support.accounts import add_member, create_workspace
from tests.support.workspace_events import watch_statuses

PASSWORD = "correct-horse"


def audit_settings(db_url: str, data_dir: Path, **overrides: str) -> Any:
    """A test server without the periodic reconciler (rows made here stay as made)."""
    return make_settings(db_url, data_dir, reconcile_interval="0", **overrides)


@pytest.fixture
def server_settings(db_url: str, tmp_path: Path) -> Any:
    return audit_settings(db_url, tmp_path / "data")


@dataclass
class Team:
    """A server whose first user (the admin) owns a workspace where bob is a developer."""

    server: Server
    db_url: str
    admin: httpx.AsyncClient
    admin_id: str
    bob: httpx.AsyncClient
    bob_id: str
    workspace_id: str

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(query.encode(), params)
            return cur.fetchall() if cur.description else []

    async def last_id(self) -> int:
        await self.server.deps.audit.flush()
        return int(self.sql("SELECT coalesce(max(id), 0) FROM audit_log")[0][0])

    async def entries(self, action: str, after: int) -> list[dict[str, Any]]:
        """The stored entries of `action` since `after` (everything recorded is stored first)."""
        await self.server.deps.audit.flush()
        with psycopg.connect(self.db_url) as conn:
            conn.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
            return list(
                conn.execute(
                    "SELECT * FROM audit_log WHERE action = %s AND id > %s ORDER BY id",
                    (action, after),
                )
            )

    def sandbox_row(self, status: str, *, idle: bool = False) -> str:
        """A sandbox row made directly in `status` (no agent behind it)."""
        sandbox_id = new_id()
        self.sql(
            "INSERT INTO sandboxes (id, workspace_id, name, type, status, created_by, agent_secret,"
            " last_activity_at) VALUES (%s, %s, %s, 'opencode', %s, %s, 's',"
            " now() - %s * interval '1 hour')",
            sandbox_id,
            self.workspace_id,
            f"sbx-{sandbox_id[:6]}",
            status,
            self.admin_id,
            2 if idle else 0,
        )
        return sandbox_id

    async def new_user(self, username: str) -> tuple[httpx.AsyncClient, str]:
        client = self.server.client()
        user = await register(client, username, PASSWORD)
        return client, str(user["id"])

    async def agent(self) -> tuple[str, str]:
        """A registered local agent: its sandbox id and tunnel token."""
        code = (await self.admin.post(f"/api/workspaces/{self.workspace_id}/agent-code")).json()
        async with httpx.AsyncClient(base_url=self.server.url) as agent:
            body = (
                await agent.post("/api/agent/register", json={"code": code["code"], "name": "lap"})
            ).json()
        return str(body["sandboxId"]), str(body["tunnelToken"])


@pytest.fixture
async def team(server: Server, db_url: str) -> AsyncIterator[Team]:
    async with server.client() as admin, server.client() as bob:
        admin_user = await register(admin, "root", PASSWORD)
        workspace = await create_workspace(admin, "team")
        bob_user = await register(bob, "bob", PASSWORD)
        await add_member(admin, workspace["id"], "bob", "developer")
        yield Team(server, db_url, admin, admin_user["id"], bob, bob_user["id"], workspace["id"])


@dataclass(frozen=True)
class Expected:
    """Who should show as the actor, what as the target, in which workspace, how it ended."""

    actor_kind: str
    actor_id: str | None
    target_id: str | None
    workspace_id: str | None
    result: str = "ok"


def ok(status: int, response: httpx.Response) -> None:
    assert response.status_code == status, response.text


@asynccontextmanager
async def tunnel_to(server: Server, sandbox_id: str, token: str) -> AsyncIterator[Tunnel]:
    """A client-side tunnel dialled with the token in the Authorization header."""
    headers = [(b"authorization", f"Bearer {token}".encode())]
    url = f"ws://127.0.0.1:{server.port}/api/tunnel/{sandbox_id}"
    async with (
        trio_websocket.open_websocket_url(url, extra_headers=headers) as ws,
        trio.open_nursery() as nursery,
    ):
        tunnel = Tunnel(WebSocketLink(ws), role=Role.CLIENT)
        await nursery.start(tunnel.run)
        yield tunnel
        await tunnel.aclose()


# -- the actions --------------------------------------------------------------------------------
# Each acts once and says what its one entry must show.


async def registered(t: Team) -> Expected:
    client, carol = await t.new_user("carol")
    await client.aclose()
    return Expected("user", carol, carol, None)


async def signed_in(t: Team) -> Expected:
    async with t.server.client() as client:
        ok(
            200,
            await client.post("/api/auth/login", json={"username": "bob", "password": PASSWORD}),
        )
    return Expected("user", t.bob_id, t.bob_id, None)


async def sign_in_refused(t: Team) -> Expected:
    async with t.server.client() as client:
        wrong = {"username": "bob", "password": "not-his-password"}
        ok(401, await client.post("/api/auth/login", json=wrong))
    return Expected("user", t.bob_id, t.bob_id, None, "refused")


async def signed_out(t: Team) -> Expected:
    ok(200, await t.bob.post("/api/auth/logout"))
    return Expected("user", t.bob_id, t.bob_id, None)


async def server_role_changed(t: Team) -> Expected:
    ok(200, await t.admin.put(f"/api/admin/users/{t.bob_id}/role", json={"role": "admin"}))
    return Expected("user", t.admin_id, t.bob_id, None)


async def user_disabled(t: Team) -> Expected:
    ok(200, await t.admin.post(f"/api/admin/users/{t.bob_id}/disable"))
    return Expected("user", t.admin_id, t.bob_id, None)


async def user_enabled(t: Team) -> Expected:
    ok(200, await t.admin.post(f"/api/admin/users/{t.bob_id}/enable"))
    return Expected("user", t.admin_id, t.bob_id, None)


async def password_reset(t: Team) -> Expected:
    ok(200, await t.admin.post(f"/api/admin/users/{t.bob_id}/password", json={}))
    return Expected("user", t.admin_id, t.bob_id, None)


async def quota_changed(t: Team) -> Expected:
    ok(200, await t.admin.put(f"/api/admin/workspaces/{t.workspace_id}/quota", json={"rpm": 5}))
    return Expected("user", t.admin_id, t.workspace_id, t.workspace_id)


async def workspace_created(t: Team) -> Expected:
    created = await create_workspace(t.bob, "bobs")
    return Expected("user", t.bob_id, created["id"], created["id"])


async def workspace_renamed(t: Team) -> Expected:
    ok(200, await t.admin.patch(f"/api/workspaces/{t.workspace_id}", json={"name": "renamed"}))
    return Expected("user", t.admin_id, t.workspace_id, t.workspace_id)


async def workspace_settings_changed(t: Team) -> Expected:
    body = {"membersManageAllSandboxes": True}
    ok(200, await t.admin.patch(f"/api/workspaces/{t.workspace_id}", json=body))
    return Expected("user", t.admin_id, t.workspace_id, t.workspace_id)


async def workspace_deleted(t: Team) -> Expected:
    doomed = await create_workspace(t.bob, "doomed")
    ok(204, await t.bob.delete(f"/api/workspaces/{doomed['id']}"))
    return Expected("user", t.bob_id, doomed["id"], doomed["id"])


async def member_added(t: Team) -> Expected:
    client, carol = await t.new_user("carol")
    await client.aclose()
    await add_member(t.admin, t.workspace_id, "carol", "guest")
    return Expected("user", t.admin_id, carol, t.workspace_id)


async def member_role_changed(t: Team) -> Expected:
    path = f"/api/workspaces/{t.workspace_id}/members/{t.bob_id}"
    ok(200, await t.admin.put(path, json={"role": "guest"}))
    return Expected("user", t.admin_id, t.bob_id, t.workspace_id)


async def member_removed(t: Team) -> Expected:
    ok(204, await t.admin.delete(f"/api/workspaces/{t.workspace_id}/members/{t.bob_id}"))
    return Expected("user", t.admin_id, t.bob_id, t.workspace_id)


async def sandbox_created(t: Team) -> Expected:
    created = await t.bob.post(f"/api/workspaces/{t.workspace_id}/sandboxes", json={"name": "s"})
    ok(201, created)
    return Expected("user", t.bob_id, created.json()["id"], t.workspace_id)


async def sandbox_opened(t: Team) -> Expected:
    sandbox_id = t.sandbox_row("running")
    ok(302, await t.bob.get(f"/api/sandboxes/{sandbox_id}/open", params={"bind": "ab" * 32}))
    return Expected("user", t.bob_id, sandbox_id, t.workspace_id)


async def sandbox_paused(t: Team) -> Expected:
    sandbox_id = t.sandbox_row("running")
    ok(200, await t.admin.post(f"/api/sandboxes/{sandbox_id}/pause"))
    return Expected("user", t.admin_id, sandbox_id, t.workspace_id)


async def sandbox_paused_when_idle(t: Team) -> Expected:
    sandbox_id = t.sandbox_row("running", idle=True)
    await t.server.deps.sandboxes.pause_idle(60.0)  # one pass of the idle watcher
    return Expected("system", "idle-watcher", sandbox_id, t.workspace_id)


async def sandbox_resumed(t: Team) -> Expected:
    sandbox_id = t.sandbox_row("paused")
    ok(200, await t.admin.post(f"/api/sandboxes/{sandbox_id}/resume"))
    return Expected("user", t.admin_id, sandbox_id, t.workspace_id)


async def sandbox_restarted(t: Team) -> Expected:
    sandbox_id = t.sandbox_row("paused")
    ok(200, await t.admin.post(f"/api/sandboxes/{sandbox_id}/restart"))
    return Expected("user", t.admin_id, sandbox_id, t.workspace_id)


async def sandbox_deleted(t: Team) -> Expected:
    sandbox_id = t.sandbox_row("paused")
    ok(204, await t.admin.delete(f"/api/sandboxes/{sandbox_id}"))
    return Expected("user", t.admin_id, sandbox_id, t.workspace_id)


async def agent_code_created(t: Team) -> Expected:
    ok(201, await t.bob.post(f"/api/workspaces/{t.workspace_id}/agent-code"))
    return Expected("user", t.bob_id, t.workspace_id, t.workspace_id)


async def agent_registered(t: Team) -> Expected:
    sandbox_id, _ = await t.agent()
    return Expected("agent", sandbox_id, sandbox_id, t.workspace_id)


async def agent_connected_and_gone(t: Team) -> Expected:
    """Connect and disconnect; both actions are checked from this one run."""
    sandbox_id, token = await t.agent()
    hub = t.server.deps.hub
    async with (
        watch_statuses(t.admin, t.workspace_id) as watch,
        tunnel_to(t.server, sandbox_id, token),
    ):
        await watch.until(sandbox_id, "running")
        server_side = hub.get(sandbox_id)
        assert server_side is not None
    await hub.wait_finished(server_side)
    return Expected("agent", sandbox_id, sandbox_id, t.workspace_id)


async def agent_revoked(t: Team) -> Expected:
    sandbox_id, _ = await t.agent()
    ok(204, await t.admin.delete(f"/api/sandboxes/{sandbox_id}"))
    return Expected("user", t.admin_id, sandbox_id, t.workspace_id)


async def new_token(t: Team) -> dict[str, Any]:
    created = await t.bob.post("/api/tokens", json={"name": "ci", "scope": "full"})
    ok(201, created)
    return dict(created.json())


async def token_created(t: Team) -> Expected:
    token = await new_token(t)
    return Expected("user", t.bob_id, token["id"], None)


async def token_first_used(t: Team) -> Expected:
    """Two requests with the token: only the first is recorded, by the token for bob."""
    token = await new_token(t)
    headers = {"Authorization": f"Bearer {token['token']}"}
    async with httpx.AsyncClient(base_url=t.server.url, headers=headers) as cli:
        ok(200, await cli.get("/api/workspaces"))
        ok(200, await cli.get("/api/workspaces"))
    return Expected("token", token["id"], token["id"], None)


async def token_revoked(t: Team) -> Expected:
    token = await new_token(t)
    ok(204, await t.bob.delete(f"/api/tokens/{token['id']}"))
    return Expected("user", t.bob_id, token["id"], None)


async def acted_with_a_token(t: Team) -> Expected:
    """An action taken with an API token names the token (acting for bob) as its actor."""
    token = await new_token(t)
    headers = {"Authorization": f"Bearer {token['token']}"}
    async with httpx.AsyncClient(base_url=t.server.url, headers=headers) as cli:
        ok(201, await cli.post(f"/api/workspaces/{t.workspace_id}/agent-code"))
    return Expected("token", token["id"], t.workspace_id, t.workspace_id)


async def preview_made_public(t: Team) -> Expected:
    sandbox_id = t.sandbox_row("running")
    ok(200, await t.bob.put(f"/api/sandboxes/{sandbox_id}/previews/3000/public"))
    return Expected("user", t.bob_id, sandbox_id, t.workspace_id)


async def preview_made_private(t: Team) -> Expected:
    sandbox_id = t.sandbox_row("running")
    ok(200, await t.bob.put(f"/api/sandboxes/{sandbox_id}/previews/3000/public"))
    ok(200, await t.bob.delete(f"/api/sandboxes/{sandbox_id}/previews/3000/public"))
    return Expected("user", t.bob_id, sandbox_id, t.workspace_id)


ACTIONS: list[tuple[str, Callable[[Team], Awaitable[Expected]]]] = [
    ("preview.made_public", preview_made_public),
    ("preview.made_private", preview_made_private),
    ("token.created", token_created),
    ("token.first_used", token_first_used),
    ("token.revoked", token_revoked),
    ("agent.code_created", acted_with_a_token),
    ("auth.registered", registered),
    ("auth.sign_in", signed_in),
    ("auth.sign_in", sign_in_refused),
    ("auth.sign_out", signed_out),
    ("user.role_changed", server_role_changed),
    ("user.disabled", user_disabled),
    ("user.enabled", user_enabled),
    ("user.password_reset", password_reset),
    ("quota.changed", quota_changed),
    ("workspace.created", workspace_created),
    ("workspace.renamed", workspace_renamed),
    ("workspace.settings_changed", workspace_settings_changed),
    ("workspace.deleted", workspace_deleted),
    ("member.added", member_added),
    ("member.role_changed", member_role_changed),
    ("member.removed", member_removed),
    ("sandbox.created", sandbox_created),
    ("sandbox.opened", sandbox_opened),
    ("sandbox.paused", sandbox_paused),
    ("sandbox.paused", sandbox_paused_when_idle),
    ("sandbox.resumed", sandbox_resumed),
    ("sandbox.restarted", sandbox_restarted),
    ("sandbox.deleted", sandbox_deleted),
    ("agent.code_created", agent_code_created),
    ("agent.registered", agent_registered),
    ("agent.connected", agent_connected_and_gone),
    ("agent.disconnected", agent_connected_and_gone),
    ("agent.revoked", agent_revoked),
]


@pytest.mark.parametrize(("action", "act"), ACTIONS, ids=[f"{a}-{f.__name__}" for a, f in ACTIONS])
async def test_each_action_leaves_exactly_one_entry(
    team: Team, action: str, act: Callable[[Team], Awaitable[Expected]]
) -> None:
    """The action leaves one entry of its name, naming who did it, to what, in which
    workspace, from the client's address, with its result."""
    before = await team.last_id()
    expected = await act(team)
    found = await team.entries(action, before)
    assert len(found) == 1, found
    entry = found[0]
    assert (entry["actor_kind"], entry["actor_id"]) == (expected.actor_kind, expected.actor_id)
    assert entry["target_id"] == expected.target_id
    assert entry["workspace_id"] == expected.workspace_id
    assert entry["result"] == expected.result
    if expected.actor_kind in ("user", "token"):
        assert entry["client_address"] == "127.0.0.1"
    if expected.actor_kind == "token":
        assert entry["actor_user_id"] == team.bob_id
    if action == "auth.sign_in":
        assert entry["details"]["method"] == "password"


# -- reading ------------------------------------------------------------------------------------


async def test_members_below_maintainer_cannot_read_the_log(team: Team) -> None:
    """Developers and guests get 403; a maintainer and the owner read the log."""
    path = f"/api/workspaces/{team.workspace_id}/audit"
    assert (await team.bob.get(path)).status_code == 403
    client, _ = await team.new_user("gus")
    await add_member(team.admin, team.workspace_id, "gus", "guest")
    assert (await client.get(path)).status_code == 403
    await client.aclose()
    member_path = f"/api/workspaces/{team.workspace_id}/members/{team.bob_id}"
    ok(200, await team.admin.put(member_path, json={"role": "maintainer"}))
    await team.server.deps.audit.flush()
    ok(200, await team.bob.get(path))
    ok(200, await team.admin.get(path))
    assert (await team.bob.get("/api/admin/audit")).status_code == 403
    assert (await team.bob.get("/api/admin/audit/export")).status_code == 403


async def test_the_workspace_log_pages_newest_first_and_filters(team: Team) -> None:
    """Pages follow `nextCursor` without gaps or repeats; action prefixes, actors and the
    period narrow it; another workspace's entries never show."""
    for n in range(5):
        ok(
            200,
            await team.admin.patch(f"/api/workspaces/{team.workspace_id}", json={"name": f"n{n}"}),
        )
    other = await create_workspace(team.bob, "elsewhere")
    ok(200, await team.bob.patch(f"/api/workspaces/{other['id']}", json={"name": "x"}))
    await team.server.deps.audit.flush()
    path = f"/api/workspaces/{team.workspace_id}/audit"
    whole = (await team.admin.get(path, params={"limit": 500})).json()
    assert whole["nextCursor"] is None
    ids = [int(e["id"]) for e in whole["entries"]]
    assert ids == sorted(ids, reverse=True)
    assert {e["workspaceId"] for e in whole["entries"]} == {team.workspace_id}
    paged: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        page = (await team.admin.get(path, params={"limit": 2, "cursor": cursor})).json()
        assert len(page["entries"]) <= 2
        paged += [e["id"] for e in page["entries"]]
        cursor = page["nextCursor"]
    assert paged == [e["id"] for e in whole["entries"]]
    renamed = (await team.admin.get(path, params={"action": "workspace.renamed"})).json()
    assert [e["target"]["name"] for e in renamed["entries"]] == ["n4", "n3", "n2", "n1", "n0"]
    prefix = (await team.admin.get(path, params={"action": "workspace."})).json()
    assert {e["action"] for e in prefix["entries"]} == {"workspace.created", "workspace.renamed"}
    by_bob = (await team.admin.get(path, params={"actor": "bob"})).json()
    assert by_bob["entries"] == []  # bob only acted in his own workspace here
    by_root = (await team.admin.get(path, params={"actor": "root"})).json()
    assert len(by_root["entries"]) == len(whole["entries"])
    future = (await team.admin.get(path, params={"from": "2999-01-01"})).json()
    assert future["entries"] == []
    bad = await team.admin.get(path, params={"cursor": "²"})
    assert bad.status_code == 400


async def test_admins_read_everything_and_export_json_lines(team: Team) -> None:
    """The admin log spans workspaces; the export is one JSON object per line, oldest first,
    the same entries as the table."""
    await create_workspace(team.bob, "bobs")
    await team.server.deps.audit.flush()
    everything = (await team.admin.get("/api/admin/audit", params={"limit": 500})).json()
    assert {e["workspaceId"] for e in everything["entries"]} >= {team.workspace_id}
    assert any(e["actor"]["name"] == "bob" for e in everything["entries"])
    async with team.admin.stream("GET", "/api/admin/audit/export") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        text = (await response.aread()).decode()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    stored = team.sql("SELECT id FROM audit_log ORDER BY id")
    assert [int(line["id"]) for line in lines] == [row[0] for row in stored]
    only_bob = await team.admin.get("/api/admin/audit/export", params={"actor": "bob"})
    assert {json.loads(line)["actor"]["name"] for line in only_bob.text.splitlines()} == {"bob"}


async def test_a_deleted_users_entries_keep_their_name(team: Team) -> None:
    """The actor's name is captured when written: entries outlive the account."""
    ok(201, await team.bob.post(f"/api/workspaces/{team.workspace_id}/agent-code"))
    await team.server.deps.audit.flush()
    team.sql("DELETE FROM users WHERE id = %s", team.bob_id)
    found = team.sql("SELECT actor_name FROM audit_log WHERE actor_id = %s", team.bob_id)
    assert found
    assert {row[0] for row in found} == {"bob"}


async def test_the_real_client_address_is_recorded_behind_a_trusted_proxy(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Behind a trusted proxy the entry names the client the proxy saw, not the proxy."""
    settings = audit_settings(db_url, tmp_path / "data", trusted_proxies="127.0.0.1/32")
    server = await start_server(nursery, settings)
    async with server.client(headers={"X-Forwarded-For": "203.0.113.7"}) as client:
        await register(client, "root", PASSWORD)
    await server.deps.audit.flush()
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            "SELECT client_address FROM audit_log WHERE action = 'auth.registered'"
        ).fetchall()
    assert found == [("203.0.113.7",)]
    server.shutdown.set()


# -- writing ------------------------------------------------------------------------------------


async def test_nothing_is_lost_on_a_clean_shutdown(db_url: str, tmp_path: Path) -> None:
    """Entries still queued when the server is told to stop are stored before it returns."""
    settings = audit_settings(db_url, tmp_path / "data")
    locked = threading.Event()
    release = threading.Event()

    def hold_the_table() -> None:
        # Holds inserts back: the writer cannot store anything until released.
        with psycopg.connect(db_url) as conn:
            conn.execute("LOCK TABLE audit_log IN EXCLUSIVE MODE")
            locked.set()
            release.wait(60)

    async with trio.open_nursery() as outer, trio.open_nursery() as serving:
        server = await start_server(serving, settings)
        outer.start_soon(trio.to_thread.run_sync, hold_the_table)
        await trio.to_thread.run_sync(locked.wait, 30)
        async with server.client() as client:
            await register(client, "root", PASSWORD)
            workspace = await create_workspace(client, "w")
            for n in range(20):
                path = f"/api/workspaces/{workspace['id']}"
                ok(200, await client.patch(path, json={"name": f"n{n}"}))
        assert server.deps.audit.backlog > 0  # queued, not yet stored
        server.shutdown.set()
        release.set()
    with psycopg.connect(db_url) as conn:
        renames = conn.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'workspace.renamed'"
        ).fetchone()
    assert renames == (20,)


async def test_a_failing_write_does_not_fail_the_action(team: Team) -> None:
    """With the table unusable the action still succeeds; its entry is stored once the
    database accepts it again."""
    before = await team.last_id()
    team.sql("ALTER TABLE audit_log RENAME TO audit_log_away")
    try:
        created = await team.bob.post(
            f"/api/workspaces/{team.workspace_id}/sandboxes", json={"name": "still"}
        )
        ok(201, created)
        assert team.server.deps.audit.backlog >= 1
    finally:
        team.sql("ALTER TABLE audit_log_away RENAME TO audit_log")
    with trio.fail_after(30):
        found = await team.entries("sandbox.created", before)
    assert [e["target_id"] for e in found] == [created.json()["id"]]


async def test_the_table_is_append_only(team: Team) -> None:
    """The database refuses to change entries or delete recent ones; retention deletes only
    entries older than it."""
    await team.server.deps.audit.flush()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        team.sql("UPDATE audit_log SET actor_name = 'someone else'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        team.sql("DELETE FROM audit_log")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        team.sql("TRUNCATE audit_log")
    team.sql(
        "INSERT INTO audit_log (at, actor_kind, action, result)"
        " VALUES (now() - interval '400 days', 'system', 'auth.sign_in', 'ok')"
    )
    count = int(team.sql("SELECT count(*) FROM audit_log")[0][0])
    assert await team.server.deps.audit.store.prune(365) == 1
    assert int(team.sql("SELECT count(*) FROM audit_log")[0][0]) == count - 1
