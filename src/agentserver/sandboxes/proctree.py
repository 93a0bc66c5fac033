"""A sandbox's process tree on Linux: find every descendant and wait until all have exited.

bubblewrap puts the agent in a new session and pid namespace, so signalling the process group
reaches only bwrap; the kernel then kills the rest as the namespace is torn down, a moment later.
Waiting on pidfds makes `pause`/`destroy` return only when nothing of the sandbox is left.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

import trio


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
