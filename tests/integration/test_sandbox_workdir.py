"""Process sandboxes start on the workspace disk: opencode's folder is the disk, with bubblewrap
(/data/disk0) and without it (the disk's real folder), and the API says where the disk is."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio

from agentserver.sandboxes import process as process_backend
from agentserver.sandboxes.isolation import Isolation
from tests.conftest import Server, start_server
from tests.support.sandbox_login import sandbox_client
from tests.support.sandboxes import (
    EventStream,
    agent_process,
    disk_path_in,
    open_events,
    owner_with_workspace,
    sandbox_settings_for,
)


@pytest.fixture
def no_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The isolation probe finds bubblewrap unusable, as on a host without user namespaces."""

    async def unusable(*args: object) -> Isolation:
        await trio.lowlevel.checkpoint()
        return Isolation(problem="bubblewrap does not work here (test)")

    monkeypatch.setattr(process_backend, "probe_isolation", unusable)


async def running(client: httpx.AsyncClient, events: EventStream, wid: str, name: str) -> str:
    created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": name})
    assert created.status_code == 201, created.text
    sid = str(created.json()["id"])
    shown = await events.until(sid, "running", "failed")
    assert shown["status"] == "running", shown
    return sid


def agent_pid(server: Server, sandbox_id: str) -> int:
    pid = server.deps.sandboxes.backend.pid(sandbox_id)  # type: ignore[attr-defined]
    assert pid is not None
    return agent_process(int(pid))


def working_dir(pid: int, real: Path) -> str:
    """The process's working directory as it names it, checked to be the disk's real folder."""
    cwd = Path(f"/proc/{pid}/cwd")
    assert cwd.samefile(real)
    return os.readlink(cwd)


async def check_agents_work_on_the_disk(
    server: Server, nursery: trio.Nursery, isolated: bool
) -> None:
    """Two sandboxes of one workspace: each opencode's directory is the disk (/data/disk0, or
    its real folder unisolated; its /path and its process's cwd), the API names it, and a file
    one sandbox writes there the other's opencode reads (a path relative to its project)."""
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    first = await running(client, events, wid, "a")
    second = await running(client, events, wid, "b")
    real = server.deps.settings.data_dir / "workspaces" / wid / "disk"
    disk = "/data/disk0" if isolated else str(real)
    for sid in (first, second):
        assert (await client.get(f"/api/sandboxes/{sid}")).json()["diskPath"] == disk
        assert working_dir(agent_pid(server, sid), real) == disk
    (disk_path_in(agent_pid(server, first)) / "note.txt").write_text("from a\n")
    async with await sandbox_client(server.url, client, second, timeout=60) as sub:
        path = await sub.get("/path")
        assert path.status_code == 200, path.text
        assert path.json()["directory"] == disk
        content = await sub.get("/file/content", params={"path": "note.txt"})
        assert content.status_code == 200, content.text
        assert content.json()["content"].strip() == "from a"
    events.close()
    await client.aclose()


async def test_with_bubblewrap_opencode_works_in_data_disk0(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    server = await start_server(nursery, sandbox_settings_for(db_url, tmp_path / "d", opencode_bin))
    if not server.deps.sandboxes.backend.isolation.enabled:  # type: ignore[attr-defined]
        pytest.skip("bubblewrap does not work on this machine")
    await check_agents_work_on_the_disk(server, nursery, isolated=True)
    server.shutdown.set()


@pytest.mark.usefixtures("no_bubblewrap")
async def test_without_bubblewrap_opencode_works_in_the_disks_real_folder(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """No mount namespace, so no /data/disk0: the agent starts in (and the API names) the
    disk's own folder, the path opencode would report even through a symlink (getcwd)."""
    settings = sandbox_settings_for(
        db_url, tmp_path / "d", opencode_bin, allow_unisolated_sandboxes="true"
    )
    server = await start_server(nursery, settings)
    await check_agents_work_on_the_disk(server, nursery, isolated=False)
    server.shutdown.set()
