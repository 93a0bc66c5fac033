"""Watching a workspace's event stream (SSE) for a sandbox status, instead of sleeping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio


class StatusWatch:
    """The sandbox events of one workspace, as they arrive."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines
        self.seen: list[tuple[str, str]] = []  # (sandbox id, status), in order

    async def until(self, sandbox_id: str, status: str) -> None:
        """Return once the stream says `sandbox_id` has `status` (the snapshot counts)."""
        with trio.fail_after(60):
            if self._latest(sandbox_id) == status:
                return
            event = ""
            async for line in self._lines:
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "sandbox":
                    sandbox: dict[str, Any] = json.loads(line.split(":", 1)[1])
                    self.seen.append((sandbox["id"], sandbox["status"]))
                    if sandbox["id"] == sandbox_id and sandbox["status"] == status:
                        return
        raise AssertionError("the event stream ended")

    def _latest(self, sandbox_id: str) -> str | None:
        mine = [s for i, s in self.seen if i == sandbox_id]
        return mine[-1] if mine else None


@asynccontextmanager
async def watch_statuses(
    client: httpx.AsyncClient, workspace_id: str
) -> AsyncIterator[StatusWatch]:
    """Subscribe to /api/workspaces/{id}/events with a signed-in client."""
    async with client.stream(
        "GET", f"/api/workspaces/{workspace_id}/events", timeout=httpx.Timeout(30, read=None)
    ) as response:
        assert response.status_code == 200, await response.aread()
        yield StatusWatch(response.aiter_lines())
