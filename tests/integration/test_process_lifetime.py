"""Process sandboxes' lifetime: a killed server takes its agents along, leftovers are swept,
and an agent's exit is recorded even across a database outage."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
import trio

from agentserver.errors import DatabaseUnavailable
from agentserver.sandboxes import process as process_backend
from agentserver.sandboxes.cgroups import Wanted, probe
from agentserver.sandboxes.proctree import group_members, record
from agentserver.settings import OPTIONS
from tests.conftest import start_server
from tests.support.accounts import owner_of_workspace
from tests.support.sandboxes import (
    alive,
    open_events,
    owner_with_workspace,
    processes_of,
    reachable_data_dir,
    sandbox_settings_for,
)

BIN = Path(sys.executable).parent / "agentserver"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} is not installed (uv sync)")
LISTENING = re.compile(rb"listening on http://[^:/]+:(\d+)")


@pytest.fixture
def broken_bwrap(tmp_path: Path) -> Path:
    """A folder holding a `bwrap` that always fails, to put first on PATH (no isolation)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    fake = folder / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: no user namespaces here' >&2\nexit 1\n")
    fake.chmod(0o755)
    folder.chmod(0o755)
    tmp_path.chmod(0o755)
    return folder


def server_env(opencode_bin: str, db_url: str, **extra: str) -> dict[str, str]:
    """The caller's environment without agentserver variables, plus the test's."""
    names = {o.env for o in OPTIONS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(OPENCODE_BIN=opencode_bin, DATABASE_URL=db_url, IDLE_TIMEOUT="0", **extra)
    return env


async def serve(data_dir: Path, env: dict[str, str]) -> tuple[trio.Process, int]:
    """Start `agentserver serve` in a subprocess; return it and its port once it listens."""
    proc = await trio.lowlevel.open_process(
        [str(BIN), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    seen = b""
    with trio.fail_after(120):
        while not (match := LISTENING.search(seen)):
            chunk = await proc.stdout.receive_some()
            assert chunk, f"serve exited before listening (status {proc.poll()}): {seen!r}"
            seen += chunk
    return proc, int(match.group(1))


async def running_sandbox(nursery: trio.Nursery, port: int) -> str:
    """Register, create a workspace and a sandbox, and return its id once it runs."""
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, headers={"Origin": url}, timeout=30) as client:
        wid = (await owner_of_workspace(client))[1]["id"]
        events = await open_events(nursery, client, wid)
        created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "box"})
        assert created.status_code == 201, created.text
        sid = str(created.json()["id"])
        started = await events.until(sid, "running", "failed")
        events.close()
        assert started["status"] == "running", started["statusReason"]
        return sid


async def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait up to `seconds` for every pid to exit; return the ones still alive (not zombies)."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue
    try:
        with trio.move_on_after(seconds):
            for fd in fds:
                await trio.lowlevel.wait_readable(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize("isolated", [True, False], ids=["bubblewrap", "unisolated"])
async def test_a_killed_server_leaves_no_agent_running(
    isolated: bool,
    nursery: trio.Nursery,
    tmp_path: Path,
    db_url: str,
    opencode_bin: str,
    broken_bwrap: Path,
) -> None:
    """SIGKILL on the server ends its sandbox's opencode too, with or without bubblewrap."""
    extra = (
        {}
        if isolated
        else {
            "PATH": f"{broken_bwrap}:{os.environ['PATH']}",
            "AGENTSERVER_ALLOW_UNISOLATED_SANDBOXES": "true",
        }
    )
    data_dir = reachable_data_dir(tmp_path / "data")
    proc, port = await serve(data_dir, server_env(opencode_bin, db_url, **extra))
    try:
        sid = await running_sandbox(nursery, port)
        agents = processes_of(sid)
        assert agents, "the sandbox's processes should be running"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        left = await wait_gone(agents, 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for pid in left:  # not to leave them behind this test either
        os.kill(pid, signal.SIGKILL)
    # What the next start's sweep does: the dead server's sandbox cgroups are empty, so removable.
    layout = probe(Wanted(memory=1, nano_cpus=1, pids=1))
    assert len(layout.sweep([sid])) == len(layout.parents)
    assert left == [], f"processes outlived the server: {left}"


async def test_agents_left_by_an_earlier_run_are_stopped_when_the_backend_opens(
    tmp_path: Path, db_url: str, opencode_bin: str
) -> None:
    """The process backend kills a recorded agent still running from before, before anything
    else could start a second agent on the same home."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", opencode_bin)
    folder = settings.data_dir / "sandboxes" / "leftover"
    folder.mkdir(parents=True)
    leftover = await trio.lowlevel.open_process(
        ["sh", "-c", "sleep 60 & wait"], start_new_session=True
    )
    try:
        record(folder, leftover.pid)

        async def on_exit(sandbox_id: str, reason: str) -> None:
            raise AssertionError("no sandbox of this backend should exit")

        async with process_backend.open_backend(settings, on_exit):
            assert not alive(leftover.pid)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(leftover.pid, signal.SIGKILL)
        await leftover.wait()
    assert [pid for pid in group_members(leftover.pid) if alive(pid)] == []


async def test_an_agent_exit_during_a_database_outage_is_recorded_once_it_is_back(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    opencode_bin: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent that dies while the database is down does not take the server down; its
    sandbox shows `failed` once the database answers again."""
    server = await start_server(nursery, sandbox_settings_for(db_url, tmp_path / "d", opencode_bin))
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "box"})
    sid = created.json()["id"]
    assert (await events.until(sid, "running", "failed"))["status"] == "running"

    db = server.deps.db
    real_transaction = db.transaction
    refused = trio.Event()

    async def down(fn: object) -> object:
        refused.set()
        await trio.lowlevel.checkpoint()
        raise DatabaseUnavailable("the database is unavailable (test outage)")

    monkeypatch.setattr(db, "transaction", down)
    for pid in processes_of(sid):
        os.kill(pid, signal.SIGKILL)
    with trio.fail_after(30):
        await refused.wait()
    monkeypatch.setattr(db, "transaction", real_transaction)
    # A stream whose event the outage lost was ended (browsers reconnect to a fresh snapshot,
    # sandboxes/event_relay.py): read on a new one, as a browser would.
    events.close()
    events = await open_events(nursery, client, wid)
    failed = await events.until(sid, "failed")
    assert failed["status"] == "failed"
    assert (await client.get("/healthz")).status_code == 200
    events.close()
    await client.aclose()
    server.shutdown.set()


async def test_unrecorded_processes_of_our_sandboxes_are_stopped_and_others_spared(
    tmp_path: Path, db_url: str, opencode_bin: str
) -> None:
    """Without a pid file (an agent from before them, or a process that left the agent's
    group), a process labelled with one of our sandboxes' ids is stopped at backend start;
    one labelled with a sandbox of another data directory is not."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", opencode_bin)
    (settings.data_dir / "sandboxes" / "ours").mkdir(parents=True)
    env = {"PATH": os.environ["PATH"]}
    ours = await trio.lowlevel.open_process(
        ["sleep", "60"], env={**env, "AGENTSERVER_SANDBOX_ID": "ours"}, start_new_session=True
    )
    theirs = await trio.lowlevel.open_process(
        ["sleep", "60"], env={**env, "AGENTSERVER_SANDBOX_ID": "theirs"}, start_new_session=True
    )
    try:

        async def on_exit(sandbox_id: str, reason: str) -> None:
            raise AssertionError("no sandbox of this backend should exit")

        async with process_backend.open_backend(settings, on_exit):
            assert not alive(ours.pid)
            assert alive(theirs.pid)
    finally:
        for proc in (ours, theirs):
            with suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
