"""A root server runs each sandbox as its own unprivileged uid, with a group per workspace disk
(process backend)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agentserver.sandboxes.account import Account
from agentserver.sandboxes.ids import in_range
from agentserver.sandboxes.process import Child, ProcessBackend
from agentserver.sandboxes.service import Sandboxes
from agentserver.settings import Settings
from tests.conftest import Server, make_settings, start_server
from tests.integration.test_cli import assert_one_clear_line, run_cli
from tests.support.sandboxes import (
    agent_process,
    open_events,
    owner_with_workspace,
    sandbox_settings_for,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs a root server (only root switches sandboxes to another user)"
)


def backend_of(server: Server) -> ProcessBackend:
    sandboxes: Sandboxes = server.deps.sandboxes
    assert isinstance(sandboxes.backend, ProcessBackend)
    return sandboxes.backend


def ids_in_status(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/<pid>/status, as numbers."""
    found: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(v) for v in value.split()]
    return found


@pytest.fixture
def root_only_file() -> Iterator[Path]:
    """A 0600 root file in a folder every user may enter, visible (read-only) in sandboxes.

    Under /var/lib: bubblewrap shows /var read-only but replaces /tmp, /var/tmp, /root and
    /home, and the checkout itself may live under any of them (a CI clone in /tmp did)."""
    folder = Path(tempfile.mkdtemp(prefix="agentserver-test-secret-", dir="/var/lib"))
    try:
        folder.chmod(0o755)
        secret = folder / "secret.txt"
        secret.write_text("root only\n")
        secret.chmod(0o600)
        yield secret
    finally:
        shutil.rmtree(folder)


def shadow() -> list[str]:
    """/etc/shadow when the machine has one (root-readable only, or with the shadow group)."""
    return ["/etc/shadow"] if Path("/etc/shadow").exists() else []


async def run_as(
    backend: ProcessBackend, account: Account, home: Path, disk: Path, *argv: str
) -> tuple[int, str]:
    """Run `argv` exactly as the backend starts agents (bubblewrap, user), with its output."""
    wrapped = backend.isolation.wrap(
        list(argv), home=home, disk=disk, data_dir=backend.settings.data_dir
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    child = Child.spawn(wrapped, env, str(home), account)
    output = b""
    async with child.stdout:
        while chunk := await child.stdout.receive_some(65536):
            output += chunk
    return await child.wait(), output.decode(errors="replace")


async def test_the_agent_runs_unprivileged_and_cannot_read_root_files(
    sandbox_server: Server, nursery: trio.Nursery, root_only_file: Path, tmp_path: Path
) -> None:
    """opencode runs as the sandbox's own uid and its workspace's group without extra groups,
    owns its home, shares the disk through the group, and a command started the same way
    cannot read a root-only file that root itself can read."""
    backend = backend_of(sandbox_server)
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    response = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "u"})
    sid = response.json()["id"]
    assert (await events.until(sid, "running", "failed"))["status"] == "running"
    account = backend.account_of(sid, wid)
    assert in_range(account.uid)
    assert in_range(account.gid)
    assert account.uid != backend.account.uid

    pid = backend.pid(sid)
    assert pid is not None
    for process in (pid, agent_process(pid)):  # bubblewrap and opencode below it
        ids = ids_in_status(process)
        assert ids["Uid"] == [account.uid] * 4, (process, ids)
        assert ids["Gid"] == [account.gid] * 4, (process, ids)
        assert ids["Groups"] == [], (process, ids)
    home, disk = backend.home(sid), backend.disk(wid)
    info = home.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (account.uid, account.gid, 0o700)
    info = disk.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, account.gid, 0o2770)
    output_log = backend.sandbox_dir(sid) / "output.log"
    assert output_log.stat().st_mode & 0o777 == 0o600  # the agent's output: the server's only

    # The control: the same command as the server's own user (in folders of its own: without
    # capabilities even root cannot enter the sandbox user's 0700 home).
    root, own = Account("root", 0, 0), tmp_path / "root-home"
    own.mkdir()
    status, output = await run_as(backend, root, own, own, "/bin/cat", str(root_only_file))
    assert (status, output) == (0, "root only\n")
    for secret in (str(root_only_file), *shadow()):
        status, output = await run_as(backend, account, home, disk, "/bin/cat", secret)
        assert status != 0, secret
        assert "Permission denied" in output, output

    disk_inside = "/data/disk0" if backend.isolation.enabled else str(disk)
    script = f'echo hi > "$HOME/mine" && echo hi > "{disk_inside}/shared" && id -u'
    status, output = await run_as(backend, account, home, disk, "/bin/sh", "-c", script)
    assert (status, output.strip()) == (0, str(account.uid))
    assert (home / "mine").stat().st_uid == account.uid
    shared = (disk / "shared").stat()
    assert (shared.st_uid, shared.st_gid) == (account.uid, account.gid)
    assert shared.st_mode & 0o077 == 0o060  # the workspace's group may change it; no one else

    events.close()
    assert (await client.delete(f"/api/workspaces/{wid}")).status_code == 204
    assert not disk.exists()
    assert not home.exists()
    await client.aclose()


async def failure_of_a_new_sandbox(nursery: trio.Nursery, settings: Settings) -> str:
    """Start a server, create a sandbox, and return why it failed (it must fail)."""
    server = await start_server(nursery, settings)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    response = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "f"})
    failed = await events.until(response.json()["id"], "running", "failed")
    events.close()
    await client.aclose()
    server.shutdown.set()
    assert failed["status"] == "failed"
    return str(failed["statusReason"])


async def test_a_data_dir_the_user_cannot_enter_fails_the_sandbox_clearly(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """Under a private folder (pytest's own), a sandbox fails naming --data-dir; nothing is
    opened up to make it work."""
    private = tmp_path.parent.parent  # /tmp/pytest-of-root, 0700
    mode = private.stat().st_mode & 0o777
    settings = make_settings(db_url, tmp_path / "data", opencode_bin=opencode_bin)
    reason = await failure_of_a_new_sandbox(nursery, settings)
    assert "--data-dir" in reason
    assert "cannot enter" in reason
    assert private.stat().st_mode & 0o777 == mode


def test_a_bad_sandbox_user_is_one_line_and_exit_2() -> None:
    """serve refuses a malformed --sandbox-user before starting, in one line naming it."""
    assert_one_clear_line(run_cli("serve", "--sandbox-user", "Not A User"), "--sandbox-user")
    line = assert_one_clear_line(
        run_cli("serve", AGENTSERVER_SANDBOX_USER="x;y"), "AGENTSERVER_SANDBOX_USER"
    )
    assert "is not a user name" in line


async def test_a_program_the_user_cannot_reach_fails_naming_opencode_bin(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """An opencode the sandbox user cannot enter the folder of fails the sandbox with a reason
    naming --opencode-bin (instead of an obscure exec error from inside bubblewrap)."""
    private = tmp_path / "private-bin"
    private.mkdir(mode=0o700)
    program = private / "opencode"
    program.write_text("#!/bin/sh\nexit 1\n")
    program.chmod(0o755)
    settings = sandbox_settings_for(db_url, tmp_path / "d", str(program))
    reason = await failure_of_a_new_sandbox(nursery, settings)
    assert "--opencode-bin" in reason
    assert "cannot enter" in reason


async def unwrapped(account: Account, home: Path, *argv: str) -> tuple[int, str]:
    """Run `argv` as `account` like an agent that escaped bubblewrap: no mounts hide anything."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    child = Child.spawn(list(argv), env, str(home), account)
    output = b""
    async with child.stdout:
        while chunk := await child.stdout.receive_some(65536):
            output += chunk
    return await child.wait(), output.decode(errors="replace")


async def test_sandboxes_cannot_read_each_others_homes_or_other_workspaces_disks(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """Each sandbox has its own uid and each workspace disk its own group: even outside its
    mounts a sandbox cannot read another sandbox's home or another workspace's disk, while two
    sandboxes of one workspace can both change a file on their shared disk."""
    backend = backend_of(sandbox_server)
    client, first_ws = await owner_with_workspace(sandbox_server)
    second_ws = (await client.post("/api/workspaces", json={"name": "other"})).json()["id"]
    events = [await open_events(nursery, client, w) for w in (first_ws, second_ws)]
    placed = [(first_ws, events[0], "a1"), (first_ws, events[0], "a2"), (second_ws, events[1], "b")]
    ids: dict[str, str] = {}
    for wid, stream, name in placed:
        response = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": name})
        ids[name] = response.json()["id"]
        assert (await stream.until(ids[name], "running", "failed"))["status"] == "running"
    a1, a2, b = (backend.account_of(ids[n], w) for w, _, n in placed)
    assert len({a1.uid, a2.uid, b.uid}) == 3
    assert a1.gid == a2.gid != b.gid
    home = {name: backend.home(sid) for name, sid in ids.items()}
    disk = backend.disk(first_ws)
    team = ("/data/disk0" if backend.isolation.enabled else str(disk)) + "/team"

    status, _ = await run_as(
        backend,
        a1,
        home["a1"],
        disk,
        "/bin/sh",
        "-c",
        'echo private > "$HOME/private" && echo one > ' + team,
    )
    assert status == 0
    for account, own in ((b, home["b"]), (a2, home["a2"])):
        status, output = await unwrapped(account, own, "/bin/cat", str(home["a1"] / "private"))
        assert status != 0, output
        assert "Permission denied" in output, output
    status, output = await unwrapped(b, home["b"], "/bin/ls", str(disk))
    assert status != 0, output
    assert "Permission denied" in output, output
    if backend.isolation.enabled:  # inside bubblewrap the other homes are not even there
        status, output = await run_as(
            backend, b, home["b"], backend.disk(second_ws), "/bin/ls", str(home["a1"])
        )
        assert status != 0, output
        assert "No such file or directory" in output, output
    status, output = await run_as(
        backend, a2, home["a2"], disk, "/bin/sh", "-c", f"echo two >> {team}"
    )
    assert status == 0, output
    assert (disk / "team").read_text() == "one\ntwo\n"
    for stream in events:
        stream.close()
    await client.aclose()
