"""Workspace events across replicas: two servers on one database (one FakeBackend standing in for
a backend that belongs to no replica); a change made on one reaches event streams on both,
each change once, and a stream cut by a gap in the notices reconnects to a fresh snapshot."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from agentserver.models import Sandbox
from agentserver.sandboxes import feature
from agentserver.sandboxes.base import Endpoint, ExitNotice
from agentserver.sandboxes.events import Subscription, WorkspaceEvents
from agentserver.sandboxes.fake import FakeBackend
from agentserver.sandboxes.previews import PreviewWatcher
from agentserver.settings import Settings
from tests.conftest import Server, make_settings, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.workspace_events import EventStream, open_events

# Generous: a change reaches the other replica within milliseconds; a busy machine is slower.
ARRIVES = 10.0


@dataclass
class Pair:
    """Two replicas, and the same signed-in owner talking to each."""

    a: Server
    b: Server
    on_a: httpx.AsyncClient
    on_b: httpx.AsyncClient
    workspace_id: str
    backend: FakeBackend


@pytest.fixture
async def pair(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pair]:
    backend = FakeBackend()
    backend.previews = True

    @asynccontextmanager
    async def shared(settings: Settings, on_exit: ExitNotice) -> AsyncIterator[FakeBackend]:
        await trio.lowlevel.checkpoint()
        yield backend  # outlives either replica, as a Docker daemon would

    monkeypatch.setattr(feature, "backend_opener", shared)
    options = {"reconcile_interval": "0"}
    a = await start_server(nursery, make_settings(db_url, tmp_path / "a", **options))
    b = await start_server(nursery, make_settings(db_url, tmp_path / "b", **options))
    async with a.client() as on_a:
        _, workspace = await owner_of_workspace(on_a, "owner", "team")
        async with b.client(cookies=on_a.cookies) as on_b:
            yield Pair(a, b, on_a, on_b, workspace["id"], backend)
    a.shutdown.set()
    b.shutdown.set()


def of(stream: EventStream, sandbox_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The events of one sandbox a stream has read, in order."""
    return [
        (kind, data)
        for kind, data in stream.seen
        if data.get("id", data.get("sandboxId")) == sandbox_id
    ]


async def until(stream: EventStream, sandbox_id: str, kind: str, **fields: Any) -> None:
    """Wait for an event of `kind` about the sandbox whose data has `fields`."""
    with trio.fail_after(ARRIVES):
        while not any(
            k == kind and all(data.get(f) == v for f, v in fields.items())
            for k, data in of(stream, sandbox_id)
        ):
            await stream.changed()


def once_each(events: list[tuple[str, dict[str, Any]]]) -> bool:
    """No event (kind and payload) was delivered twice."""
    texts = [kind + json.dumps(data, sort_keys=True) for kind, data in events]
    return len(texts) == len(set(texts))


async def create(client: httpx.AsyncClient, workspace_id: str, name: str) -> str:
    made = await client.post(
        f"/api/workspaces/{workspace_id}/sandboxes", json={"name": name, "type": "opencode"}
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def sentinel(pair: Pair, *streams: EventStream) -> None:
    """A change made after everything else, seen on every stream: whatever notice an earlier
    change sent has been handled by then (each replica handles notices in commit order)."""
    sid = await create(pair.on_a, pair.workspace_id, "sentinel")
    for stream in streams:
        await until(stream, sid, "sandbox")


async def test_changes_made_on_one_replica_reach_both_replicas_streams_once(
    pair: Pair, nursery: trio.Nursery
) -> None:
    """Create, rename, pause and delete through replica A: a stream on B sees each of them,
    a stream on A too, and neither sees any event twice."""
    on_a = await open_events(nursery, pair.on_a, pair.workspace_id)
    on_b = await open_events(nursery, pair.on_b, pair.workspace_id)
    sid = await create(pair.on_a, pair.workspace_id, "box")
    for stream in (on_b, on_a):
        await until(stream, sid, "sandbox", status="running")
    renamed = await pair.on_a.patch(f"/api/sandboxes/{sid}", json={"name": "renamed"})
    assert renamed.status_code == 200, renamed.text
    for stream in (on_b, on_a):
        await until(stream, sid, "sandbox", name="renamed")
    paused = await pair.on_a.post(f"/api/sandboxes/{sid}/pause")
    assert paused.status_code == 200, paused.text
    for stream in (on_b, on_a):
        await until(stream, sid, "sandbox", status="paused")
    deleted = await pair.on_a.delete(f"/api/sandboxes/{sid}")
    assert deleted.status_code == 204, deleted.text
    for stream in (on_b, on_a):
        await until(stream, sid, "sandbox_deleted", id=sid)
    await sentinel(pair, on_a, on_b)
    for stream in (on_a, on_b):
        events = of(stream, sid)
        assert once_each(events), events
        assert [kind for kind, _ in events].count("sandbox_deleted") == 1
        assert events[-1][0] == "sandbox_deleted"  # nothing after it, and nothing older
    on_a.close()
    on_b.close()


async def test_a_change_made_on_b_reaches_a_stream_on_a(pair: Pair, nursery: trio.Nursery) -> None:
    """The other way round: a sandbox created through B shows on a stream held on A."""
    on_a = await open_events(nursery, pair.on_a, pair.workspace_id)
    sid = await create(pair.on_b, pair.workspace_id, "box")
    await until(on_a, sid, "sandbox", status="running")
    on_a.close()


async def test_a_port_made_public_on_one_replica_reaches_both_streams_once(
    pair: Pair, nursery: trio.Nursery
) -> None:
    """Making a port public through A is one `previews` event on a stream on B, and one on a
    stream on A (published there at once; its notice's echo is not published again)."""
    sid = await create(pair.on_a, pair.workspace_id, "box")
    on_b = await open_events(nursery, pair.on_b, pair.workspace_id)
    on_a = await open_events(nursery, pair.on_a, pair.workspace_id)
    public = await pair.on_a.put(f"/api/sandboxes/{sid}/previews/8000/public")
    assert public.status_code == 200, public.text
    for stream in (on_b, on_a):
        await until(stream, sid, "previews")
    await sentinel(pair, on_a, on_b)
    for stream in (on_a, on_b):
        assert [kind for kind, _ in of(stream, sid)].count("previews") == 1
    on_a.close()
    on_b.close()


async def test_of_two_replicas_seeing_the_same_ports_change_one_announces_it(
    pair: Pair,
) -> None:
    """Two replicas' preview watchers watching one sandbox: the first to see a port open
    publishes it, the second finds it recorded already and publishes nothing; the same when
    it closes, whichever looks first."""
    # Only this test's watchers watch the workspace (the servers' own poll watched ones).
    with pair.a.deps.events.subscribe(pair.workspace_id) as started:
        sid = await create(pair.on_a, pair.workspace_id, "box")
        await until_running(started, sid)
    service = pair.a.deps.sandboxes
    first, second = WorkspaceEvents(), WorkspaceEvents()
    watchers = [PreviewWatcher(service, events, db=pair.a.deps.db) for events in (first, second)]
    with first.subscribe(pair.workspace_id), second.subscribe(pair.workspace_id):
        assert [await w.check() for w in watchers] == [0, 0]  # serving nothing: no news
        pair.backend.listen(sid, 5173, Endpoint("127.0.0.1", 1))
        assert [await w.check() for w in watchers] == [1, 0]
        assert [await w.check() for w in watchers] == [0, 0]
        pair.backend.stop_listening(sid, 5173)
        assert [await w.check() for w in reversed(watchers)] == [1, 0]


async def test_a_gap_in_the_notices_ends_streams_and_a_reconnect_starts_from_a_snapshot(
    pair: Pair, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When B's listener loses its connection its streams end; a stream opened again reads
    the sandboxes as they are now (a rename made meanwhile) before anything else."""
    sid = await create(pair.on_a, pair.workspace_id, "box")
    url = f"/api/workspaces/{pair.workspace_id}/events"
    back = trio.Event()
    changes = pair.b.deps.db.changes
    set_live = changes.set_live

    def noting(live: bool) -> None:
        set_live(live)
        if live:
            back.set()

    monkeypatch.setattr(changes, "set_live", noting)
    async with pair.on_b.stream("GET", url, timeout=httpx.Timeout(30, read=None)) as response:
        lines = response.aiter_lines()
        with trio.fail_after(ARRIVES):
            async for line in lines:
                if line.startswith("event: sandbox"):
                    break
        await trio.to_thread.run_sync(terminate_listeners, db_url)
        with trio.fail_after(ARRIVES):
            async for _ in lines:  # the stream ends (it would wait for heartbeats otherwise)
                pass
    with trio.fail_after(20):
        await back.wait()
    renamed = await pair.on_a.patch(f"/api/sandboxes/{sid}", json={"name": "fresh"})
    assert renamed.status_code == 200
    async with pair.on_b.stream("GET", url, timeout=httpx.Timeout(30, read=None)) as response:
        seen = []
        with trio.fail_after(ARRIVES):
            async for line in response.aiter_lines():
                if line:
                    seen.append(line)
                if line.startswith("data:"):
                    break
    assert seen[0] == ": connected"
    assert seen[1] == "event: sandbox"
    first = json.loads(seen[2][5:])
    assert (first["id"], first["name"]) == (sid, "fresh")


async def until_running(sub: Subscription, sandbox_id: str) -> None:
    with trio.fail_after(ARRIVES):
        while True:
            row = (await sub.inbox.receive()).get("sandbox")
            if isinstance(row, Sandbox) and row.id == sandbox_id and row.status == "running":
                return


def terminate_listeners(db_url: str) -> None:
    """Cut every replica's LISTEN connection (what a database restart or a network blip does)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
        )
