"""An agent asks the server's tunnel protocol before connecting, and stops clearly on a mismatch."""

from __future__ import annotations

import httpx
import pytest

from agentserver import __version__
from agentserver.agent.compat import IncompatibleServer, check_server, upgrade_required
from agentserver.tunnel.version import PROTOCOL


def answering(status: int, body: object) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/agent/install"
        return httpx.Response(status, json=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_the_same_protocol_passes() -> None:
    async with answering(200, {"version": "0.1.0", "tunnelProtocol": PROTOCOL}) as client:
        await check_server("http://server.test", client)


async def test_another_protocol_stops_with_the_servers_download() -> None:
    body = {"version": "7.0.0", "tunnelProtocol": PROTOCOL + 1}
    async with answering(200, body) as client:
        with pytest.raises(IncompatibleServer) as stopped:
            await check_server("http://server.test", client)
    assert "agentserver 7.0.0" in str(stopped.value)
    assert "curl -fLO http://server.test/download/agentserver-agent.pyz" in str(stopped.value)


async def test_a_server_that_does_not_say_is_not_refused() -> None:
    async with answering(200, {"version": "0.0.9"}) as client:
        await check_server("http://server.test", client)
    async with answering(404, {"error": {}}) as client:
        await check_server("http://server.test", client)


REFUSAL = (
    b'{"error": {"code": "upgrade_required", "message": "this agent (tunnel protocol 1) cannot'
    b" connect to a server running agentserver 7.0.0 (tunnel protocol 2): get the matching"
    b' agent from the server, e.g. `curl -fLO <server>/download/agentserver-agent.pyz`"}}'
)


async def test_a_426_names_both_versions_from_what_the_server_says() -> None:
    body = {"version": "7.0.0", "tunnelProtocol": PROTOCOL + 1}
    async with answering(200, body) as client:
        line = await upgrade_required("http://server.test", REFUSAL, client)
    assert f"this agent (agentserver {__version__}, tunnel protocol {PROTOCOL})" in line
    assert f"agentserver 7.0.0 (tunnel protocol {PROTOCOL + 1})" in line
    assert "curl -fLO http://server.test/download/agentserver-agent.pyz" in line
    assert "\n" not in line


async def test_a_426_from_a_server_that_does_not_say_is_read_from_the_refusal() -> None:
    async with answering(404, {"error": {}}) as client:
        line = await upgrade_required("http://server.test", REFUSAL, client)
    assert f"this agent (agentserver {__version__}, tunnel protocol {PROTOCOL})" in line
    assert "agentserver 7.0.0 (tunnel protocol 2)" in line
    assert "curl -fLO http://server.test/download/agentserver-agent.pyz" in line


async def test_a_bare_426_still_names_this_agent_and_the_download() -> None:
    async with answering(404, {"error": {}}) as client:
        line = await upgrade_required("http://server.test", b"Upgrade Required", client)
    assert f"this agent (agentserver {__version__}, tunnel protocol {PROTOCOL})" in line
    assert "HTTP 426" in line
    assert "curl -fLO http://server.test/download/agentserver-agent.pyz" in line
