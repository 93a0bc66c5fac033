"""Sandbox start: opencode's own start vs create → running through the API of a real server.

Baseline: spawn `opencode serve` directly (fresh HOME each time) and poll its health with Basic
auth until it answers. Measured: POST /api/workspaces/{id}/sandboxes on a running agentserver
(process backend, bubblewrap when it works here) until the workspace event stream says
`running`. Runs alternate so machine load hits both alike; medians are compared.
Target: ratio ≤ 1.5.

    python bench/bench_sandbox_start.py [runs]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from agentserver import serve
from agentserver.settings import build_settings

REPO = Path(__file__).resolve().parents[1]


def opencode_binary() -> str:
    for candidate in (
        os.environ.get("OPENCODE_BIN"),
        str(REPO / ".cache/npm/node_modules/.bin/opencode"),
        shutil.which("opencode"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("opencode is not installed (set OPENCODE_BIN or run scripts/bootstrap)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def direct_start(binary: str, scratch: Path) -> float:
    """Seconds from spawning `opencode serve` to its first authenticated 200."""
    home = Path(tempfile.mkdtemp(dir=scratch))
    port = free_port()
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", ""), "OPENCODE_SERVER_PASSWORD": "pw"}
    started = trio.current_time()
    process = await trio.lowlevel.open_process(
        [binary, "serve", "--hostname", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            with trio.fail_after(120):
                while True:
                    try:
                        if (
                            await client.get(f"http://127.0.0.1:{port}/", auth=("opencode", "pw"))
                        ).status_code == 200:
                            return trio.current_time() - started
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.02)  # polling an external process's health
    finally:
        process.terminate()
        with trio.CancelScope(shield=True):
            await process.wait()


class Api:
    """A signed-in owner of one workspace on a running server, with its event stream."""

    def __init__(self, url: str) -> None:
        self.client = httpx.AsyncClient(base_url=url, headers={"Origin": url}, timeout=30)
        self.workspace = ""
        self.made = 0
        self.events: trio.MemoryReceiveChannel[dict[str, Any]] | None = None
        self.reading = trio.CancelScope()

    async def setup(self, nursery: trio.Nursery) -> None:
        registered = await self.client.post(
            "/api/auth/register", json={"username": "bench", "password": "correct-horse"}
        )
        assert registered.status_code == 201, registered.text
        self.workspace = (await self.client.post("/api/workspaces", json={"name": "bench"})).json()[
            "id"
        ]
        send, self.events = trio.open_memory_channel[dict[str, Any]](100)
        await nursery.start(self._read, send)

    async def _read(
        self,
        send: trio.MemorySendChannel[dict[str, Any]],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        url = f"/api/workspaces/{self.workspace}/events"
        with self.reading:
            await self._lines(url, send, task_status)

    async def _lines(
        self,
        url: str,
        send: trio.MemorySendChannel[dict[str, Any]],
        task_status: trio.TaskStatus[None],
    ) -> None:
        async with self.client.stream("GET", url, timeout=None) as response:
            task_status.started()
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "sandbox":
                    await send.send(json.loads(line[5:]))

    async def start(self) -> float:
        """Seconds from POST to the `running` event; the sandbox is deleted afterwards."""
        assert self.events is not None
        started = trio.current_time()
        self.made += 1  # sandbox names are unique in a workspace
        created = await self.client.post(
            f"/api/workspaces/{self.workspace}/sandboxes", json={"name": f"bench-{self.made}"}
        )
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        with trio.fail_after(150):
            async for event in self.events:
                if event["id"] == sid and event["status"] in ("running", "failed"):
                    assert event["status"] == "running", event
                    break
        elapsed = trio.current_time() - started
        assert (await self.client.delete(f"/api/sandboxes/{sid}")).status_code == 204
        return elapsed


async def main(runs: int) -> None:
    binary = opencode_binary()
    scratch = Path(tempfile.mkdtemp(prefix="bench-start-", dir="/tmp"))
    settings = build_settings(
        {
            "listen": "127.0.0.1:0",
            "data_dir": str(scratch / "data"),
            "opencode_bin": binary,
            "idle_timeout": "0",
        },
        {},
    )
    direct: list[float] = []
    through: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            shutdown = trio.Event()
            running: serve.Running = await nursery.start(
                partial(serve.run, settings, shutdown=shutdown)
            )
            api = Api(f"http://127.0.0.1:{running.port}")
            await api.setup(nursery)
            isolation = running.deps.sandboxes.backend.isolation
            await direct_start(binary, scratch)  # warm the page cache for both
            for _ in range(runs):
                direct.append(await direct_start(binary, scratch))
                through.append(await api.start())
            api.reading.cancel()
            await api.client.aclose()
            shutdown.set()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = statistics.median(through) / statistics.median(direct)
    wrapped = "bubblewrap" if isolation.enabled else "none"
    print(f"sandbox start, {runs} runs each (isolation: {wrapped})")
    print(f"{'':34} {'median':>8} {'min':>8} {'max':>8}")
    for label, values in (
        ("opencode serve, direct", direct),
        ("create → running via the API", through),
    ):
        print(
            f"{label:34} {statistics.median(values):7.2f}s {min(values):7.2f}s {max(values):7.2f}s"
        )
    print(f"ratio (API / direct, medians): {ratio:.2f}x  (target ≤ 1.5x)")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 5)
