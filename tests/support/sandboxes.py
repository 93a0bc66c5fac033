"""Sandbox test fixtures: a server that runs real opencode, and a reader of its event stream."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agentserver.settings import Settings
from tests.conftest import Server, make_settings, register, start_server

# A sandbox start waits for opencode (a few seconds here, more on a busy machine).
START_DEADLINE = 150.0


def sandbox_settings_for(
    db_url: str, data_dir: Path, opencode_bin: str, **overrides: str
) -> Settings:
    """Settings for a server whose process backend runs `opencode_bin`."""
    values = {"opencode_bin": opencode_bin, "idle_timeout": "0", **overrides}
    return make_settings(db_url, reachable_data_dir(data_dir), **values)


def reachable_data_dir(data_dir: Path) -> Path:
    """`data_dir`, or as root a fresh one the sandbox user can reach (removed at exit).

    pytest's temporary folders live under a private /tmp/pytest-of-root, which the
    unprivileged sandbox user cannot enter (the server refuses to open it up).
    """
    if os.geteuid() != 0:
        return data_dir
    base = Path(tempfile.mkdtemp(prefix="agentserver-sbx-", dir="/tmp"))
    base.chmod(0o711)  # traversable, not listable: the homes inside are 0700
    atexit.register(shutil.rmtree, base, True)
    return base / data_dir.name


@pytest.fixture
def sandbox_settings(db_url: str, tmp_path: Path, opencode_bin: str) -> Settings:
    return sandbox_settings_for(db_url, tmp_path / "data", opencode_bin)


@pytest.fixture
async def sandbox_server(
    nursery: trio.Nursery, sandbox_settings: Settings
) -> AsyncIterator[Server]:
    """A real server with the process backend running real opencode, idle watcher off."""
    server = await start_server(nursery, sandbox_settings)
    yield server
    server.shutdown.set()


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
        with trio.fail_after(START_DEADLINE):
            index = after
            while True:
                for kind, data in self.seen[index:]:
                    if (
                        kind == "sandbox"
                        and data["id"] == sandbox_id
                        and data["status"] in statuses
                    ):
                        return data
                index = len(self.seen)
                await self._changed.wait()


async def open_events(
    nursery: trio.Nursery, client: httpx.AsyncClient, workspace_id: str
) -> EventStream:
    """Subscribe (the server registered us once headers arrive) and read in the background."""
    stream = EventStream(client, workspace_id)
    await nursery.start(stream.run)
    return stream


async def owner_with_workspace(
    server: Server, name: str = "owner"
) -> tuple[httpx.AsyncClient, str]:
    client = server.client()
    await register(client, name)
    response = await client.post("/api/workspaces", json={"name": "sandboxes"})
    assert response.status_code == 201, response.text
    return client, response.json()["id"]


def alive(pid: int) -> bool:
    """True when a process with this id exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first), read from /proc."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop(0)
        try:
            text = Path(f"/proc/{current}/task/{current}/children").read_text()
        except OSError:
            continue
        children = [int(c) for c in text.split()]
        found += children
        queue += children
    return found


def agent_process(pid: int) -> int:
    """The opencode process itself: `pid` or the deepest process below it (bubblewrap wraps it)."""
    below = descendants(pid)
    return below[-1] if below else pid


def disk_path_in(pid: int) -> Path:
    """The workspace disk as the agent process sees it, reached through its own mount namespace."""
    agent = agent_process(pid)
    environ = Path(f"/proc/{agent}/environ").read_bytes().split(b"\0")
    disk = next(e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"AGENTSERVER_DISK="))
    return Path(f"/proc/{agent}/root") / disk.lstrip("/")


def processes_of(sandbox_id: str) -> list[int]:
    """Every live process started for this sandbox (its environment names the sandbox)."""
    needle = f"AGENTSERVER_SANDBOX_ID={sandbox_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0") and alive(
                    int(entry.name)
                ):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
