"""A local agent across a server restart: back within seconds, saying what happened in words."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import trio

from tests.conftest import make_settings, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.bulk_upstream import BulkUpstream
from tests.support.tunnel_world import TunnelWorld, free_port
from tests.support.workspace_events import open_events, watch_statuses

# An exception class name in a status line (HandshakeError, ConnectionRejected, OSError …).
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+[A-Z]\w*(Error|Exception|Rejected|Closed)\b|OSError")


async def test_an_agent_reconnects_within_seconds_of_a_server_restart(
    db_url: str, tmp_path: Path, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """The server stops (go-away to its agents) and starts again on the same address: the
    agent is connected again within a few seconds, and its lines say "server restarting"."""
    settings = make_settings(db_url, tmp_path / "data", listen=f"127.0.0.1:{free_port()}")
    async with trio.open_nursery() as first_life:
        server = await start_server(first_life, settings)
        async with server.client() as owner:
            _, workspace = await owner_of_workspace(owner)
            world = TunnelWorld(server, owner, workspace["id"], tmp_path)
            agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
            cookies = owner.cookies
        server.shutdown.set()
    assert agent.session is not None
    assert agent.session.connections == 1
    stopped = trio.current_time()

    server = await start_server(nursery, settings)
    async with (
        server.client(cookies=cookies) as owner,
        watch_statuses(owner, workspace["id"]) as watch,
    ):
        with trio.fail_after(30):
            await watch.until(agent.sandbox_id, "running")
    back = trio.current_time() - stopped
    assert agent.session.connections == 2
    assert back < 10, f"reconnected after {back:.1f} s: {agent.lines}"
    assert any(line.startswith("server restarting, reconnecting now") for line in agent.lines), (
        agent.lines
    )
    assert not [line for line in agent.lines if CLASS_NAME.search(line)], agent.lines
    server.shutdown.set()


async def test_a_running_agent_whose_opencode_is_not_answering_says_so(
    world: TunnelWorld, nursery: trio.Nursery
) -> None:
    """The agent is connected (`running`) but nothing listens at its opencode URL: the
    workspace's events and the API show "opencode is not answering on 127.0.0.1:PORT"."""
    port = free_port()
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{port}")
    expected = f"opencode is not answering on 127.0.0.1:{port}"
    async with trio.open_nursery() as watching:
        events = await open_events(watching, world.owner, world.workspace_id)
        with trio.fail_after(30):
            while not any(
                kind == "sandbox"
                and data["id"] == agent.sandbox_id
                and data["status"] == "running"
                and data["statusReason"] == expected
                for kind, data in events.seen
            ):
                await events.changed()
        events.close()
    shown = (await world.owner.get(f"/api/sandboxes/{agent.sandbox_id}")).json()
    assert (shown["status"], shown["statusReason"]) == ("running", expected)


async def test_an_offline_agent_shows_when_it_was_last_seen(
    world: TunnelWorld, bulk: BulkUpstream
) -> None:
    """Once its agent stops, the sandbox is offline with `lastSeenAt` stamped at the tunnel's end
    (not a heartbeat earlier)."""
    async with watch_statuses(world.owner, world.workspace_id) as watch:
        async with trio.open_nursery() as laptop:
            agent = await world.start_agent(laptop, f"http://127.0.0.1:{bulk.port}")
            running = await watch.until(agent.sandbox_id, "running")
            laptop.cancel_scope.cancel()
        offline = await watch.until(agent.sandbox_id, "offline")
    assert offline["lastSeenAt"] is not None
    last_seen = datetime.fromisoformat(offline["lastSeenAt"].replace("Z", "+00:00"))
    assert last_seen > datetime.fromisoformat(running["updatedAt"].replace("Z", "+00:00"))
