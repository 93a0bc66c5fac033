"""Starting a sandbox's process: its user, session, limits, umask and death with the server."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Callable

import trio

from agentserver.sandboxes.account import Account
from agentserver.sandboxes.limits import Limits

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


def _child_setup(
    server_pid: int, limits: Limits, account: Account, netns: int | None
) -> Callable[[], None]:
    """A preexec_fn: the child joins the sandbox's cgroups and network namespace (`netns`, an
    open descriptor of it; closed at exec), becomes `account`, gets SIGKILL
    when the server's thread that forked it dies, creates files for its owner and group only
    (the workspace disk's group shares them), and starts with the sandbox's resource limits
    (limits.py).

    The user switch is done here rather than by Popen (which would do it before this
    function), because joining a cgroup or a namespace needs root: a sandbox's uid may not
    move itself.
    It is the same switch Popen does (groups, gid, uid). The death signal comes after it (a
    credential change clears it), and the parent is checked afterwards: a server that died in
    between is not noticed by the kernel any more. bwrap's `--die-with-parent` does the same.
    """

    def preexec() -> None:
        os.umask(0o007)
        limits.join()
        if netns is not None and _LIBC.setns(netns, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET) failed")
        if account.switches:
            os.setgroups([])
            os.setregid(account.gid, account.gid)
            os.setreuid(account.uid, account.uid)
        limits.apply()
        if _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != server_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class Child:
    """A child process started from the event-loop thread, with its output pipe as a trio stream.

    Not `trio.lowlevel.open_process`: that forks from a worker thread, and bubblewrap's
    `--die-with-parent` (PR_SET_PDEATHSIG) fires when the *thread* that forked it exits — the
    worker thread cache retires idle threads after seconds, which would kill every sandbox.
    The main thread lives as long as the server, so a crashed server still takes its
    sandboxes with it. Forking costs a few milliseconds of the loop, once per start.
    """

    def __init__(self, popen: subprocess.Popen[bytes], stdout: trio.lowlevel.FdStream) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout = stdout

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        account: Account,
        limits: Limits = Limits(),  # noqa: B008 (frozen, so one shared default is fine)
        netns: int | None = None,
    ) -> Child:
        """Start `argv` as `account` (user, group, no supplementary groups) in its own session,
        with `limits`, in the network namespace open at descriptor `netns` (None: the server's)."""
        read_fd, write_fd = os.pipe()
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid(), limits, account, netns),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return cls(popen, trio.lowlevel.FdStream(read_fd))

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the exit without a thread: a pidfd becomes readable when it exits."""
        if self._popen.returncode is not None:
            await trio.lowlevel.checkpoint()
            return self._popen.returncode
        pidfd = os.pidfd_open(self.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        return self._popen.wait()
