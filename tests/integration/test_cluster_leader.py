"""Several replicas on one database: migrations once, one leader (taken over when it goes), the
idle watcher pausing once, and a lost leader connection stopping the leader's work at once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from agentserver.audit import Action
from agentserver.cluster.leader import LEADER_KEY
from agentserver.db.migrate import migration_files
from agentserver.sandboxes.fake import FakeBackend
from tests.conftest import Server, make_settings, start_server
from tests.support.cluster import WAIT, sql, status_of, until_status, workspace


async def test_two_replicas_starting_at_once_apply_each_migration_once(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two servers started together on a fresh database apply every migration once between
    them (the migration lock), and both serve."""
    caplog.set_level(logging.INFO, logger="agentserver.db.migrate")
    servers: list[Server] = []
    async with trio.open_nursery() as nursery:

        async def start(name: str) -> None:
            servers.append(await start_server(nursery, make_settings(db_url, tmp_path / name)))

        async with trio.open_nursery() as starting:
            starting.start_soon(start, "a")
            starting.start_soon(start, "b")
        applied = [
            r.getMessage().removeprefix("applied migration ")
            for r in caplog.records
            if r.getMessage().startswith("applied migration ")
        ]
        assert sorted(applied) == [p.stem for p in migration_files()]
        for server in servers:
            async with server.client() as client:
                assert (await client.get("/readyz")).status_code == 200
            server.shutdown.set()


async def test_one_replica_leads_and_another_takes_over_when_it_stops(
    db_url: str, tmp_path: Path, shared_backend: FakeBackend
) -> None:
    """The first replica leads, the second follows; when the leader stops the follower leads
    within seconds."""
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_settings(db_url, tmp_path / "a"))
        second = await start_server(nursery, make_settings(db_url, tmp_path / "b"))
        assert first.deps.cluster.leader.leading
        assert not second.deps.cluster.leader.leading
        first.shutdown.set()
        with trio.fail_after(5):
            await second.deps.cluster.leader.wait_leading()
        async with second.client() as client:
            metrics = (await client.get("/metrics")).text
        assert "agentserver_cluster_leader 1.0" in metrics
        second.shutdown.set()


async def test_a_leader_whose_connection_is_lost_stops_at_once_and_another_leads(
    db_url: str, tmp_path: Path, shared_backend: FakeBackend
) -> None:
    """Killing the leader's lock connection (as a lost network would) stops its leader-only
    loops at once; the other replica takes over within seconds, and the old one follows."""
    options = {"reconcile_interval": "1"}
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_settings(db_url, tmp_path / "a", **options))
        second = await start_server(nursery, make_settings(db_url, tmp_path / "b", **options))
        with trio.fail_after(WAIT):
            await first.deps.reconciler.next_pass()
        assert second.deps.reconciler.passes == 0  # a follower never reconciles
        killed = await trio.to_thread.run_sync(
            sql,
            db_url,
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND objid = %s AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            LEADER_KEY,
        )
        assert killed == [(True,)]
        with trio.fail_after(5):
            await first.deps.cluster.leader.wait_following()
            await second.deps.cluster.leader.wait_leading()
        passes = first.deps.reconciler.passes
        with trio.fail_after(WAIT):
            await second.deps.reconciler.next_pass()
            await second.deps.reconciler.next_pass()
        assert first.deps.reconciler.passes == passes  # its loop stopped with its leadership
        assert not first.deps.cluster.leader.leading
        first.shutdown.set()
        second.shutdown.set()


async def test_the_idle_watcher_pauses_an_idle_sandbox_once_with_two_replicas(
    db_url: str, tmp_path: Path, shared_backend: FakeBackend
) -> None:
    """With two replicas, an idle sandbox is paused once: one backend pause, one audit entry,
    and the follower's idle watcher never checked."""
    options = {"idle_timeout": "1"}
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_settings(db_url, tmp_path / "a", **options))
        second = await start_server(nursery, make_settings(db_url, tmp_path / "b", **options))
        wid = await workspace(db_url)
        sandbox = await second.deps.sandboxes.create(wid, "idle", "opencode", None)
        await until_status(second, sandbox.id, "paused", "failed")
        assert await status_of(first, sandbox.id) == "paused"
        # Both replicas' audit logs write what they queued.
        await first.deps.audit.flush()
        await second.deps.audit.flush()
        assert shared_backend.ops("pause") == [sandbox.id]
        entries = await trio.to_thread.run_sync(
            sql,
            db_url,
            "SELECT count(*) FROM audit_log WHERE action = %s AND target_id = %s",
            Action.SANDBOX_PAUSED.value,
            sandbox.id,
        )
        assert entries == [(1,)]
        assert first.deps.idle_watcher.checks > 0
        assert second.deps.idle_watcher.checks == 0
        first.shutdown.set()
        second.shutdown.set()
