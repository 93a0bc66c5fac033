"""Fixtures of the tunnel's end-to-end tests: a server with a workspace, a bulk upstream, and
a developer's own opencode."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.conftest import Server
from tests.support.accounts import owner_of_workspace
from tests.support.bulk_upstream import BulkUpstream, serve_bulk
from tests.support.tunnel_world import TunnelWorld, free_port


@pytest.fixture
async def world(server: Server, tmp_path: Path) -> AsyncIterator[TunnelWorld]:
    async with server.client() as owner:
        _, workspace = await owner_of_workspace(owner)
        yield TunnelWorld(server, owner, workspace["id"], tmp_path)


@pytest.fixture
async def bulk(nursery: trio.Nursery) -> BulkUpstream:
    return await nursery.start(serve_bulk, BulkUpstream())  # type: ignore[no-any-return]


async def read_until(stream: trio.abc.ReceiveStream, needle: str, seen: list[str]) -> None:
    """Read lines from a child's output until one contains `needle` (within two minutes)."""
    buffer = b""
    with trio.fail_after(120):
        while True:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise AssertionError(f"output ended before {needle!r}: {seen}")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                seen.append(line.decode(errors="replace"))
                if needle in seen[-1]:
                    return


@pytest.fixture
async def laptop_opencode(
    opencode_bin: str, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[str]:
    """`opencode serve` on loopback without a password, as on a developer's laptop."""
    port = free_port()
    home = tmp_path / "laptop-home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "TERM": "xterm",
    }
    process = await trio.lowlevel.open_process(
        [opencode_bin, "serve", "--hostname", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=home,
        start_new_session=True,
    )
    assert process.stdout is not None
    await read_until(process.stdout, "listening", [])

    async def drain() -> None:
        assert process.stdout is not None
        while await process.stdout.receive_some(65536):
            pass

    nursery.start_soon(drain)
    yield f"http://127.0.0.1:{port}"
    os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
