"""Why a sandbox was paused is recorded (migration 0010): by whom for the pause route, after how
long for the idle watcher; it shows in the API (and the event stream) until it runs again."""

from __future__ import annotations

from typing import Any

import psycopg
import trio

from agentserver.auth.tokens import new_id
from agentserver.sandboxes.service import Sandboxes
from tests.conftest import Server
from tests.support.sandboxes import open_events, owner_with_workspace


async def insert_running(db_url: str, workspace_id: str, idle_for: float = 0) -> str:
    """A running sandbox row with no process behind it, last active `idle_for` seconds ago."""
    sandbox_id = new_id()

    def run() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO sandboxes (id, workspace_id, name, type, status, agent_secret,"
                " last_activity_at) VALUES (%s, %s, 'box', 'opencode', 'running', 'x',"
                " now() - make_interval(secs => %s))",
                (sandbox_id, workspace_id, idle_for),
            )

    await trio.to_thread.run_sync(run)
    return sandbox_id


def pause_facts(sandbox: dict[str, Any]) -> tuple[Any, Any, Any]:
    return sandbox["pausedReason"], sandbox["pausedBy"], sandbox["pausedIdleSeconds"]


async def test_the_pause_route_records_who_paused(
    server: Server, db_url: str, nursery: trio.Nursery
) -> None:
    """POST /pause records the member who paused: the answer, the event stream and a later
    read all name them."""
    client, wid = await owner_with_workspace(server, "paula")
    sid = await insert_running(db_url, wid)
    events = await open_events(nursery, client, wid)
    paused = await client.post(f"/api/sandboxes/{sid}/pause")
    assert paused.status_code == 200, paused.text
    assert pause_facts(paused.json()) == ("user", "paula", None)
    settled = await events.until(sid, "paused", "failed")
    assert pause_facts(settled) == ("user", "paula", None)
    shown = (await client.get(f"/api/sandboxes/{sid}")).json()
    assert pause_facts(shown) == ("user", "paula", None)
    listed = (await client.get(f"/api/workspaces/{wid}/sandboxes")).json()
    assert [pause_facts(s) for s in listed] == [("user", "paula", None)]
    events.close()
    await client.aclose()


async def test_the_idle_watcher_records_how_long_and_running_forgets_it(
    server: Server, db_url: str, nursery: trio.Nursery
) -> None:
    """An idle pause records the idle timeout and no member; running again clears the reason."""
    client, wid = await owner_with_workspace(server)
    sid = await insert_running(db_url, wid, idle_for=3600)
    service: Sandboxes = server.deps.sandboxes
    events = await open_events(nursery, client, wid)
    await service.pause_idle(600)
    settled = await events.until(sid, "paused", "failed")
    assert pause_facts(settled) == ("idle", None, 600)
    shown = (await client.get(f"/api/sandboxes/{sid}")).json()
    assert pause_facts(shown) == ("idle", None, 600)

    assert await service.set_status(sid, settled["status"], "resuming")
    assert pause_facts((await client.get(f"/api/sandboxes/{sid}")).json()) == ("idle", None, 600)
    assert await service.set_status(sid, "resuming", "running")
    assert pause_facts((await client.get(f"/api/sandboxes/{sid}")).json()) == (None, None, None)
    events.close()
    await client.aclose()


async def test_a_deleted_user_leaves_the_pause_unattributed(
    server: Server, db_url: str, nursery: trio.Nursery
) -> None:
    """The member who paused may be deleted later: the reason stays, without a name."""
    client, wid = await owner_with_workspace(server, "owner")
    sid = await insert_running(db_url, wid)

    def paused_by_a_gone_user() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO users (id, username, password_hash) VALUES ('gone1', 'gone', 'x')"
            )
            conn.execute(
                "UPDATE sandboxes SET status = 'paused', paused_reason = 'user',"
                " paused_by = 'gone1' WHERE id = %s",
                (sid,),
            )
            conn.execute("DELETE FROM users WHERE id = 'gone1'")

    await trio.to_thread.run_sync(paused_by_a_gone_user)
    shown = (await client.get(f"/api/sandboxes/{sid}")).json()
    assert pause_facts(shown) == ("user", None, None)
    await client.aclose()
