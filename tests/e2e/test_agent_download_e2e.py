"""A laptop with only Python: download the agent from the server, connect a real opencode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from tests.e2e.conftest import read_until
from tests.support.tunnel_world import TunnelWorld
from tests.support.workspace_events import watch_statuses


async def test_the_downloaded_agent_connects_opencode(
    world: TunnelWorld, laptop_opencode: str, tmp_path: Path
) -> None:
    """The file from /download runs under a bare Python (no project, no site-packages),
    registers with a code, and the sandbox answers with opencode's page through the proxy."""
    body = (await world.owner.get("/download/agentserver-agent.pyz")).content
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    (laptop / "agentserver-agent.pyz").write_bytes(body)
    python = getattr(sys, "_base_executable", sys.executable)
    command = [python, "-I", "-S", "agentserver-agent.pyz", "agent", "connect"]
    command += ["--server", world.server.url, "--code", await world.code(), "--name", "pyz"]
    command += ["--config", str(laptop / "agent.json"), "--opencode-url", laptop_opencode]
    agent = await trio.lowlevel.open_process(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=laptop,
        env={"PATH": "/usr/bin:/bin", "HOME": str(laptop)},
    )
    seen: list[str] = []
    try:
        assert agent.stdout is not None
        await read_until(agent.stdout, "connected", seen)
        listed = (await world.owner.get(f"/api/workspaces/{world.workspace_id}/sandboxes")).json()
        sid = next(s["id"] for s in listed if s["name"] == "pyz")
        async with watch_statuses(world.owner, world.workspace_id) as watch:
            await watch.until(sid, "running")
        async with await world.browser(sid) as browser:
            page = await browser.get("/")
        assert page.status_code == 200, seen
        assert "<html" in page.text.lower()
    finally:
        agent.kill()
        await agent.wait()
