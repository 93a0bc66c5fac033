"""Resource limits of process sandboxes: what the agent starts with, and that they hold."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agentserver.sandboxes.account import Account
from agentserver.sandboxes.cgroups import Layout, Wanted, probe
from agentserver.sandboxes.ids import ID_BASE
from agentserver.sandboxes.limits import NICE, Limits, wanted_of
from agentserver.sandboxes.process import Child, ProcessBackend, open_backend
from tests.conftest import start_server
from tests.support.sandboxes import (
    agent_process,
    open_events,
    owner_with_workspace,
    sandbox_settings_for,
)

MiB = 1 << 20


def limits_of(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits as name → (soft, hard)."""
    found = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        parts = line[26:].split()
        found[line[:26].strip()] = (parts[0], parts[1])
    return found


def nice_of(pid: int) -> int:
    """The process's nice value (field 19 of /proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


async def test_the_agent_starts_with_the_configured_limits(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """opencode (and bubblewrap above it) runs with --agent-file-size-limit as its largest file,
    --agent-pids-limit as its process count (a root server, where each sandbox has a uid of its
    own), at a lower priority."""
    settings = sandbox_settings_for(
        db_url,
        tmp_path / "d",
        opencode_bin,
        agent_file_size_limit="64MiB",
        agent_pids_limit="200",
    )
    server = await start_server(nursery, settings)
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    sid = (await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "l"})).json()["id"]
    started = await events.until(sid, "running", "failed")
    assert started["status"] == "running", started["statusReason"]
    backend = server.deps.sandboxes.backend
    assert isinstance(backend, ProcessBackend)
    pid = backend.pid(sid)
    assert pid is not None
    for process in (pid, agent_process(pid)):
        limits = limits_of(process)
        assert limits["Max file size"] == (str(64 * MiB), str(64 * MiB)), process
        if os.geteuid() == 0:
            assert limits["Max processes"] == ("200", "200"), process
        assert nice_of(process) == NICE
    events.close()
    await client.aclose()
    server.shutdown.set()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder any user may work in (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="agentserver-limits-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def run_limited(folder: Path, uid: int, limits: Limits, script: str) -> tuple[int, str]:
    """Run `script` with sh as `uid` (a sandbox's own), with `limits`."""
    account = Account("limits-test", uid, uid)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(folder)}
    child = Child.spawn(["/bin/sh", "-c", script], env, str(folder), account, limits)
    output = b""
    async with child.stdout:
        while chunk := await child.stdout.receive_some(65536):
            output += chunk
    return await child.wait(), output.decode(errors="replace")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another uid")
async def test_the_limits_hold(open_folder: Path) -> None:
    """A file beyond the file-size limit is cut at the limit, and forks beyond the process
    limit fail."""
    limits = Limits(((resource.RLIMIT_FSIZE, MiB), (resource.RLIMIT_NPROC, 8)))
    # Ids no other test uses: processes that exited but were not reaped yet count for NPROC.
    first, second = ID_BASE + 99_998, ID_BASE + 99_999
    status, output = await run_limited(
        open_folder, first, limits, "head -c 2097152 /dev/zero > big; echo $?; stat -c %s big"
    )
    assert status == 0, output
    assert output.split()[-1] == str(MiB), output  # cut at the limit, with an error
    script = (
        "i=0; while [ $i -lt 20 ]; do sleep 30 </dev/null >/dev/null 2>&1 & i=$((i+1)); done;"
        " kill $(jobs -p) 2>/dev/null"
    )
    status, output = await run_limited(open_folder, second, limits, script)
    assert "fork" in output.lower(), output


def usable_cgroups(wanted: Wanted) -> Layout:
    """The layout `probe` finds for `wanted`; skips the test when a controller is unusable here."""
    layout = probe(wanted)
    if layout.missing:
        pytest.skip(f"no writable cgroup controller: {layout.missing}")
    return layout


LIMIT_FILES = ("memory.limit_in_bytes", "memory.max", "cpu.cfs_quota_us", "cpu.cfs_period_us")
LIMIT_FILES += ("cpu.max", "pids.max")


def members(folder: Path) -> set[int]:
    return {int(pid) for pid in (folder / "cgroup.procs").read_text().split()}


async def test_the_agent_runs_in_its_sandboxs_cgroups(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, opencode_bin: str
) -> None:
    """A process sandbox's agent runs in cgroups of its own holding --agent-memory-limit,
    --agent-nano-cpus and --agent-pids-limit, which are removed when the sandbox is deleted."""
    usable_cgroups(Wanted(1, 1, 1))
    settings = sandbox_settings_for(
        db_url,
        tmp_path / "d",
        opencode_bin,
        agent_memory_limit="1GiB",
        agent_nano_cpus="1500000000",
        agent_pids_limit="300",
    )
    server = await start_server(nursery, settings)
    backend = server.deps.sandboxes.backend
    assert isinstance(backend, ProcessBackend)
    assert "limits: memory 1 GiB, 1.5 CPUs, 300 processes (cgroup v1" in backend.describe() or (
        "limits: memory 1 GiB, 1.5 CPUs, 300 processes (cgroup v2" in backend.describe()
    )
    client, wid = await owner_with_workspace(server)
    events = await open_events(nursery, client, wid)
    sid = (await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "c"})).json()["id"]
    started = await events.until(sid, "running", "failed")
    assert started["status"] == "running", started["statusReason"]
    pid = backend.pid(sid)
    assert pid is not None
    dirs = {controller: folder for controller, _, folder in backend.cgroups.cgroup(sid).dirs}
    assert set(dirs) == {"memory", "cpu", "pids"}
    for controller, version, folder in backend.cgroups.cgroup(sid).dirs:
        assert folder.name == sid
        # bubblewrap (the child) and opencode below it are both inside.
        assert {pid, agent_process(pid)} <= members(folder), controller
        files = {
            name: (folder / name).read_text().split()
            for name in LIMIT_FILES
            if (folder / name).exists()
        }
        if controller == "memory":
            name = "memory.limit_in_bytes" if version == 1 else "memory.max"
            assert files[name] == [str(1 << 30)]
        elif controller == "cpu":
            if version == 1:
                assert files["cpu.cfs_quota_us"] == ["150000"]
                assert files["cpu.cfs_period_us"] == ["100000"]
            else:
                assert files["cpu.max"] == ["150000", "100000"]
        else:
            assert files["pids.max"] == ["300"]
    assert (await client.delete(f"/api/sandboxes/{sid}")).status_code == 204
    for folder in dirs.values():
        assert not folder.exists(), folder
    events.close()
    await client.aclose()
    server.shutdown.set()


async def test_memory_beyond_the_limit_is_killed(open_folder: Path) -> None:
    """A process that joined a sandbox cgroup (as the sandbox's uid, before exec) is killed by
    the kernel when it allocates more than the cgroup's memory limit, and one under it is not."""
    python = shutil.which("python3", path="/usr/bin:/bin")  # one the sandbox's uid may run
    if python is None:
        pytest.skip("no python3 in /usr/bin or /bin")
    layout = usable_cgroups(Wanted(memory=64 * MiB, pids=50))
    cgroup = layout.cgroup(f"test-oom-{os.getpid()}")
    cgroup.create()
    uid = ID_BASE + 99_997 if os.geteuid() == 0 else os.geteuid()
    account = Account("limits-test", uid, uid if os.geteuid() == 0 else os.getegid())
    limits = Limits(cgroups=cgroup.procs)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(open_folder)}
    script = "import sys; data = b'x' * (int(sys.argv[1]) << 20); print('allocated', flush=True)"
    try:
        results = []
        for size in ("16", "256"):
            child = Child.spawn(
                [python, "-c", script, size], env, str(open_folder), account, limits
            )
            output = b""
            async with child.stdout:
                while chunk := await child.stdout.receive_some(65536):
                    output += chunk
            results.append((await child.wait(), output.decode(errors="replace")))
        assert results[0] == (0, "allocated\n"), results
        assert results[1][0] == -signal.SIGKILL, results
        memory = next(folder for c, _, folder in cgroup.dirs if c == "memory")
        events = (memory / "memory.oom_control").read_text()
        assert "oom_kill 0" not in events.splitlines(), events
    finally:
        assert cgroup.remove() == []


async def test_empty_cgroups_left_by_an_earlier_run_are_removed_at_start(
    tmp_path: Path, db_url: str, opencode_bin: str
) -> None:
    """Opening the process backend removes the empty cgroups a killed server left for its
    sandboxes, and not those of sandboxes it does not have."""
    settings = sandbox_settings_for(db_url, tmp_path / "data", opencode_bin)
    layout = usable_cgroups(wanted_of(settings))
    ours, other = f"left-{os.getpid()}", f"other-{os.getpid()}"
    (settings.data_dir / "sandboxes" / ours).mkdir(parents=True)
    left, kept = layout.cgroup(ours), layout.cgroup(other)
    left.create()
    kept.create()
    try:

        async def on_exit(sandbox_id: str, reason: str) -> None:
            raise AssertionError("no sandbox of this backend should exit")

        async with open_backend(settings, on_exit):
            assert [folder for _, _, folder in left.dirs if folder.exists()] == []
            assert all(folder.exists() for _, _, folder in kept.dirs)
    finally:
        left.remove()
        assert kept.remove() == []
