"""Presence and shared secrets: each replica's row, its heartbeat, and secrets made once."""

from __future__ import annotations

from pathlib import Path

import trio

from agentserver.cluster import Presence, default_relay_url, new_replica_id, shared_secret
from agentserver.cluster.keys import relay_secret
from agentserver.cluster.owners import Owners
from agentserver.db.database import Database, Tx, open_database
from agentserver.db.migrate import apply_migrations
from tests.conftest import make_settings, start_server


async def test_a_server_joins_with_its_listen_address_and_leaves_when_it_stops(
    db_url: str, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:  # ends when the server has stopped
        server = await start_server(nursery, make_settings(db_url, tmp_path / "data"))
        (row,) = await server.deps.cluster.presence.replicas()
        assert row.id == server.deps.cluster.replica_id
        assert row.relay_url == f"http://127.0.0.1:{server.port}"
        assert row.alive
        assert not row.draining
        server.shutdown.set()
    async with open_database(db_url, listen_changes=False) as db:
        assert await db.rows("cluster_replicas", dead_after=60.0) == []


async def test_a_replica_whose_heartbeat_stopped_is_dead_after_three_intervals(
    db_url: str,
) -> None:
    await trio.to_thread.run_sync(apply_migrations, db_url)
    async with open_database(db_url, listen_changes=False) as db:
        quick = Presence(db, new_replica_id(), "http://127.0.0.1:1", interval=0.1)
        other = Presence(db, new_replica_id(), "http://127.0.0.1:2", interval=0.1)
        await quick.join()
        await other.join()
        assert {r.id: r.alive for r in await quick.replicas()} == {
            quick.replica_id: True,
            other.replica_id: True,
        }
        # `other` stops beating; `quick` goes on: after 3 intervals only `quick` is alive.
        with trio.fail_after(10):
            while (row := await quick.replica(other.replica_id)) is not None and row.alive:
                await quick.beat()
        assert row is not None
        assert not row.alive
        me = await quick.replica(quick.replica_id)
        assert me is not None
        assert me.alive


async def test_a_heartbeat_after_the_row_was_pruned_joins_again(db_url: str) -> None:
    await trio.to_thread.run_sync(apply_migrations, db_url)
    async with open_database(db_url, listen_changes=False) as db:
        presence = Presence(db, new_replica_id(), "http://127.0.0.1:1")
        await presence.join()
        await presence.leave()
        assert await presence.replica(presence.replica_id) is None
        await presence.drain()
        row = await presence.replica(presence.replica_id)
        assert row is not None
        assert row.draining


async def test_a_secret_is_made_once_and_read_by_every_replica(db_url: str) -> None:
    await trio.to_thread.run_sync(apply_migrations, db_url)
    async with open_database(db_url, listen_changes=False) as db:
        got: list[bytes] = []

        async def ask() -> None:
            got.append(await shared_secret(db, "relay"))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(ask)
        assert len(got) == 8
        assert len(set(got)) == 1
        assert len(got[0]) == 32
        assert await relay_secret(db, None) == got[0]
        given = await relay_secret(db, "a secret the operator chose")
        assert given != got[0]
        assert len(given) == 32


def test_the_default_relay_url_is_the_listen_address(tmp_path: Path) -> None:
    settings = make_settings("postgresql://x/y", tmp_path, listen="0.0.0.0:8080")
    assert default_relay_url(settings) == "http://127.0.0.1:8080"
    settings = make_settings("postgresql://x/y", tmp_path, listen="10.1.2.3:9000")
    assert default_relay_url(settings) == "http://10.1.2.3:9000"


async def test_a_replica_never_sweeps_its_own_tunnels_for_a_late_heartbeat(
    db_url: str, tmp_path: Path
) -> None:
    """A replica whose own heartbeat is late (a stalled machine) keeps its tunnels' rows in its
    own sweep; another replica's sweep judges it dead and removes them."""
    await trio.to_thread.run_sync(apply_migrations, db_url)
    async with open_database(db_url, listen_changes=False) as db:
        late = Owners(db, Presence(db, new_replica_id(), "http://127.0.0.1:1"))
        other = Owners(db, Presence(db, new_replica_id(), "http://127.0.0.1:2"))
        await late.presence.join()
        await other.presence.join()
        sandbox_id = await owner_of_a_local_sandbox(db)
        await late.claim(sandbox_id)

        def stall(tx: Tx) -> None:
            tx.conn.execute(
                "UPDATE replicas SET heartbeat_at = now() - interval '1 minute' WHERE id = %s",
                (late.replica_id,),
            )

        await db.transaction(stall)
        assert await late.forget_dead() == 0
        assert await late.lookup(sandbox_id, fresh=True) is not None
        assert await other.forget_dead() == 1
        assert await late.lookup(sandbox_id, fresh=True) is None


async def owner_of_a_local_sandbox(db: Database) -> str:
    """A user, a workspace and one local sandbox in it, made in SQL; the sandbox's id."""

    def make(tx: Tx) -> str:
        tx.conn.execute("INSERT INTO users (id, username, password_hash) VALUES ('u1', 'u1', 'x')")
        tx.conn.execute("INSERT INTO workspaces (id, name) VALUES ('w1', 'w1')")
        tx.conn.execute(
            "INSERT INTO sandboxes (id, workspace_id, name, type, status, created_by, agent_secret)"
            " VALUES ('s1', 'w1', 's1', 'local', 'running', 'u1', 'secret')"
        )
        return "s1"

    return await db.transaction(make)
