"""Server stop and restart (process backend): no leftover process, and the database agrees."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import trio

from agentserver.db.database import open_database
from agentserver.db.migrate import apply_migrations
from agentserver.errors import BackendError
from agentserver.sandboxes.base import Managed
from agentserver.sandboxes.service import Sandboxes
from tests.conftest import Server, make_settings, start_server
from tests.support.sandboxes import (
    EventStream,
    alive,
    open_events,
    owner_with_workspace,
    sandbox_settings_for,
)

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
        service: Sandboxes = server.deps.sandboxes
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
    restarted: Sandboxes = server.deps.sandboxes
    assert alive(restarted.backend.pid(ids["running"]))  # type: ignore[attr-defined]
    assert restarted.backend.pid(ids["paused"]) is None  # type: ignore[attr-defined]
    assert not orphan.parent.exists()
    rows = (await client.get(f"/api/workspaces/{wid}/sandboxes")).json()
    assert {r["status"] for r in rows} <= SETTLED
    events.close()
    await client.aclose()
    server.shutdown.set()


# A trigger that makes the database refuse (as a lost connection, SQLSTATE 08006) the first
# `lost` writes that move a sandbox to `running`. A sequence counts them: it is not rolled
# back with the failed write.
LOSE_RUNNING_WRITES = """
CREATE SEQUENCE lost_running_writes;
CREATE FUNCTION lose_running_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status = 'running' AND OLD.status <> 'running'
     AND nextval('lost_running_writes') <= {lost} THEN
    RAISE EXCEPTION 'connection lost (test)' USING ERRCODE = '08006';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER lose_running_write BEFORE UPDATE ON sandboxes
  FOR EACH ROW EXECUTE FUNCTION lose_running_write();
"""


def run_sql(db_url: str, sql: str) -> object:
    """Run SQL behind the server's back; the first column of the last row, if any."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        cursor = conn.execute(sql)
        row = cursor.fetchone() if cursor.description else None
        return None if row is None else row[0]


async def test_a_lost_running_write_is_retried_not_left_creating(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """When the database refuses the write that ends a start (twice), the service tries again
    and the sandbox ends `running`, not stuck `creating` with its agent running."""
    server = await start_server(nursery, sandbox_settings_for(db_url, tmp_path, opencode_bin))
    await trio.to_thread.run_sync(run_sql, db_url, LOSE_RUNNING_WRITES.format(lost=2))
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    sid = (await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "s"})).json()["id"]
    settled = await events.until(sid, *SETTLED)
    assert settled["status"] == "running", settled
    lost = await trio.to_thread.run_sync(
        run_sql, db_url, "SELECT last_value FROM lost_running_writes"
    )
    assert lost == 3  # two writes refused, the third taken (the trigger's count)
    events.close()
    await client.aclose()
    server.shutdown.set()


async def running_sandbox(server: Server, nursery: trio.Nursery) -> tuple[EventStream, str, int]:
    """A workspace event stream, a running sandbox's id and its agent's process id."""
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    sid = (await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "s"})).json()["id"]
    assert (await events.until(sid, *SETTLED))["status"] == "running"
    pid = server.deps.sandboxes.backend.pid(sid)
    assert pid is not None
    assert alive(pid)
    return events, sid, pid


async def test_periodic_reconciliation_repairs_a_row_left_creating(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """A row left `creating` (its final write lost for good) while its agent runs is shown
    `running` by the next periodic pass (--reconcile-interval), the agent left as it was."""
    settings = sandbox_settings_for(db_url, tmp_path, opencode_bin, reconcile_interval="0.5s")
    server = await start_server(nursery, settings)
    events, sid, pid = await running_sandbox(server, nursery)
    seen = len(events.seen)
    await trio.to_thread.run_sync(force_status, db_url, sid, "creating")
    repaired = await events.until(sid, *SETTLED, after=seen)
    assert repaired["status"] == "running", repaired
    assert server.deps.sandboxes.backend.pid(sid) == pid  # not started again
    events.close()
    server.shutdown.set()


async def test_reconciliation_restarts_a_running_row_whose_agent_is_gone(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """A row that says `running` while the backend runs nothing is started again by a pass."""
    server = await start_server(nursery, sandbox_settings_for(db_url, tmp_path, opencode_bin))
    service: Sandboxes = server.deps.sandboxes
    events, sid, _ = await running_sandbox(server, nursery)
    await service.pause(sid)
    await events.until(sid, "paused")
    seen = len(events.seen)
    await trio.to_thread.run_sync(force_status, db_url, sid, "running")
    reconciler = server.deps.reconciler
    reconciler.poke()
    await reconciler.next_pass()
    # The forced `running` is an event too (every change of the row is): read on from the
    # restart the pass made.
    restarted = await events.index_of(sid, "resuming", after=seen)
    assert events.seen[restarted][1]["statusReason"].startswith("restarting after")
    assert (await events.until(sid, *SETTLED, after=restarted + 1))["status"] == "running"
    pid = service.backend.pid(sid)  # type: ignore[attr-defined]
    assert pid is not None
    assert alive(pid)
    events.close()
    server.shutdown.set()


async def test_reconciliation_stops_an_agent_behind_a_paused_row(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """An agent still running behind a row that says `paused` is stopped by a pass."""
    server = await start_server(nursery, sandbox_settings_for(db_url, tmp_path, opencode_bin))
    service: Sandboxes = server.deps.sandboxes
    events, sid, pid = await running_sandbox(server, nursery)
    await trio.to_thread.run_sync(force_status, db_url, sid, "paused")
    reconciler = server.deps.reconciler
    reconciler.poke()
    await reconciler.next_pass()
    assert service.backend.pid(sid) is None  # type: ignore[attr-defined]
    assert not alive(pid)
    events.close()
    server.shutdown.set()


class RefusingBackend:
    """A backend holding two sandboxes no row knows; removing the first one fails."""

    name = "refusing"

    def __init__(self) -> None:
        self.destroyed: list[str] = []

    async def list_managed(self) -> list[Managed]:
        await trio.lowlevel.checkpoint()
        return [Managed("orphan0000000000a", running=False), Managed("orphan0000000000b", False)]

    async def destroy(self, sandbox_id: str) -> None:
        await trio.lowlevel.checkpoint()
        if sandbox_id.endswith("a"):
            raise BackendError("the daemon refused")
        self.destroyed.append(sandbox_id)


async def test_one_sandbox_failing_does_not_stop_a_reconciliation(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend error on one sandbox is logged and the pass goes on with the next one."""
    await trio.to_thread.run_sync(apply_migrations, db_url)
    backend = RefusingBackend()
    async with open_database(db_url) as db, trio.open_nursery() as nursery:
        service = Sandboxes(db, make_settings(db_url, tmp_path), backend, nursery)  # type: ignore[arg-type]
        await service.reconcile(at_start=True)
        nursery.cancel_scope.cancel()
    assert backend.destroyed == ["orphan0000000000b"]
    assert any("the daemon refused" in r.getMessage() for r in caplog.records)
