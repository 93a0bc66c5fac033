"""Two replicas with the process backend running real opencode: a sandbox is a child of the
replica that started it; when that replica stops, the leader shows it paused and another
replica resumes it as a child of its own."""

from __future__ import annotations

from pathlib import Path

import trio

from agentserver.sandboxes.children import REASON
from tests.conftest import Server, start_server
from tests.support.sandboxes import (
    START_DEADLINE,
    alive,
    owner_with_workspace,
    sandbox_settings_for,
)


async def until(server: Server, sandbox_id: str, *statuses: str) -> str:
    with trio.fail_after(START_DEADLINE):
        while True:
            row = await server.deps.sandboxes.get(sandbox_id)
            if row is not None and row.status in statuses:
                return str(row.status)
            await trio.sleep(0.1)


async def test_a_stopped_replicas_process_sandbox_is_paused_then_resumed_elsewhere(
    db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """Replica B's opencode runs as B's child; B stops (its agent with it); the leader A marks
    the sandbox paused with the reason; resumed through A's API it runs as A's child."""
    async with trio.open_nursery() as nursery:
        first = await start_server(
            nursery, sandbox_settings_for(db_url, tmp_path / "a", opencode_bin)
        )
        second = await start_server(
            nursery, sandbox_settings_for(db_url, tmp_path / "b", opencode_bin)
        )
        assert first.deps.cluster.leader.leading
        api, wid = await owner_with_workspace(second)
        created = await api.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "child"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        assert await until(second, sid, "running", "failed") == "running"
        pid = second.deps.sandboxes.backend.pid(sid)
        assert pid is not None
        await api.aclose()

        second.shutdown.set()
        assert await until(first, sid, "paused", "failed") == "paused"
        assert not alive(pid)
        row = await first.deps.sandboxes.get(sid)
        assert row is not None
        assert row.status_reason == REASON

        async with first.client() as other:
            login = await other.post(
                "/api/auth/login", json={"username": "owner", "password": "correct-horse"}
            )
            assert login.status_code == 200, login.text
            assert (await other.post(f"/api/sandboxes/{sid}/resume")).status_code == 200
        assert await until(first, sid, "running", "failed") == "running"
        assert first.deps.sandboxes.backend.pid(sid) is not None
        first.shutdown.set()
