"""Managing sandboxes and workspaces over the API: rename and restart a sandbox, and set a
workspace's own idle timeout within the server's maximum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from agentserver.auth.tokens import new_id
from agentserver.sandboxes.service import Sandboxes
from tests.conftest import Server, make_settings, register, start_server
from tests.support.sandboxes import alive, open_events, owner_with_workspace


async def insert_row(db_url: str, workspace_id: str, name: str, **columns: str) -> str:
    """A sandbox row with no process behind it (`status` running unless given)."""
    sandbox_id = new_id()
    values = {"type": "opencode", "status": "running", **columns}

    def run() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO sandboxes"
                " (id, workspace_id, name, type, status, agent_secret, created_by)"
                " VALUES (%s, %s, %s, %s, %s, 'x', %s)",
                (
                    sandbox_id,
                    workspace_id,
                    name,
                    values["type"],
                    values["status"],
                    values.get("created_by"),
                ),
            )

    await trio.to_thread.run_sync(run)
    return sandbox_id


async def member(server: Server, owner: httpx.AsyncClient, wid: str, name: str, role: str) -> Any:
    client = server.client()
    await register(client, name)
    added = await owner.post(
        f"/api/workspaces/{wid}/members", json={"username": name, "role": role}
    )
    assert added.status_code == 201, added.text
    return client


async def test_rename_a_sandbox(server: Server, db_url: str, nursery: trio.Nursery) -> None:
    """PATCH renames (trimmed), the event stream shows the new name, and a later read too;
    a case change of its own name is allowed."""
    client, wid = await owner_with_workspace(server)
    sid = await insert_row(db_url, wid, "box")
    events = await open_events(nursery, client, wid)
    renamed = await client.patch(f"/api/sandboxes/{sid}", json={"name": "  Build box  "})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Build box"
    with trio.fail_after(10):
        while not any(
            kind == "sandbox" and d.get("name") == "Build box" for kind, d in events.seen
        ):
            await events.changed()
    assert (await client.get(f"/api/sandboxes/{sid}")).json()["name"] == "Build box"
    recased = await client.patch(f"/api/sandboxes/{sid}", json={"name": "build BOX"})
    assert (recased.status_code, recased.json()["name"]) == (200, "build BOX")
    events.close()
    await client.aclose()


async def test_rename_refuses_duplicates_and_bad_names(server: Server, db_url: str) -> None:
    """A name another sandbox of the workspace has (ignoring case) is a 409; a name too long,
    blank or not text is a 400 naming the field; the name is unchanged after each."""
    client, wid = await owner_with_workspace(server)
    sid = await insert_row(db_url, wid, "box")
    await insert_row(db_url, wid, "other")
    taken = await client.patch(f"/api/sandboxes/{sid}", json={"name": " OTHER "})
    assert taken.status_code == 409, taken.text
    assert taken.json()["error"]["field"] == "name"
    assert 'already has a sandbox named "OTHER"' in taken.json()["error"]["message"]
    for name in ("x" * 101, "   ", "", 5):
        bad = await client.patch(f"/api/sandboxes/{sid}", json={"name": name})
        assert bad.status_code == 400, (name, bad.text)
        assert bad.json()["error"]["field"] == "name", name
    assert (
        await client.patch(f"/api/sandboxes/{sid}", json={"name": "x" * 100})
    ).status_code == 200
    await client.aclose()


async def test_who_may_rename_and_restart(server: Server, db_url: str) -> None:
    """A developer may rename their own sandbox, not someone else's (unless the workspace
    allows it: test_private_sandboxes.py); a guest may neither rename nor restart (403); a
    non-member sees 404."""
    owner, wid = await owner_with_workspace(server)
    developer = await member(server, owner, wid, "dev", "developer")
    dev_id = (await developer.get("/api/auth/me")).json()["id"]
    sid = await insert_row(db_url, wid, "box", status="failed", created_by=dev_id)
    owners = await insert_row(db_url, wid, "owners", status="failed")
    guest = await member(server, owner, wid, "guest", "guest")
    stranger = server.client()
    await register(stranger, "stranger")
    assert (await developer.patch(f"/api/sandboxes/{sid}", json={"name": "dev"})).status_code == 200
    refused = await developer.patch(f"/api/sandboxes/{owners}", json={"name": "mine"})
    assert refused.status_code == 403, refused.text
    assert (await guest.patch(f"/api/sandboxes/{sid}", json={"name": "g"})).status_code == 403
    assert (await guest.post(f"/api/sandboxes/{sid}/restart")).status_code == 403
    assert (await stranger.patch(f"/api/sandboxes/{sid}", json={"name": "s"})).status_code == 404
    assert (await stranger.post(f"/api/sandboxes/{sid}/restart")).status_code == 404
    assert (await owner.get(f"/api/sandboxes/{sid}")).json()["name"] == "dev"
    for client in (owner, developer, guest, stranger):
        await client.aclose()


async def test_restart_is_refused_for_a_failed_or_local_sandbox(
    server: Server, db_url: str
) -> None:
    """409 for a failed sandbox, and for a local one with a message saying where it restarts."""
    client, wid = await owner_with_workspace(server)
    failed = await insert_row(db_url, wid, "broken", status="failed")
    local = await insert_row(db_url, wid, "laptop", type="local")
    refused = await client.post(f"/api/sandboxes/{failed}/restart")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["message"] == "a failed sandbox cannot be restarted"
    refused = await client.post(f"/api/sandboxes/{local}/restart")
    assert refused.status_code == 409, refused.text
    assert "restart `agentserver agent connect` there" in refused.json()["error"]["message"]
    assert (await client.get(f"/api/sandboxes/{local}")).json()["status"] == "running"
    await client.aclose()


async def test_restart_runs_a_new_agent_process(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """POST /restart on a running sandbox answers resuming; it is running again with a new
    opencode process (the old one gone) that answers with the sandbox's password."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "box"})
    sid = created.json()["id"]
    assert (await events.until(sid, "running", "failed"))["status"] == "running"
    service: Sandboxes = sandbox_server.deps.sandboxes
    old_pid = service.backend.pid(sid)  # type: ignore[attr-defined]
    restarted = await client.post(f"/api/sandboxes/{sid}/restart")
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["status"] == "resuming"
    again = await events.until(sid, "running", "failed", after=len(events.seen) - 1)
    assert again["status"] == "running", again
    new_pid = service.backend.pid(sid)  # type: ignore[attr-defined]
    assert new_pid is not None
    assert new_pid != old_pid
    assert not alive(old_pid)
    row = await service.get(sid)
    assert row is not None
    assert row.endpoint_port is not None
    agent = f"http://{row.endpoint_host}:{row.endpoint_port}/session"
    async with httpx.AsyncClient(timeout=10) as direct:
        answer = await direct.get(agent, auth=("opencode", row.agent_secret))
        assert answer.status_code == 200
    events.close()
    await client.aclose()


async def test_a_workspace_sets_its_idle_timeout_within_the_maximum(
    server: Server, db_url: str
) -> None:
    """Owners and maintainers set idleTimeoutSeconds (null: the server's default); above the
    server's maximum, or 0 while there is one, is a 400 naming the maximum; developers 403."""
    owner, wid = await owner_with_workspace(server)
    url = f"/api/workspaces/{wid}"
    shown = (await owner.get(url)).json()
    assert shown["idleTimeoutSeconds"] is None
    assert shown["maxIdleTimeoutSeconds"] == 86400  # the default maximum, 24h
    maintainer = await member(server, owner, wid, "maint", "maintainer")
    developer = await member(server, owner, wid, "dev", "developer")
    set_ = await maintainer.patch(url, json={"idleTimeoutSeconds": 600})
    assert (set_.status_code, set_.json()["idleTimeoutSeconds"]) == (200, 600)
    assert (await owner.get(url)).json()["idleTimeoutSeconds"] == 600
    listed = (await owner.get("/api/workspaces")).json()
    assert [w["idleTimeoutSeconds"] for w in listed] == [600]
    assert (await owner.patch(url, json={"idleTimeoutSeconds": 86400})).status_code == 200
    for seconds, words in ((86401, "at most 24h"), (0, "the maximum is 24h")):
        refused = await owner.patch(url, json={"idleTimeoutSeconds": seconds})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == "idleTimeoutSeconds"
        assert words in refused.json()["error"]["message"]
    for bad in (-1, "soon", 1.5):
        assert (await owner.patch(url, json={"idleTimeoutSeconds": bad})).status_code == 400
    assert (await developer.patch(url, json={"idleTimeoutSeconds": 60})).status_code == 403
    assert (await owner.get(url)).json()["idleTimeoutSeconds"] == 86400
    reset = await owner.patch(url, json={"idleTimeoutSeconds": None})
    assert (reset.status_code, reset.json()["idleTimeoutSeconds"]) == (200, None)
    renamed = await owner.patch(url, json={"name": "renamed"})
    assert (renamed.json()["name"], renamed.json()["idleTimeoutSeconds"]) == ("renamed", None)
    for client in (owner, maintainer, developer):
        await client.aclose()


async def test_without_a_maximum_a_workspace_may_never_pause(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """With --max-idle-timeout 0, any timeout is accepted, and 0 (never pause) too."""
    settings = make_settings(db_url, tmp_path / "data", max_idle_timeout="0")
    server = await start_server(nursery, settings)
    owner, wid = await owner_with_workspace(server)
    for seconds in (0, 7 * 86400):
        answer = await owner.patch(f"/api/workspaces/{wid}", json={"idleTimeoutSeconds": seconds})
        assert (answer.status_code, answer.json()["idleTimeoutSeconds"]) == (200, seconds)
    await owner.aclose()
    server.shutdown.set()
