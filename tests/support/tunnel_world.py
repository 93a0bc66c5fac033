"""A server, a workspace and local agents connected to it: for tunnel tests and benchmarks."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio
import trio_websocket

from agentserver.agent.connect import Session, connect
from tests.conftest import Server
from tests.support.sandbox_login import sandbox_client, sandbox_cookie


@dataclass
class Agent:
    """One in-process `agent connect`: its session, status lines and exit status."""

    sandbox_id: str = ""
    session: Session | None = None
    lines: list[str] = field(default_factory=list)
    status: int | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)


@dataclass
class TunnelWorld:
    server: Server
    owner: httpx.AsyncClient
    workspace_id: str
    tmp: Path

    async def code(self) -> str:
        response = await self.owner.post(f"/api/workspaces/{self.workspace_id}/agent-code")
        assert response.status_code == 201, response.text
        return str(response.json()["code"])

    async def start_agent(
        self,
        nursery: trio.Nursery,
        opencode_url: str,
        name: str = "laptop",
        allow_ports: list[int] | None = None,
    ) -> Agent:
        """Register with a fresh code and run `connect` in `nursery` until it is connected
        (sharing `allow_ports` as previews)."""
        agent = Agent()
        config = self.tmp / f"agent-{len(os.listdir(self.tmp))}.json"

        def started(session: Session) -> None:
            agent.session = session
            agent.sandbox_id = session.config.sandboxId
            agent.ready.set()

        async def run() -> None:
            try:
                agent.status = await connect(
                    server=self.server.url,
                    code=await self.code(),
                    name=name,
                    opencode_url=opencode_url,
                    config_path=config,
                    allow_ports=allow_ports,
                    say=agent.lines.append,
                    started=started,
                )
            finally:
                agent.ready.set()
                agent.exited.set()

        nursery.start_soon(run)
        with trio.fail_after(60):
            await agent.ready.wait()
            assert agent.session is not None, agent.lines
            await agent.session.connected.wait()
        return agent

    def host(self, sandbox_id: str) -> str:
        return f"oc-{sandbox_id}.localhost:{self.server.port}"

    async def cookie(self, sandbox_id: str) -> str:
        """The subdomain cookie, through /open and the one-time ticket, as a browser gets it."""
        async with httpx.AsyncClient(
            base_url=self.server.url, headers={"Host": self.host(sandbox_id)}
        ) as sub:
            return await sandbox_cookie(self.owner, sub, sandbox_id)

    async def browser(self, sandbox_id: str, **kwargs: object) -> httpx.AsyncClient:
        """A client on the sandbox's subdomain (Host header to 127.0.0.1) with its cookie."""
        kwargs.setdefault("timeout", httpx.Timeout(60, read=None))
        host = self.host(sandbox_id)
        return await sandbox_client(self.server.url, self.owner, sandbox_id, host=host, **kwargs)

    @asynccontextmanager
    async def websocket(
        self, sandbox_id: str, cookie: str, target: str
    ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
        """A browser WebSocket to the sandbox subdomain (right Host and Origin, our cookie)."""
        host = self.host(sandbox_id)
        stream = await trio.open_tcp_stream("127.0.0.1", self.server.port)
        headers = [
            (b"cookie", f"agentserver_sandbox={cookie}".encode()),
            (b"origin", f"http://{host}".encode()),
        ]
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,
                host,
                target,
                extra_headers=headers,
                max_message_size=16 * 1024 * 1024,
            )
            try:
                yield ws
            finally:
                await ws.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
