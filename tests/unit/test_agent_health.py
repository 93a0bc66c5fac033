"""The server's probe of a local agent's opencode, through a real agent forwarder."""

from __future__ import annotations

import trio

from agentserver.agent.forward import Forwarder
from agentserver.sandboxes.agent_health import HEALTH_TARGET, opencode_health
from tests.support.upstream import RecordingUpstream, serve_upstream
from tests.unit.test_agent import agent_tunnel, closed_port


async def test_an_opencode_that_is_not_answering_is_named_with_its_address() -> None:
    """Nothing listens at the agent's opencode URL: the probe says so, with that address."""
    port = closed_port()
    async with (
        Forwarder(f"http://127.0.0.1:{port}", None, print) as forwarder,
        agent_tunnel(forwarder) as server,
    ):
        health = await opencode_health(server)
    assert health == f"opencode is not answering on 127.0.0.1:{port}"


async def test_an_answering_opencode_is_healthy(nursery: trio.Nursery) -> None:
    """An opencode that answers its health route gives no reason, and was really asked."""
    laptop: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    async with (
        Forwarder(f"http://127.0.0.1:{laptop.port}", None, print) as forwarder,
        agent_tunnel(forwarder) as server,
    ):
        assert await opencode_health(server) is None
    assert [seen.target for seen in laptop.requests] == [HEALTH_TARGET]
