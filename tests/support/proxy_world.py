"""A real server, a recording upstream (tests/support/upstream.py) and a member who can open
sandboxes: the world the subdomain proxy tests run in (fixture `world`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import trio

from agentserver.auth.tokens import new_id
from agentserver.models import Sandbox
from agentserver.sandboxes.events import Subscription
from tests.conftest import Server, register
from tests.support.accounts import add_member, owner_of_workspace
from tests.support.sandbox_login import BIND_COOKIE, bound_ticket, redeem
from tests.support.upstream import RecordingUpstream, serve_upstream

AGENT_SECRET = "agent-password-123"


@dataclass
class RecordingService:
    """Stands in for (or wraps) the lifecycle service: records wake and activity calls."""

    inner: Any = None
    woken: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)

    async def wake(self, sandbox_id: str) -> None:
        self.woken.append(sandbox_id)
        if self.inner is not None:
            await self.inner.wake(sandbox_id)

    def record_activity(self, sandbox_id: str) -> None:
        self.active.append(sandbox_id)
        if self.inner is not None:
            self.inner.record_activity(sandbox_id)


@dataclass
class World:
    server: Server
    upstream: RecordingUpstream
    owner: httpx.AsyncClient
    workspace_id: str
    db_url: str
    service: RecordingService
    # The binding nonce this "browser" holds on each sandbox host (the cookie it was given).
    nonces: dict[str, str] = field(default_factory=dict)

    def host(self, sandbox_id: str, prefix: str = "oc-") -> str:
        return f"{prefix}{sandbox_id}.localhost:{self.server.port}"

    def sub(self, sandbox_id: str, cookie: str | None = None, **headers: str) -> httpx.AsyncClient:
        """A client talking to the sandbox's subdomain (Host header to 127.0.0.1), with the
        sandbox cookie `cookie` and the binding nonce this browser holds there, if any."""
        sent = {"Host": self.host(sandbox_id), **headers}
        crumbs = [f"agentserver_sandbox={cookie}"] if cookie else []
        if sandbox_id in self.nonces:
            crumbs.append(f"{BIND_COOKIE}={self.nonces[sandbox_id]}")
        if crumbs and "Cookie" not in headers:
            sent["Cookie"] = "; ".join(crumbs)
        return httpx.AsyncClient(base_url=self.server.url, headers=sent, timeout=30)

    async def member(self, username: str, role: str) -> httpx.AsyncClient:
        """A new user, signed in, whom the owner added to the workspace with `role`."""
        client = self.server.client()
        await register(client, username)
        await add_member(self.owner, self.workspace_id, username, role)
        return client

    async def sql(self, query: str, *params: Any) -> None:
        def run() -> None:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                conn.execute(query, params)  # type: ignore[arg-type]

        await trio.to_thread.run_sync(run)

    async def sandbox(
        self, status: str = "running", sandbox_type: str = "opencode", port: int | None = None
    ) -> str:
        """A sandbox row whose agent is the recording upstream (or listens on `port`);
        returned once the server has announced it (so a later subscriber sees only what
        happens after)."""
        sandbox_id = new_id()
        with self.server.deps.events.subscribe(self.workspace_id) as announced:
            await self.sql(
                "INSERT INTO sandboxes (id, workspace_id, name, type, status, agent_secret,"
                " endpoint_host, endpoint_port) VALUES (%s, %s, %s, %s, %s, %s, '127.0.0.1', %s)",
                sandbox_id,
                self.workspace_id,
                f"sb-{sandbox_id[:4]}",
                sandbox_type,
                status,
                AGENT_SECRET,
                self.upstream.port if port is None else port,
            )
            await until_announced(announced, sandbox_id)
        return sandbox_id

    async def ticket_url(self, client: httpx.AsyncClient, sandbox_id: str) -> str:
        """A ticket URL minted for `client`'s user and bound to this browser's nonce on the
        sandbox host (kept in `nonces`, so `sub` clients present it)."""
        async with self.sub(sandbox_id) as sub:
            url, self.nonces[sandbox_id] = await bound_ticket(client, sub, sandbox_id)
        return url

    async def open(self, sandbox_id: str, client: httpx.AsyncClient | None = None) -> str:
        """Go through /open and the ticket redemption; the sandbox cookie's value."""
        url = await self.ticket_url(client or self.owner, sandbox_id)
        async with self.sub(sandbox_id) as sub:
            response = await redeem(sub, url, self.nonces[sandbox_id])
        assert response.status_code == 302, response.text
        return response.cookies["agentserver_sandbox"]


async def until_announced(sub: Subscription, sandbox_id: str) -> None:
    """Read `sub` until the sandbox's row arrives (a change made in SQL reaches the server's
    streams through its listener, sandboxes/event_relay.py)."""
    with trio.fail_after(10):
        while True:
            event = await sub.inbox.receive()
            row = event.get("sandbox")
            if isinstance(row, Sandbox) and row.id == sandbox_id:
                return


@pytest.fixture
async def world(server: Server, nursery: trio.Nursery, db_url: str) -> AsyncIterator[World]:
    upstream: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    # The subdomain proxy's way to the lifecycle (wake, activity) is replaced by a recorder.
    service = RecordingService(server.running.proxy.sandboxes)
    server.running.proxy.sandboxes = service
    async with server.client() as owner:
        _, workspace = await owner_of_workspace(owner)
        yield World(server, upstream, owner, workspace["id"], db_url, service)
