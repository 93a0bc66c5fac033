"""Resource limits of a process sandbox: its cgroups, rlimits and a lower priority, set in the
child before exec.

What each one means here (the Docker backend limits the container as a whole instead):
- memory (`--agent-memory-limit`), CPU (`--agent-nano-cpus`, as a CFS quota of nano_cpus / 1e9
  CPUs per period) and processes (`--agent-pids-limit`, also as pids.max, counted per sandbox):
  a cgroup per sandbox inside the server's own cgroup (cgroups.py), which the child joins
  before it switches user and execs, so everything the agent starts is counted. Where no
  cgroup controller is usable (a server that is not root, a read-only cgroupfs) the limit is
  not applied, and the server says so once at start.
- processes, as an rlimit too: processes and threads of the sandbox's uid (RLIMIT_NPROC),
  counted per uid by the kernel, so it is applied only where each sandbox has a uid of its own
  (a root server); otherwise it would count the server's own threads as well.
- file size (`--agent-file-size-limit`): the largest file a sandbox may write (RLIMIT_FSIZE);
  not a quota on the disk as a whole.
- CPU priority: sandboxes run at a lower priority (nice 10) than the server, with or without
  a CPU quota.
- memory is never an rlimit: opencode's JavaScript engine sizes its heap from RLIMIT_AS and then
  aborts ("MemoryExhaustion") at some limits and not others (measured with opencode 1.18.33:
  2 GiB and 4 GiB serve, 3 GiB aborts at start, 8 GiB aborts later), so an address-space limit
  would make sandboxes crash at random. A cgroup's memory limit does not change what the
  engine sees; the kernel's OOM killer ends a process of the sandbox when it is exceeded.
The rlimits are set after the switch of user, so the hard limit is the soft one: no sandbox can
raise them again; the cgroups are joined before it, as root (a sandbox's uid may not move itself).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from agentserver.sandboxes.cgroups import Wanted
from agentserver.settings import Settings

NICE = 10


@dataclass(frozen=True, slots=True)
class Limits:
    """The rlimits (resource, value) a sandbox process starts with, and its niceness."""

    rlimits: tuple[tuple[int, int], ...] = ()
    nice: int = NICE
    cgroups: tuple[str, ...] = ()  # cgroup.procs files to join (cgroups.py)

    def join(self) -> None:
        """Move the calling process into its cgroups (a child before exec and its user switch)."""
        pid = str(os.getpid()).encode()
        for procs in self.cgroups:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def apply(self) -> None:
        """Set them on the calling process (a child between fork and exec)."""
        for which, value in self.rlimits:
            resource.setrlimit(which, (value, value))
        os.setpriority(os.PRIO_PROCESS, 0, self.nice)


def limits_for(settings: Settings, *, own_uid: bool, cgroups: tuple[str, ...] = ()) -> Limits:
    """The limits of one sandbox; a setting of 0 means no limit. `cgroups`: the cgroup.procs
    files of the sandbox's cgroups, which hold its memory, CPU and process limits."""
    wanted = [(resource.RLIMIT_FSIZE, settings.agent_file_size_limit)]
    if own_uid:
        wanted.append((resource.RLIMIT_NPROC, settings.agent_pids_limit))
    return Limits(tuple((which, value) for which, value in wanted if value > 0), cgroups=cgroups)


def wanted_of(settings: Settings) -> Wanted:
    """The cgroup limits the settings ask for."""
    return Wanted(
        memory=settings.agent_memory_limit,
        nano_cpus=settings.agent_nano_cpus,
        pids=settings.agent_pids_limit,
    )
