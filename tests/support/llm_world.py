"""The LLM proxy's test world: a server in front of the Anthropic stand-in, with a sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agentserver.auth.tokens import hash_token, new_id, new_token
from tests.conftest import Server, make_settings, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.anthropic import AnthropicStandIn, open_anthropic

REAL_KEY = "sk-ant-real-key-never-in-a-sandbox"
MESSAGES = "/proxy/anthropic/v1/messages"
BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}


@dataclass
class Env:
    """A server in front of a stand-in, an admin owner with a workspace and a running sandbox."""

    server: Server
    standin: AnthropicStandIn
    owner: httpx.AsyncClient
    workspace_id: str
    user_id: str
    sandbox_id: str
    token: str

    def sandbox_client(self, token: str | None = None, **headers: str) -> httpx.AsyncClient:
        """A client that talks like opencode inside the sandbox (no cookies, its proxy token)."""
        sent = {"x-api-key": token if token is not None else self.token, **headers}
        return httpx.AsyncClient(base_url=self.server.url, headers=sent, timeout=30)

    async def usage(self, query: str = "") -> dict[str, Any]:
        response = await self.owner.get(f"/api/workspaces/{self.workspace_id}/usage{query}")
        assert response.status_code == 200, response.text
        return dict(response.json())


async def add_sandbox(
    server: Server, workspace_id: str, user_id: str, status: str = "running"
) -> tuple[str, str]:
    """A sandbox row with a proxy token we know (only its hash is stored)."""
    sandbox_id, token = new_id(), new_token()

    def insert(tx: Any) -> None:
        tx.conn.execute(
            "INSERT INTO sandboxes (id, workspace_id, name, type, status, created_by, agent_secret,"
            " proxy_token_hash) VALUES (%s, %s, %s, 'opencode', %s, %s, 'secret', %s)",
            (sandbox_id, workspace_id, f"box-{sandbox_id[:4]}", status, user_id, hash_token(token)),
        )

    await server.deps.db.transaction(insert)
    return sandbox_id, token


async def sql(server: Server, statement: str, *params: Any) -> None:
    await server.deps.db.transaction(lambda tx: tx.conn.execute(statement, params))


@asynccontextmanager
async def open_env(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, options: dict[str, str]
) -> AsyncIterator[Env]:
    """A server (with `options`) in front of a new stand-in, an owner, a workspace, a sandbox."""
    standin = await open_anthropic(nursery)
    values = {
        "anthropic_base_url": standin.url + "/gateway",
        "anthropic_api_key": REAL_KEY,
        **options,
    }
    server = await start_server(nursery, make_settings(db_url, tmp_path / "data", **values))
    owner = server.client()
    user, workspace = await owner_of_workspace(owner, workspace="llm")
    workspace_id = workspace["id"]
    sandbox_id, token = await add_sandbox(server, workspace_id, user["id"])
    try:
        yield Env(server, standin, owner, workspace_id, user["id"], sandbox_id, token)
    finally:
        await owner.aclose()
        server.shutdown.set()


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    """The error message, after checking the status and Anthropic's error shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error", body
    assert body["error"]["type"] == kind, body
    return str(body["error"]["message"])


class SettledCalls:
    """Counts the usage rows the proxy completes (hands to its usage recorder), by wrapping
    the recorder: a test waits for a handler's cleanup without polling."""

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._changed = trio.Event()
        recorder = server.running.llm.recorder
        record = recorder.record

        async def noting(row: dict[str, Any], ticket: Any) -> None:
            await record(row, ticket)
            self.count += 1
            self._changed.set()
            self._changed = trio.Event()

        monkeypatch.setattr(recorder, "record", noting)

    async def wait_for(self, count: int) -> None:
        """Return once `count` calls in all have been settled."""
        await trio.lowlevel.checkpoint()
        while self.count < count:
            await self._changed.wait()
