"""Cgroups of process sandboxes: where they go, the limits they hold, creating and removing them.

Each sandbox gets a cgroup per limited controller (memory, cpu, pids) inside the server's OWN
cgroup of that controller, at `<own>/agentserver/<sandbox id>`: limits nest inside whatever the
server is given, no process is moved out of the server's cgroup, and only cgroups we created
are touched. A controller mounted in a cgroup v1 hierarchy of its own is used there (the server's
path from the `N:memory:/path` line of /proc/self/cgroup); otherwise it is used in the cgroup v2
hierarchy (`0::/path`) when the server's cgroup can enable it for a child (a delegated subtree).
The agent joins its cgroups in the child before exec (child.py), so nothing it starts escapes.

The parsing and the limit files are pure; `probe`, `Cgroup.create` and `Cgroup.remove` do the
file operations (call them from a thread or a child between fork and exec).
"""

from __future__ import annotations

import errno
import os
import re
import signal
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("memory", "cpu", "pids")
GROUP = "agentserver"  # our folder inside the server's own cgroup
CPU_PERIOD = 100_000  # microseconds; the quota is nano_cpus / 1e9 of it
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Wanted:
    """The limits a sandbox should have; 0 means none."""

    memory: int = 0  # bytes
    nano_cpus: int = 0  # billionths of a CPU
    pids: int = 0  # processes and threads

    def controllers(self) -> tuple[str, ...]:
        values = {"memory": self.memory, "cpu": self.nano_cpus, "pids": self.pids}
        return tuple(c for c in CONTROLLERS if values[c] > 0)

    def files(self, controller: str, version: int) -> list[tuple[str, str]]:
        """The (file, value) pairs that set this controller's limit in a cgroup."""
        quota = max(1000, self.nano_cpus * CPU_PERIOD // 1_000_000_000)
        if controller == "memory":
            return [("memory.limit_in_bytes" if version == 1 else "memory.max", str(self.memory))]
        if controller == "cpu":
            if version == 1:
                return [("cpu.cfs_period_us", str(CPU_PERIOD)), ("cpu.cfs_quota_us", str(quota))]
            return [("cpu.max", f"{quota} {CPU_PERIOD}")]
        if controller == "pids":
            return [("pids.max", str(self.pids))]
        raise ValueError(controller)

    def describe(self, controller: str) -> str:
        if controller == "memory":
            return f"memory {human_size(self.memory)}"
        if controller == "cpu":
            cpus = self.nano_cpus / 1e9
            return f"{cpus:g} CPU" + ("" if cpus == 1 else "s")
        return f"{self.pids} processes"


def human_size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):g} {unit}"
    return f"{size} bytes"


# -- parsing ----------------------------------------------------------------------------------
def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup as controller → path; the cgroup v2 line (`0::/path`) under ""."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            found[""] = path
            continue
        for controller in controllers.split(","):
            found[controller] = path
    return found


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/PID/mountinfo, the parts that matter for cgroups."""

    root: str  # the path inside the filesystem that is mounted here
    point: Path
    fstype: str
    options: frozenset[str] = field(default_factory=frozenset)  # per-superblock options


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/PID/mountinfo's cgroup and cgroup2 mounts."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(tail[2].split(",")) if len(tail) > 2 else frozenset()
        mounts.append(Mount(_unescape(fields[3]), Path(_unescape(fields[4])), tail[0], options))
    return mounts


def _inside(mount: Mount, path: str) -> Path | None:
    """The directory of cgroup `path` under `mount`, or None when the mount does not show it."""
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    return mount.point / path[len(root) :].lstrip("/")


def own_cgroups(proc_cgroup: str, mountinfo: str) -> tuple[dict[str, Path], Path | None]:
    """The server's own cgroup directory per v1 controller, and its cgroup v2 directory."""
    paths = parse_proc_cgroup(proc_cgroup)
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for mount in parse_mountinfo(mountinfo):
        if mount.fstype == "cgroup2":
            if v2 is None and "" in paths:
                v2 = _inside(mount, paths[""])
            continue
        for controller in CONTROLLERS:
            if controller in mount.options and controller in paths and controller not in v1:
                found = _inside(mount, paths[controller])
                if found is not None:
                    v1[controller] = found
    return v1, v2


# -- probing the machine ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Layout:
    """Where each limited controller's sandbox cgroups go, and why the others are missing."""

    wanted: Wanted
    parents: dict[str, tuple[int, Path]]  # controller → (cgroup version, <own>/agentserver)
    missing: dict[str, str]  # controller → why it is not applied

    def describe(self) -> str:
        """ "memory 2 GiB, 2 CPUs, 256 processes (cgroup v1)" or what is missing."""
        if not self.wanted.controllers():
            return "no memory, CPU or process limits (none configured)"
        parts = [self.wanted.describe(c) for c in CONTROLLERS if c in self.parents]
        versions = sorted({v for v, _ in self.parents.values()})
        text = ", ".join(parts)
        if parts:
            text += " (cgroup " + ", ".join(f"v{v}" for v in versions) + ")"
        lost = [c for c in CONTROLLERS if c in self.missing]
        if lost:
            text += ("; " if parts else "") + "no " + ", ".join(lost) + " limit (no cgroup)"
        return text

    def cgroup(self, sandbox_id: str) -> Cgroup:
        if not _NAME.match(sandbox_id):
            raise ValueError(f"not a sandbox id: {sandbox_id!r}")
        return Cgroup(
            self.wanted,
            tuple((c, v, parent / sandbox_id) for c, (v, parent) in self.parents.items()),
        )

    def sweep(self, sandbox_ids: Iterable[str]) -> list[Path]:
        """Remove the empty cgroups of these sandboxes (left by an earlier run); those removed."""
        removed: list[Path] = []
        for sandbox_id in sandbox_ids:
            if not _NAME.match(sandbox_id):
                continue
            for _, (_, parent) in self.parents.items():
                with suppress(OSError):
                    (parent / sandbox_id).rmdir()
                    removed.append(parent / sandbox_id)
        return removed


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    # Cgroup files take one value per write(); no truncation games.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _our_parent(own: Path) -> Path:
    parent = own / GROUP
    with suppress(FileExistsError):
        parent.mkdir(mode=0o755)
    if not os.access(parent, os.W_OK):
        raise PermissionError(errno.EACCES, "not writable", str(parent))
    return parent


def probe(wanted: Wanted, proc_cgroup: str | None = None, mountinfo: str | None = None) -> Layout:
    """Find (and create) our folder in the server's own cgroup of each wanted controller.

    `proc_cgroup` and `mountinfo` default to this process's; tests pass a fake tree's.
    """
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    if mountinfo is None:
        mountinfo = _read(Path("/proc/self/mountinfo"))
    v1, v2 = own_cgroups(proc_cgroup, mountinfo)
    parents: dict[str, tuple[int, Path]] = {}
    missing: dict[str, str] = {}
    v2_offers = set(_read(v2 / "cgroup.controllers").split()) if v2 is not None else set()
    for controller in wanted.controllers():
        try:
            if controller in v1:
                parents[controller] = (1, _our_parent(v1[controller]))
            elif controller in v2_offers and v2 is not None:
                # Enable it for our folder: the server's cgroup first, then ours (it holds no
                # processes, so the kernel lets it hand the controller on to each sandbox).
                if controller not in _read(v2 / "cgroup.subtree_control").split():
                    _write(v2 / "cgroup.subtree_control", f"+{controller}")
                parent = _our_parent(v2)
                if controller not in _read(parent / "cgroup.subtree_control").split():
                    _write(parent / "cgroup.subtree_control", f"+{controller}")
                parents[controller] = (2, parent)
            else:
                missing[controller] = "no cgroup hierarchy offers the controller"
        except OSError as exc:
            missing[controller] = f"{exc.filename or 'cgroup'}: {exc.strerror or exc}"
            if exc.errno == errno.EBUSY:  # cgroup v2's "no internal processes" rule
                missing[controller] += (
                    " (the server's cgroup holds processes, so cgroup v2 lets it hand no"
                    " controller to a child; give the server a cgroup with them enabled)"
                )
    return Layout(wanted, parents, missing)


# -- one sandbox's cgroups --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Cgroup:
    """A sandbox's cgroups: one directory per limited controller."""

    wanted: Wanted
    dirs: tuple[tuple[str, int, Path], ...]  # (controller, version, directory)

    @property
    def procs(self) -> tuple[str, ...]:
        """The cgroup.procs files a process writes its pid to, to join (distinct directories)."""
        return tuple(dict.fromkeys(str(d / "cgroup.procs") for _, _, d in self.dirs))

    def create(self) -> None:
        """Make the directories and write the limits (again, if they exist)."""
        for controller, version, folder in self.dirs:
            with suppress(FileExistsError):
                folder.mkdir(mode=0o755)
            for name, value in self.wanted.files(controller, version):
                try:
                    _write(folder / name, value)
                except OSError as exc:
                    # cgroup v1 refuses a CPU quota above the server's own: that one holds.
                    if not (controller == "cpu" and exc.errno == errno.EINVAL):
                        raise

    def members(self) -> list[int]:
        """Every process in any of the directories."""
        pids: set[int] = set()
        for _, _, folder in self.dirs:
            for word in _read(folder / "cgroup.procs").split():
                pids.add(int(word))
        return sorted(pids)

    def kill(self) -> list[int]:
        """SIGKILL every member; pidfds to wait on (proctree.wait_gone)."""
        fds: list[int] = []
        for pid in self.members():
            with suppress(OSError):
                fds.append(os.pidfd_open(pid))
                os.kill(pid, signal.SIGKILL)
        return fds

    def remove(self) -> list[Path]:
        """rmdir every directory (they must be empty); those that could not be removed."""
        left: list[Path] = []
        for _, _, folder in self.dirs:
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(folder)
        return left
