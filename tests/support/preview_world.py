"""Previews driven by the fake backend: the proxy world (tests/support/proxy_world.py) with a
`FakeBackend` answering `preview_endpoint`/`listening_ports`, and dev servers that are
recording upstreams (tests/support/upstream.py) "listening" inside sandboxes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import trio
import trio_websocket

from agentserver.sandboxes.base import Endpoint
from agentserver.sandboxes.fake import FakeBackend
from tests.support.proxy_world import World
from tests.support.sandbox_login import BIND_COOKIE, SANDBOX_COOKIE, bound_ticket, redeem
from tests.support.upstream import RecordingUpstream, serve_upstream


@dataclass
class Previews:
    """The world, its fake backend, and the browser's binding nonces per preview host."""

    world: World
    backend: FakeBackend
    nursery: trio.Nursery
    nonces: dict[str, str] = field(default_factory=dict)

    def host(self, sandbox_id: str, port: int) -> str:
        return f"p{port}-{sandbox_id}.localhost:{self.world.server.port}"

    def origin(self, sandbox_id: str, port: int) -> str:
        return f"http://{self.host(sandbox_id, port)}"

    async def dev_server(self, sandbox_id: str, port: int) -> RecordingUpstream:
        """A recording upstream that listens on `port` inside the sandbox (for the fake)."""
        up: RecordingUpstream = await self.nursery.start(serve_upstream, RecordingUpstream())
        self.backend.listen(sandbox_id, port, Endpoint("127.0.0.1", up.port))
        return up

    def client(
        self, sandbox_id: str, port: int, cookie: str | None = None, **headers: str
    ) -> httpx.AsyncClient:
        """A browser on the preview's host (Host header to 127.0.0.1), with the preview's
        cookie and the nonce this browser holds there, if any."""
        host = self.host(sandbox_id, port)
        sent = {"Host": host, **headers}
        crumbs = [f"{SANDBOX_COOKIE}={cookie}"] if cookie else []
        if host in self.nonces:
            crumbs.append(f"{BIND_COOKIE}={self.nonces[host]}")
        if crumbs and "Cookie" not in headers:
            sent["Cookie"] = "; ".join(crumbs)
        return httpx.AsyncClient(base_url=self.world.server.url, headers=sent, timeout=30)

    async def ticket_url(self, main: httpx.AsyncClient, sandbox_id: str, port: int) -> str:
        """A ticket URL for `main`'s user, minted for the preview host's binding nonce."""
        async with self.client(sandbox_id, port) as sub:
            url, self.nonces[self.host(sandbox_id, port)] = await bound_ticket(
                main, sub, sandbox_id
            )
        return url

    async def open(self, sandbox_id: str, port: int, main: httpx.AsyncClient | None = None) -> str:
        """Through /open and the ticket, as a browser opening the preview: its cookie."""
        url = await self.ticket_url(main or self.world.owner, sandbox_id, port)
        async with self.client(sandbox_id, port) as sub:
            response = await redeem(sub, url, self.nonces[self.host(sandbox_id, port)])
        assert response.status_code == 302, response.text
        return str(response.cookies[SANDBOX_COOKIE])

    async def ws_refusal(
        self, sandbox_id: str, port: int, cookie: str | None, origin: str | None
    ) -> int:
        """The status with which the proxy answers a WebSocket upgrade it refuses."""
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        }
        if origin:
            headers["Origin"] = origin
        async with self.client(sandbox_id, port, cookie, **headers) as sub:
            response = await sub.get("/ws")
        assert response.status_code != 101
        return response.status_code

    async def websocket(
        self, sandbox_id: str, port: int, cookie: str | None, origin: str | None
    ) -> trio_websocket.WebSocketConnection:
        """A browser WebSocket to `/ws` on the preview's host (closed with the nursery)."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.world.server.port)
        headers = [(b"origin", origin.encode())] if origin else []
        if cookie:
            headers.append((b"cookie", f"{SANDBOX_COOKIE}={cookie}".encode()))
        return await trio_websocket.wrap_client_stream(
            self.nursery, stream, self.host(sandbox_id, port), "/ws", extra_headers=headers
        )


@pytest.fixture
async def previews(world: World, nursery: trio.Nursery) -> AsyncIterator[Previews]:
    """The proxy world with a fake backend behind the lifecycle service (its rows are
    inserted by the test: `world.sandbox()`)."""
    backend = FakeBackend()
    service = world.server.deps.sandboxes
    real, service.backend = service.backend, backend
    try:
        yield Previews(world, backend, nursery)
    finally:
        service.backend = real
