"""An agent asks the server's tunnel protocol before connecting, and stops clearly on a mismatch."""

from __future__ import annotations

import httpx
import pytest

from agentserver.agent.compat import IncompatibleServer, check_server
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
