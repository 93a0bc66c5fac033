"""Several in-process replicas on one database: a shared FakeBackend, SQL and status helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
import trio

from agentserver.sandboxes import feature
from agentserver.sandboxes.fake import FakeBackend
from agentserver.settings import Settings
from tests.conftest import Server

WAIT = 30.0


@pytest.fixture
def shared_backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    """One FakeBackend every server of the test opens (as replicas share a Docker daemon)."""
    backend = FakeBackend()

    @asynccontextmanager
    async def opener(settings: Settings, on_exit: Any) -> AsyncIterator[FakeBackend]:
        del settings, on_exit
        await trio.lowlevel.checkpoint()
        yield backend

    monkeypatch.setattr(feature, "backend_opener", opener)
    return backend


def sql(db_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


async def workspace(db_url: str) -> str:
    rows = await trio.to_thread.run_sync(
        sql, db_url, "INSERT INTO workspaces (name) VALUES ('w') RETURNING id"
    )
    return str(rows[0][0])


async def status_of(server: Server, sandbox_id: str) -> str | None:
    row = await server.deps.sandboxes.get(sandbox_id)
    return None if row is None else str(row.status)


async def until_status(server: Server, sandbox_id: str, *statuses: str) -> None:
    with trio.fail_after(WAIT):
        while await status_of(server, sandbox_id) not in statuses:
            await trio.sleep(0.05)
