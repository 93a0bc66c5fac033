"""The fast path's exchange (proxy/exchange.py) over a real loopback socket, with a stand-in
for the subdomain proxy."""

from __future__ import annotations

from typing import Any

import h11

from agentserver.proxy.exchange import Client, Exchange
from agentserver.proxy.http import Receive, Send, refuse_framing
from agentserver.proxy.http1 import parse_request_head
from agentserver.proxy.routing import Target
from tests.support.tcp import tcp_pair


class Refusing:
    """Answers every request the way the proxy refuses one for its framing."""

    async def handle(
        self, target: Target, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        await refuse_framing(send, "refused")


async def test_the_proxy_can_end_a_kept_alive_connection() -> None:
    """An answer carrying `Connection: close` ends a keep-alive connection on the fast path:
    the browser is told so and the exchange does not wait for another request."""
    request = parse_request_head(b"GET / HTTP/1.1\r\nHost: oc-abc.localhost\r\n\r\n")
    assert request is not None
    assert request.keep_alive
    async with tcp_pair() as (browser, server):
        proxy: Any = Refusing()
        exchange = Exchange(Client(server), request, Target("opencode", "abc"), proxy)
        assert await exchange.run() is False
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        reader.receive_data(await browser.receive_some(65536))
        response = reader.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 400
    assert (b"connection", b"close") in response.headers
