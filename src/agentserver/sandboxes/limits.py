"""Resource limits of a process sandbox: rlimits and a lower priority, set in the child before exec.

What each one means here (the Docker backend limits the container as a whole instead):
- processes (`--agent-pids-limit`): processes and threads of the sandbox's uid (RLIMIT_NPROC),
  counted per uid by the kernel, so it is applied only where each sandbox has a uid of its own
  (a root server); otherwise it would count the server's own threads as well.
- file size (`--agent-file-size-limit`): the largest file a sandbox may write (RLIMIT_FSIZE);
  not a quota on the disk as a whole.
- CPU: an rlimit can only cap CPU seconds in total, not a share, so `--agent-nano-cpus` is not
  applied; sandboxes run at a lower priority (nice 10) than the server instead.
- memory: not as an rlimit. opencode's JavaScript engine sizes its heap from RLIMIT_AS and then
  aborts ("MemoryExhaustion") at some limits and not others (measured with opencode 1.18.33:
  2 GiB and 4 GiB serve, 3 GiB aborts at start, 8 GiB aborts later), so an address-space limit
  would make sandboxes crash at random. Memory needs a cgroup (memory.max), as Docker's has.
These are set after the switch of user, so the hard limit is the soft one: no sandbox can raise
them again.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from agentserver.settings import Settings

NICE = 10


@dataclass(frozen=True, slots=True)
class Limits:
    """The rlimits (resource, value) a sandbox process starts with, and its niceness."""

    rlimits: tuple[tuple[int, int], ...] = ()
    nice: int = NICE

    def apply(self) -> None:
        """Set them on the calling process (a child between fork and exec)."""
        for which, value in self.rlimits:
            resource.setrlimit(which, (value, value))
        os.setpriority(os.PRIO_PROCESS, 0, self.nice)


def limits_for(settings: Settings, *, own_uid: bool) -> Limits:
    """The limits of one sandbox; a setting of 0 means no limit."""
    wanted = [(resource.RLIMIT_FSIZE, settings.agent_file_size_limit)]
    if own_uid:
        wanted.append((resource.RLIMIT_NPROC, settings.agent_pids_limit))
    return Limits(tuple((which, value) for which, value in wanted if value > 0))
