"""Operation leases across replicas, and process sandboxes of a replica that died."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from agentserver.cluster import Leases, Presence
from agentserver.db.database import open_database
from agentserver.db.migrate import apply_migrations
from agentserver.sandboxes import feature
from agentserver.sandboxes.children import REASON
from agentserver.sandboxes.fake import FakeBackend
from agentserver.sandboxes.service import insert_sandbox
from agentserver.settings import Settings
from tests.conftest import make_settings, start_server
from tests.support.cluster import WAIT, sql, status_of, until_status, workspace


@pytest.fixture
def own_backends(monkeypatch: pytest.MonkeyPatch) -> list[FakeBackend]:
    """Each server opens its own FakeBackend standing for the process backend (its sandboxes
    are that replica's children), in the order the servers start."""
    opened: list[FakeBackend] = []

    @asynccontextmanager
    async def opener(settings: Settings, on_exit: Any) -> AsyncIterator[FakeBackend]:
        del settings
        backend = FakeBackend(on_exit=on_exit, per_replica=True)
        opened.append(backend)
        try:
            yield backend
        finally:
            with trio.CancelScope(shield=True):
                await backend.aclose()

    monkeypatch.setattr(feature, "backend_opener", opener)
    return opened


async def lease_of(db_url: str, sandbox_id: str) -> tuple[Any, ...]:
    rows = await trio.to_thread.run_sync(
        sql, db_url, "SELECT op_owner, replica_id FROM sandboxes WHERE id = %s", sandbox_id
    )
    return rows[0] if rows else ()


async def test_a_delete_on_one_replica_during_a_start_on_another_leaves_no_orphan(
    db_url: str,
    tmp_path: Path,
    shared_backend: FakeBackend,
) -> None:
    """Replica A's start is held inside the backend; a delete on replica B makes A give the
    start up, then destroys and removes the row: neither a backend object nor a row is left,
    and releasing the start afterwards brings nothing back."""
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_settings(db_url, tmp_path / "a"))
        second = await start_server(nursery, make_settings(db_url, tmp_path / "b"))
        wid = await workspace(db_url)
        gate = shared_backend.gate("create")
        sandbox = await first.deps.sandboxes.create(wid, "raced", "opencode", None)
        with trio.fail_after(WAIT):
            await gate.arrived()
        assert (await lease_of(db_url, sandbox.id))[0] == first.deps.cluster.replica_id
        with trio.fail_after(WAIT):
            await second.deps.sandboxes.delete(sandbox.id)
        assert first.deps.sandboxes.leases.given_up == 1
        assert shared_backend.ops("destroy") == [sandbox.id]
        gate.release()
        with trio.fail_after(WAIT):  # A's start is over: nothing of it is left in its chain
            while sandbox.id in first.deps.sandboxes._ops:
                await trio.sleep(0.05)
        assert await first.deps.sandboxes.get(sandbox.id) is None
        assert sandbox.id not in shared_backend.held
        assert shared_backend.ops("create") == [sandbox.id]  # given up while held: never made
        first.shutdown.set()
        second.shutdown.set()


async def test_an_operation_waits_for_another_replicas_lease(
    db_url: str,
    tmp_path: Path,
    shared_backend: FakeBackend,
) -> None:
    """While replica A's pause holds the lease, replica B's restart of the same sandbox waits
    for it, then runs: the backend sees pause, then B's stop and start, never interleaved."""
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_settings(db_url, tmp_path / "a"))
        second = await start_server(nursery, make_settings(db_url, tmp_path / "b"))
        wid = await workspace(db_url)
        sandbox = await first.deps.sandboxes.create(wid, "box", "opencode", None)
        await until_status(first, sandbox.id, "running", "failed")
        gate = shared_backend.gate("pause")
        await first.deps.sandboxes.pause(sandbox.id)
        with trio.fail_after(WAIT):
            await gate.arrived()
        # B's own operation (a reconciler's stop, say) on the same sandbox must wait.
        second.deps.sandboxes._spawn(sandbox.id, second.deps.sandboxes._pause, sandbox.id, None)
        with trio.fail_after(WAIT):
            while (await lease_of(db_url, sandbox.id))[0] != first.deps.cluster.replica_id:
                await trio.sleep(0.05)
        calls = len(shared_backend.ops("pause"))
        assert calls == 1  # B's pause has not reached the backend
        gate.release()
        await until_status(first, sandbox.id, "paused", "failed")
        with trio.fail_after(WAIT):
            while sandbox.id in second.deps.sandboxes._ops:
                await trio.sleep(0.05)
        # B ran after A released (its pause found the sandbox paused and settled nothing).
        assert shared_backend.ops("pause") == [sandbox.id, sandbox.id]
        assert await status_of(second, sandbox.id) == "paused"
        # Released right after B's operation left its chain (service._run: done, then release).
        with trio.fail_after(WAIT):
            while (await lease_of(db_url, sandbox.id))[0] is not None:
                await trio.sleep(0.05)
        first.shutdown.set()
        second.shutdown.set()


async def test_a_dead_replicas_process_sandboxes_are_paused_and_resumed_elsewhere(
    db_url: str, tmp_path: Path, own_backends: list[FakeBackend]
) -> None:
    """A process sandbox records the replica that runs it; when that replica stops, the leader
    marks it paused with the reason shown, and another replica resumes it as its own child."""
    async with trio.open_nursery() as nursery:
        leader = await start_server(nursery, make_settings(db_url, tmp_path / "a"))
        doomed = await start_server(nursery, make_settings(db_url, tmp_path / "b"))
        assert leader.deps.cluster.leader.leading
        wid = await workspace(db_url)
        sandbox = await doomed.deps.sandboxes.create(wid, "child", "opencode", None)
        await until_status(doomed, sandbox.id, "running", "failed")
        assert (await lease_of(db_url, sandbox.id))[1] == doomed.deps.cluster.replica_id
        kept = await leader.deps.sandboxes.create(wid, "kept", "opencode", None)
        await until_status(leader, kept.id, "running", "failed")

        doomed.shutdown.set()
        await until_status(leader, sandbox.id, "paused", "failed")
        row = await leader.deps.sandboxes.get(sandbox.id)
        assert row is not None
        assert row.status_reason == REASON
        assert await status_of(leader, kept.id) == "running"  # a live replica's child stays

        await leader.deps.sandboxes.resume(sandbox.id)
        await until_status(leader, sandbox.id, "running", "failed")
        assert await status_of(leader, sandbox.id) == "running"
        assert own_backends[0].running(sandbox.id)
        assert (await lease_of(db_url, sandbox.id))[1] == leader.deps.cluster.replica_id
        leader.shutdown.set()


async def test_a_replica_stops_its_child_once_another_replica_runs_the_sandbox(
    db_url: str, tmp_path: Path, own_backends: list[FakeBackend]
) -> None:
    """Process sandboxes: a restart on replica B starts the sandbox as B's child; replica A's
    own reconciliation (each replica reconciles its children) then stops A's old process."""
    options = {"reconcile_interval": "1"}
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, make_settings(db_url, tmp_path / "a", **options))
        second = await start_server(nursery, make_settings(db_url, tmp_path / "b", **options))
        wid = await workspace(db_url)
        sandbox = await first.deps.sandboxes.create(wid, "moved", "opencode", None)
        await until_status(first, sandbox.id, "running", "failed")
        await second.deps.sandboxes.restart(sandbox.id)
        with trio.fail_after(WAIT):
            while (await lease_of(db_url, sandbox.id))[1] != second.deps.cluster.replica_id:
                await trio.sleep(0.05)
        await until_status(second, sandbox.id, "running", "failed")
        assert own_backends[1].running(sandbox.id)
        with trio.fail_after(WAIT):
            await first.deps.reconciler.next_pass()
        assert not own_backends[0].running(sandbox.id)
        assert own_backends[1].running(sandbox.id)
        assert await status_of(first, sandbox.id) == "running"
        first.shutdown.set()
        second.shutdown.set()


async def test_leases_are_exclusive_until_their_replica_dies_and_a_delete_goes_first(
    db_url: str,
) -> None:
    """A live replica's lease cannot be claimed by another; once its heartbeat is three
    intervals old it can; a replica waiting to delete goes before other claims."""
    await trio.to_thread.run_sync(apply_migrations, db_url)
    wid = await workspace(db_url)
    async with open_database(db_url, listen_changes=False) as db:
        sid = (
            await insert_sandbox(
                db,
                "sbx_insert",
                workspace_id=wid,
                name="s",
                type="opencode",
                created_by=None,
                private=False,
            )
        ).id
        replicas = {n: Presence(db, n, f"http://{n}", interval=0.2) for n in ("a", "b", "c")}
        for presence in replicas.values():
            await presence.join()
        a, b, c = (Leases(db, n, replicas[n].dead_after) for n in ("a", "b", "c"))
        assert await a.try_claim(sid) is True
        assert await b.try_claim(sid) is False
        assert await b.try_claim("no-such-sandbox") is None
        # B waits to delete: A gives up at its renewal; C's new claim must wait behind B.
        await db.exec("sbx_op_want", id=sid, replica="b", lease=b.lease)
        assert await db.scalar("sbx_op_renew", id=sid, replica="a", lease=a.lease) is True
        await a.release(sid)
        assert await c.try_claim(sid) is False
        assert await b.try_claim(sid, supersede=True) is True
        # B dies holding it (only C beats on): after three intervals C may claim.
        with trio.fail_after(WAIT):
            while (row := await replicas["c"].replica("b")) is not None and row.alive:
                await replicas["c"].beat()
                await trio.sleep(0.05)
        assert await c.try_claim(sid) is True
        assert await db.scalar("sbx_op_renew", id=sid, replica="b", lease=b.lease) is None
