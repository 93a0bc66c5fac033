"""A local agent across a server restart: back within seconds, saying what happened in words."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from tests.conftest import make_settings, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.bulk_upstream import BulkUpstream
from tests.support.tunnel_world import TunnelWorld, free_port
from tests.support.workspace_events import watch_statuses

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
    assert any(line.startswith("server restarting, reconnecting in") for line in agent.lines), (
        agent.lines
    )
    assert not [line for line in agent.lines if CLASS_NAME.search(line)], agent.lines
    server.shutdown.set()
