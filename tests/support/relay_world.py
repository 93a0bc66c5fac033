"""Two replicas (in-process servers on one database) and a local agent connected to the first:
for the relay's tests and benchmark."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket

from agentserver.agent.connect import Session, tunnel_url
from agentserver.agent.forward import Forwarder
from tests.conftest import Server, make_settings, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.sandbox_login import SANDBOX_COOKIE, sandbox_client
from tests.support.tunnel_world import Agent, TunnelWorld


@dataclass
class Replicas:
    """Replica `a` (where the agents connect first) and `b`, and a workspace owner on `a`."""

    a: Server
    b: Server
    world: TunnelWorld  # on replica a

    def host(self, sandbox_id: str) -> str:
        return self.world.host(sandbox_id)

    async def browser(self, server: Server, sandbox_id: str, **options: Any) -> httpx.AsyncClient:
        """A client of the sandbox's host sent to `server`, signed in as the owner."""
        options.setdefault("timeout", httpx.Timeout(60, read=None))
        return await sandbox_client(
            server.url, self.world.owner, sandbox_id, host=self.host(sandbox_id), **options
        )

    async def status(self, sandbox_id: str) -> str:
        response = await self.world.owner.get(f"/api/sandboxes/{sandbox_id}")
        assert response.status_code == 200, response.text
        return str(response.json()["status"])

    async def start_twin(
        self, nursery: trio.Nursery, agent: Agent, opencode_url: str, server: Server | None = None
    ) -> trio.CancelScope:
        """A second connection with `agent`'s credentials (to `server`, by default replica a),
        running until the returned scope is cancelled; returns once it is connected."""
        assert agent.session is not None
        config = agent.session.config
        connected = trio.Event()
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                async with Forwarder(opencode_url, None, lambda line: None) as forwarder:
                    url = (server or self.a).url
                    twin = Session(config, forwarder, lambda line: None, server=url)
                    twin.wait = _stay_away
                    async with trio.open_nursery() as inner:
                        inner.start_soon(twin.run)
                        await twin.connected.wait()
                        connected.set()

        nursery.start_soon(run)
        with trio.fail_after(30):
            await connected.wait()
        return scope

    async def until_status(self, sandbox_id: str, status: str, seconds: float = 30) -> None:
        """Ask the API until the sandbox shows `status`. (Polled: a change made on one replica
        reaches another's event streams only once events travel by NOTIFY.)"""
        with trio.fail_after(seconds):
            while await self.status(sandbox_id) != status:
                await trio.sleep(0.1)

    def move_agent(self, agent: Agent, server: Server) -> None:
        """The agent's next connection goes to `server` (as through a balancer)."""
        assert agent.session is not None
        agent.session.url = tunnel_url(agent.session.config, server.url)

    @asynccontextmanager
    async def websocket(
        self, server: Server, sandbox_id: str, cookie: str, target: str
    ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
        """A browser WebSocket to the sandbox's host on `server`."""
        host = self.host(sandbox_id)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        headers = [
            (b"cookie", f"{SANDBOX_COOKIE}={cookie}".encode()),
            (b"origin", f"http://{host}".encode()),
        ]
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, host, target, extra_headers=headers
            )
            try:
                yield ws
            finally:
                await ws.aclose()


async def _stay_away(delay: float) -> None:
    """A reconnect wait that never ends."""
    await trio.sleep_forever()


async def start_replica(nursery: trio.Nursery, db_url: str, data_dir: Path) -> Server:
    return await start_server(nursery, make_settings(db_url, data_dir))


@asynccontextmanager
async def open_replicas(nursery: trio.Nursery, db_url: str, tmp: Path) -> AsyncIterator[Replicas]:
    """Replicas a and b on `db_url`, stopped on exit."""
    a = await start_replica(nursery, db_url, tmp / "a")
    b = await start_replica(nursery, db_url, tmp / "b")
    agents = tmp / "agents"
    agents.mkdir(exist_ok=True)
    try:
        async with a.client() as owner:
            _, workspace = await owner_of_workspace(owner)
            yield Replicas(a, b, TunnelWorld(a, owner, workspace["id"], agents))
    finally:
        a.shutdown.set()
        b.shutdown.set()
