"""Upstream WebSockets close with the proxy's own UpstreamClosed, whatever carries them."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from agentserver.proxy.tunnel_upstream import TunnelSocket
from agentserver.proxy.upstream_socket import TcpSocket, UpstreamClosed
from agentserver.tunnel import TunnelStream
from tests.unit.test_tunnel_open import RecordingTransport


class ClosedWebSocket:
    """Stands in for a trio-websocket connection the agent closed with a code and a reason."""

    subprotocol = None

    async def get_message(self) -> str | bytes:
        await trio.lowlevel.checkpoint()
        raise trio_websocket.ConnectionClosed(trio_websocket.CloseReason(4001, "bye"))

    async def send_message(self, message: str | bytes) -> None:
        await trio.lowlevel.checkpoint()
        raise trio_websocket.ConnectionClosed(trio_websocket.CloseReason(1006, None))


async def test_tcp_socket_turns_the_libraries_close_into_upstream_closed() -> None:
    """The agent's close code and reason travel in UpstreamClosed, not ConnectionClosed."""
    socket = TcpSocket(ClosedWebSocket())  # type: ignore[arg-type]
    with pytest.raises(UpstreamClosed) as received:
        await socket.get_message()
    assert (received.value.code, received.value.reason) == (4001, "bye")
    with pytest.raises(UpstreamClosed) as sent:
        await socket.send_message("x")
    assert (sent.value.code, sent.value.reason) == (1006, None)


async def test_tunnel_socket_closes_with_upstream_closed_carrying_the_agents_code() -> None:
    """A relayed WebSocket the agent closed raises UpstreamClosed with its close code."""
    stream = TunnelStream(RecordingTransport(capacity=10), 1, None)
    stream.end_received(4002, "done")
    with pytest.raises(UpstreamClosed) as closed:
        await TunnelSocket(stream, None).get_message()
    assert (closed.value.code, closed.value.reason) == (4002, "done")


async def test_tunnel_socket_reports_a_broken_tunnel_as_1006() -> None:
    """A tunnel gone under a relayed WebSocket is an abnormal close (1006) on both directions."""
    transport = RecordingTransport(capacity=10, closed=True, close_reason="link broke")
    socket = TunnelSocket(TunnelStream(transport, 1, None), None)
    with pytest.raises(UpstreamClosed) as received:
        await socket.get_message()
    assert received.value.code == 1006
    with pytest.raises(UpstreamClosed) as sent:
        await socket.send_message(b"x")
    assert sent.value.code == 1006
