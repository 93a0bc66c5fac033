"""Sandbox test fixtures: a server that runs real opencode, and what its tests look at."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from agentserver.settings import Settings
from tests.conftest import Server, make_settings, start_server
from tests.support.accounts import owner_of_workspace
from tests.support.workspace_events import START_DEADLINE, EventStream, open_events

# Where sandbox tests have always found them; the one implementation is in workspace_events.
__all__ = ["START_DEADLINE", "EventStream", "open_events"]


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


async def owner_with_workspace(
    server: Server, name: str = "owner"
) -> tuple[httpx.AsyncClient, str]:
    client = server.client()
    _, workspace = await owner_of_workspace(client, name, "sandboxes")
    return client, workspace["id"]


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
