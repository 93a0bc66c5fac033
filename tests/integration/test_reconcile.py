"""Server stop and restart (process backend): no leftover process, and the database agrees."""

from __future__ import annotations

from pathlib import Path

import psycopg
import trio

from agentserver.sandboxes.service import Sandboxes
from tests.conftest import start_server
from tests.support.sandboxes import alive, open_events, owner_with_workspace, sandbox_settings_for

SETTLED = {"running", "paused", "failed"}


def force_status(db_url: str, sandbox_id: str, status: str) -> None:
    """Write a status behind the server's back, as a crash in the middle of an operation would."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE sandboxes SET status = %s WHERE id = %s", (status, sandbox_id))


async def test_stop_leaves_no_process_and_restart_reconciles(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """Stopping the server stops every sandbox process; on restart the sandbox that was running
    runs again, one left `creating` is started, one left `pausing` settles as paused, a paused
    one stays paused, a backend directory without a row goes, and no row stays transitional."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", opencode_bin)
    async with trio.open_nursery() as first_run:
        server = await start_server(first_run, settings)
        service: Sandboxes = server.deps.extras["sandboxes"]
        client, wid = await owner_with_workspace(server)
        events = await open_events(first_run, client, wid)
        ids = {}
        for name in ("running", "paused", "creating", "pausing"):
            response = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": name})
            ids[name] = response.json()["id"]
        for sid in ids.values():
            assert (await events.until(sid, "running", "failed"))["status"] == "running"
        assert (await client.post(f"/api/sandboxes/{ids['paused']}/pause")).status_code == 200
        await events.until(ids["paused"], "paused")
        pids = [service.backend.pid(sid) for sid in ids.values()]  # type: ignore[attr-defined]
        assert all(pid is not None and alive(pid) for pid in pids[:1] + pids[2:])
        orphan = settings.data_dir / "sandboxes" / "orphan0000000000" / "home"
        orphan.mkdir(parents=True)
        events.close()
        await client.aclose()
        server.shutdown.set()
    # The first server has returned: nothing it started may still run.
    assert not [pid for pid in pids if pid is not None and alive(pid)]
    await trio.to_thread.run_sync(force_status, db_url, ids["creating"], "creating")
    await trio.to_thread.run_sync(force_status, db_url, ids["pausing"], "pausing")

    server = await start_server(nursery, settings)
    client = server.client()
    login = await client.post(
        "/api/auth/login", json={"username": "owner", "password": "correct-horse"}
    )
    assert login.status_code == 200, login.text
    events = await open_events(nursery, client, wid)
    want = {"running": "running", "creating": "running", "pausing": "paused", "paused": "paused"}
    for name, status in want.items():
        settled = await events.until(ids[name], *SETTLED)
        assert settled["status"] == status, (name, settled)
    restarted: Sandboxes = server.deps.extras["sandboxes"]
    assert alive(restarted.backend.pid(ids["running"]))  # type: ignore[attr-defined]
    assert restarted.backend.pid(ids["paused"]) is None  # type: ignore[attr-defined]
    assert not orphan.parent.exists()
    rows = (await client.get(f"/api/workspaces/{wid}/sandboxes")).json()
    assert {r["status"] for r in rows} <= SETTLED
    events.close()
    await client.aclose()
    server.shutdown.set()
