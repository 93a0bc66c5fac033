"""Watching a workspace's event stream (SSE) for sandbox statuses, instead of sleeping or
polling: the one reader every test uses (`open_events` in a nursery, or `watch_statuses`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

# A sandbox start waits for opencode (a few seconds here, more on a busy machine).
START_DEADLINE = 150.0


class EventStream:
    """The workspace's SSE stream, read in a task; `until` waits for a sandbox status."""

    def __init__(self, client: httpx.AsyncClient, workspace_id: str) -> None:
        self.client = client
        self.url = f"/api/workspaces/{workspace_id}/events"
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.comments: list[str] = []
        self._changed = trio.Event()
        self._scope = trio.CancelScope()

    def close(self) -> None:
        """Stop reading (the stream's own connection closes)."""
        self._scope.cancel()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Its own connection, so closing the caller's client never cuts a read in half.
        own = httpx.AsyncClient(
            base_url=self.client.base_url, headers=self.client.headers, cookies=self.client.cookies
        )
        with self._scope:
            async with own, own.stream("GET", self.url, timeout=None) as response:
                await self._read(response, task_status)

    async def _read(self, response: httpx.Response, task_status: trio.TaskStatus[None]) -> None:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        task_status.started()
        kind, data = "message", ""
        async for line in response.aiter_lines():
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                self._changed.set()
                self._changed = trio.Event()
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                self.seen.append((kind, json.loads(data)))
                kind, data = "message", ""
                self._changed.set()
                self._changed = trio.Event()

    async def changed(self) -> None:
        """Wait for the next event."""
        await self._changed.wait()

    def statuses(self, sandbox_id: str) -> list[str]:
        return [d["status"] for k, d in self.seen if k == "sandbox" and d["id"] == sandbox_id]

    async def until(self, sandbox_id: str, *statuses: str, after: int = 0) -> dict[str, Any]:
        """The first `sandbox` event (from index `after`) with one of `statuses`."""
        return self.seen[await self.index_of(sandbox_id, *statuses, after=after)][1]

    async def index_of(self, sandbox_id: str, *statuses: str, after: int = 0) -> int:
        """Where in `seen` the event `until` returns is."""
        with trio.fail_after(START_DEADLINE):
            index = after
            while True:
                for at in range(index, len(self.seen)):
                    kind, data = self.seen[at]
                    if (
                        kind == "sandbox"
                        and data["id"] == sandbox_id
                        and data["status"] in statuses
                    ):
                        return at
                index = len(self.seen)
                await self._changed.wait()


class StatusCursor:
    """An EventStream read in order: `until` is done at once when the last status read for
    the sandbox is the one asked for (the snapshot counts), and otherwise reads on to the
    event that brings it."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.read = 0  # events of `stream.seen` read so far

    @property
    def seen(self) -> list[tuple[str, str]]:
        """(sandbox id, status) of every sandbox event read so far, in order."""
        return [
            (data["id"], data["status"])
            for kind, data in self.stream.seen[: self.read]
            if kind == "sandbox"
        ]

    async def until(self, sandbox_id: str, status: str) -> dict[str, Any]:
        mine = [
            data
            for kind, data in self.stream.seen[: self.read]
            if kind == "sandbox" and data["id"] == sandbox_id
        ]
        if mine and mine[-1]["status"] == status:
            return mine[-1]
        at = await self.stream.index_of(sandbox_id, status, after=self.read)
        self.read = at + 1
        return self.stream.seen[at][1]


async def open_events(
    nursery: trio.Nursery, client: httpx.AsyncClient, workspace_id: str
) -> EventStream:
    """Subscribe (the server registered us once headers arrive) and read in the background."""
    stream = EventStream(client, workspace_id)
    await nursery.start(stream.run)
    return stream


@asynccontextmanager
async def watch_statuses(
    client: httpx.AsyncClient, workspace_id: str
) -> AsyncIterator[StatusCursor]:
    """`open_events` for the length of a `with` block (subscribed when it is entered), read
    in order through a StatusCursor."""
    async with trio.open_nursery() as nursery:
        stream = await open_events(nursery, client, workspace_id)
        try:
            yield StatusCursor(stream)
        finally:
            stream.close()
