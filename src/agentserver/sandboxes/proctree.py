"""A sandbox's process tree on Linux: find every descendant and wait until all have exited.

bubblewrap puts the agent in a new session and pid namespace, so signalling the process group
reaches only bwrap; the kernel then kills the rest as the namespace is torn down, a moment later.
Waiting on pidfds makes `pause`/`destroy` return only when nothing of the sandbox is left.
A pid file per sandbox lets the next start find and stop an agent a killed server left behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from contextlib import suppress
from pathlib import Path

import trio

log = logging.getLogger(__name__)


def _parents() -> dict[int, int]:
    """pid → parent pid for every process visible in /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # The command name is in parentheses and may hold spaces: split after the last ")".
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, …), not `pid` itself."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    stack = list(children.get(pid, ()))
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, ()))
    return found


def open_pidfds(pids: list[int]) -> list[int]:
    """A pidfd per process still alive (a pidfd becomes readable when its process exits)."""
    fds: list[int] = []
    if not hasattr(os, "pidfd_open"):
        return fds
    for pid in pids:
        with suppress(OSError):
            fds.append(os.pidfd_open(pid))
    return fds


async def wait_gone(pidfds: list[int]) -> None:
    """Wait until every process exited (bound it with a cancel scope); closes the pidfds."""
    try:
        await trio.lowlevel.checkpoint()
        for fd in pidfds:
            await trio.lowlevel.wait_readable(fd)
    finally:
        for fd in pidfds:
            os.close(fd)


# -- agents left from a previous run --------------------------------------------------------
# A sandbox's pid file records its process's id and start time (in clock ticks since boot,
# field 22 of /proc/PID/stat) and the boot id: a pid reused by another program after the
# server died (or after a reboot) never matches all three, so only our own agent is killed.
PID_FILE = "agent.pid"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def record(folder: Path, pid: int) -> None:
    """Write `folder`/agent.pid for a process we just started (server-owned, 0600)."""
    started = start_time(pid)
    if started is None:  # it is gone already: nothing to sweep later
        return
    text = json.dumps({"pid": pid, "start": started, "boot": _boot_id()})
    path = folder / PID_FILE
    partial = path.with_name(PID_FILE + ".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with open(fd, "w") as file:
        file.write(text)
    os.replace(partial, path)


def forget(folder: Path) -> None:
    """Remove `folder`/agent.pid (the process it names has been stopped and waited for)."""
    with suppress(FileNotFoundError):
        (folder / PID_FILE).unlink()


def _recorded(folder: Path) -> tuple[int, int | None] | None:
    """The pid in `folder`/agent.pid and whether it is still that process: (pid, its start
    time if it still runs as the very process we started, else None); None without a record
    of this boot."""
    try:
        data = json.loads((folder / PID_FILE).read_text())
        pid, started, boot = int(data["pid"]), int(data["start"]), str(data["boot"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 1 or boot != _boot_id():
        return None
    now = start_time(pid)
    return pid, (now if now == started else None)


def group_members(pgid: int) -> list[int]:
    """Every process in process group `pgid` (field 5 of /proc/PID/stat)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                found.append(int(entry.name))
    return found


def sweep(folder: Path) -> list[int]:
    """Kill what is left of the agent recorded in `folder` by an earlier run; pidfds to wait on.

    The recorded process is killed with its group and descendants only if it is still the
    process we started (same start time, same boot). If it is gone, survivors of its group
    are killed too: a group outlives its leader only through members it started, and the
    kernel does not hand the leader's id to a new process while the group exists, so such
    a group is ours. The record is removed either way.
    """
    found = _recorded(folder)
    fds: list[int] = []
    if found is not None:
        pid, still_ours = found
        if still_ours is not None:
            fds = kill_tree(pid)
        elif start_time(pid) is None:
            fds = open_pidfds(group_members(pid))
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    forget(folder)
    return fds


def kill_tree(pid: int) -> list[int]:
    """SIGKILL `pid`, its process group and every descendant; return pidfds to wait on."""
    tree = [pid, *descendants(pid), *group_members(pid)]
    fds = open_pidfds(sorted(set(tree)))
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # it leads its own session and group
    for member in tree:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)
    return fds


LABEL = b"AGENTSERVER_SANDBOX_ID="  # in the environment of every process a sandbox starts


def labelled(sandbox_ids: set[str]) -> dict[str, list[int]]:
    """Processes whose environment names one of `sandbox_ids` (readable: root's, or our own)."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            for item in (entry / "environ").read_bytes().split(b"\0"):
                if item.startswith(LABEL):
                    sandbox_id = item[len(LABEL) :].decode(errors="replace")
                    if sandbox_id in sandbox_ids:
                        found.setdefault(sandbox_id, []).append(int(entry.name))
                    break
    return found


def _sweep_all(base: Path) -> list[int]:
    """Kill every agent an earlier run of the server left behind; pidfds to wait on.

    First the recorded ones (pid files); then any process still labelled with one of our
    sandboxes' ids: agents started before pid files existed, or processes an agent without
    bubblewrap started in a session of their own. At this point this server runs no agent
    yet, so every such process is a leftover.
    """
    fds: list[int] = []
    folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    for folder in folders:
        found = sweep(folder)
        if found:
            log.warning("sandbox %s: stopped its agent left from an earlier run", folder.name)
        fds += found
    for sandbox_id, pids in labelled({f.name for f in folders}).items():
        log.warning(
            "sandbox %s: stopped %d process(es) left from an earlier run", sandbox_id, len(pids)
        )
        for pid in pids:
            fds += kill_tree(pid)
    return fds


async def stop_leftovers(base: Path, grace: float) -> None:
    """Stop the agents recorded in `base`/*/agent.pid that a server which died without stopping
    them left running (before reconciliation, which would otherwise start a second agent on
    the same home); wait up to `grace` seconds for them to be gone."""
    fds = await trio.to_thread.run_sync(_sweep_all, base)
    with trio.move_on_after(grace) as waited:
        await wait_gone(fds)
    if waited.cancelled_caught:
        log.warning("processes left from an earlier run did not exit after SIGKILL")
