"""The proxy's upstream pool follows the sandbox lifecycle: pausing, moving or deleting a
sandbox drops its idle connections, and the next request goes where the sandbox now is."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from agentserver.models import Sandbox
from agentserver.proxy.upstream import Pool
from agentserver.sandboxes.base import Endpoint
from agentserver.sandboxes.service import Sandboxes
from tests.conftest import Server
from tests.support.proxy_world import World
from tests.support.sandbox_login import sandbox_cookie
from tests.support.sandboxes import open_events, owner_with_workspace
from tests.support.upstream import RecordingUpstream, serve_upstream

CONNECTIONS = 8


def lifecycle(world: World) -> Sandboxes:
    service = world.service.inner
    assert isinstance(service, Sandboxes)
    return service


def pool_of(world: World) -> Pool:
    pool = world.server.running.proxy.pool
    assert isinstance(pool, Pool)
    return pool


async def pause_and_resume(world: World, sandbox_id: str, port: int) -> None:
    """Walk the sandbox through a pause and a resume that brings its agent up on `port`."""
    service = lifecycle(world)
    assert await service.set_status(sandbox_id, "running", "pausing")
    assert pool_of(world).idle_count() == 0  # paused: nothing of it is kept
    assert await service.set_status(sandbox_id, "pausing", "paused")
    assert await service.set_status(sandbox_id, "paused", "resuming")
    endpoint = Endpoint("127.0.0.1", port)
    assert await service.set_status(sandbox_id, "resuming", "running", endpoint=endpoint)


async def test_pause_resume_cycles_leave_no_idle_connections_behind(
    world: World, nursery: trio.Nursery
) -> None:
    """Over several pause/resume cycles, each moving the agent to another port, a pause drops
    the sandbox's idle connections, so the pool never holds more than the one in use."""
    other: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    agents = [world.upstream, other]
    sid = await world.sandbox()
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        for cycle in range(4):
            assert (await sub.get("/json")).status_code == 200
            assert pool_of(world).idle_count() == 1
            await pause_and_resume(world, sid, agents[(cycle + 1) % 2].port)
    assert pool_of(world).idle_count() == 0


async def test_the_first_request_after_a_move_reaches_the_new_endpoint(
    world: World, nursery: trio.Nursery
) -> None:
    """Right after a resume to another port, the next request goes there, not to the old
    agent (no access cached from before the move is used)."""
    other: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    sid = await world.sandbox()
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        assert (await sub.get("/json")).status_code == 200
        await pause_and_resume(world, sid, other.port)
        assert (await sub.get("/json")).status_code == 200
    assert len(world.upstream.seen("/json")) == 1
    assert len(other.seen("/json")) == 1


async def test_deleting_a_sandbox_drops_its_idle_connections(world: World) -> None:
    """A deleted sandbox keeps no connection open in the pool."""
    sid = await world.sandbox()
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        assert (await sub.get("/json")).status_code == 200
    assert pool_of(world).idle_count() == 1
    await lifecycle(world).delete(sid)
    assert pool_of(world).idle_count() == 0


def sockets_to(port: int) -> int:
    """This process's open sockets whose remote end is loopback `port` (the agent)."""
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


@pytest.mark.opencode
async def test_pause_resume_cycles_of_real_opencode_leak_no_open_files(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """A real opencode sandbox used over several connections at once, then paused and
    resumed three times: after each pause the server holds no socket to the agent's port (the
    pool kept ~8 of them per cycle before) and no idle connection in its pool."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "oc"})
    sid = created.json()["id"]
    assert (await events.until(sid, "running", "failed"))["status"] == "running"
    pool = sandbox_server.running.proxy.pool
    for _ in range(3):
        location = (await client.get(f"/api/sandboxes/{sid}/open")).headers["location"]
        url = urlsplit(location)
        async with httpx.AsyncClient(
            base_url=sandbox_server.url, headers={"Host": url.netloc}, timeout=60
        ) as sub:
            token = await sandbox_cookie(client, sub, sid)
            sub.headers["Cookie"] = f"agentserver_sandbox={token}"
            async with trio.open_nursery() as burst:  # several connections, as a browser opens
                for _ in range(CONNECTIONS):
                    burst.start_soon(sub.get, "/session")
        assert pool.idle_count() >= 2
        row = await sandbox_server.deps.db.one("sbx_get", Sandbox, id=sid)
        assert row is not None
        assert row.endpoint_port
        assert sockets_to(row.endpoint_port) >= 2
        seen = len(events.seen)
        assert (await client.post(f"/api/sandboxes/{sid}/pause")).status_code == 200
        await events.until(sid, "paused", after=seen)
        assert pool.idle_count() == 0
        assert sockets_to(row.endpoint_port) == 0
        seen = len(events.seen)
        assert (await client.post(f"/api/sandboxes/{sid}/resume")).status_code == 200
        assert (await events.until(sid, "running", "failed", after=seen))["status"] == "running"
    events.close()
