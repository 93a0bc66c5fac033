"""A uid per sandbox and a gid per workspace disk, for process sandboxes of a root server.

With one shared sandbox user, a sandbox that got out of its bubblewrap mounts could read every
other home and disk. So a root server gives each sandbox its own uid and each workspace disk
its own group, from a range no system account uses (no /etc/passwd entries are needed:
processes start with setresuid/setresgid, and HOME is set for them). The allocation is stored
where it matters, in the ownership of the files themselves: a home belongs to its sandbox's
uid, a disk to its workspace's gid, so a restart reads it back from the data directory and no
other record can disagree with it.
"""

from __future__ import annotations

import os
import stat
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

# Above systemd's container range (524288-1879048191) and below 2^31: unused by distributions.
ID_BASE = 1_900_000_000
ID_COUNT = 1 << 24


def in_range(number: int) -> bool:
    return ID_BASE < number < ID_BASE + ID_COUNT


@dataclass
class Ids:
    """Who is who: sandbox id → uid, workspace id → gid (each unique within the range).

    Safe to use from worker threads: two sandboxes started at once never get the same id.
    """

    uids: dict[str, int] = field(default_factory=dict)
    gids: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def scan(cls, data_dir: Path) -> Ids:
        """Read the allocation back from the owners of `sandboxes/*/home` and
        `workspaces/*/disk` (anything outside the range is not ours and gets a fresh id)."""
        ids = cls()
        for kind, pattern, table in (
            ("uid", "sandboxes/*/home", ids.uids),
            ("gid", "workspaces/*/disk", ids.gids),
        ):
            for path in data_dir.glob(pattern):
                with suppress(OSError):
                    info = path.lstat()
                    number = info.st_uid if kind == "uid" else info.st_gid
                    if in_range(number) and number not in table.values():
                        table[path.parent.name] = number
        return ids

    def uid(self, sandbox_id: str) -> int:
        """The sandbox's uid, allocated on first use."""
        with self._lock:
            return _allocate(self.uids, sandbox_id)

    def gid(self, workspace_id: str) -> int:
        """The workspace disk's gid, allocated on first use."""
        with self._lock:
            return _allocate(self.gids, workspace_id)


def _allocate(table: dict[str, int], key: str) -> int:
    """`table[key]`, or the next id above every one in use (ids of deleted sandboxes are not
    handed out again while a higher one exists), wrapping to the lowest free one at the end."""
    if key in table:
        return table[key]
    taken = set(table.values())
    candidate = max(taken, default=ID_BASE) + 1
    if not in_range(candidate):
        candidate = next(n for n in range(ID_BASE + 1, ID_BASE + ID_COUNT) if n not in taken)
    table[key] = candidate
    return candidate


def share_disk(disk: Path, gid: int) -> None:
    """Make `disk` the workspace's: owned by the server, group `gid`, mode 2770 (setgid, so
    everything created inside belongs to the group too; sandboxes run with umask 007).

    Contents from before (another group, or the one sandbox user of earlier versions) are
    handed to the group with the owner's permissions mirrored to it. Each entry is opened
    without following links and changed through its descriptor, so a sandbox swapping a file
    for a link meanwhile cannot point the change at a file of the server's.
    """
    if disk.lstat().st_gid != gid:
        for _folder, dirs, files, dir_fd in os.fwalk(disk, follow_symlinks=False):
            for name in (*dirs, *files):
                _hand_over(name, dir_fd, gid)
        os.chown(disk, os.geteuid(), gid, follow_symlinks=False)
    os.chmod(disk, 0o2770, follow_symlinks=False)  # noqa: S103 (the group is the workspace)


def _hand_over(name: str, dir_fd: int, gid: int) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:  # a link (ELOOP), a socket, or gone: nothing to hand over
        return
    try:
        info = os.fstat(fd)
        user_bits = (info.st_mode >> 6) & 7
        setgid = 0o2000 if stat.S_ISDIR(info.st_mode) else 0
        os.fchown(fd, -1, gid)
        # No set-user-id bit survives the hand-over (a sandbox's own, now the group's).
        os.fchmod(fd, (info.st_mode & 0o1707) | (user_bits << 3) | setgid)
    finally:
        os.close(fd)
