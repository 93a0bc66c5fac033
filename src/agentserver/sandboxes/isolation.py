"""Bubblewrap isolation for process sandboxes: read-only system, private /tmp, own home and disk.

The sandbox sees the host's system directories read-only, its own home and its workspace's
disk (at /data/disk0) writable, and nothing of the server's data directory, /root, /home or
/tmp. It shares the network (the server reaches it on 127.0.0.1) but not the PID namespace,
and all capabilities are dropped, so root inside cannot remount anything writable. A root
server starts bubblewrap as the unprivileged sandbox user (account.py), where it relies on
unprivileged user namespaces; the probe runs the same way, so isolation is on only when it
really works as that user.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio

from agentserver.sandboxes.account import Account
from agentserver.sandboxes.setup import program_of
from agentserver.settings import OPTION_BY_NAME, Settings

log = logging.getLogger(__name__)
DISK_PATH = "/data/disk0"
# Top-level directories never shown to a sandbox, or replaced by a fresh one.
_SPECIAL = {"proc", "dev", "tmp", "data", "lost+found", "old_root"}
_HIDDEN = ("/root", "/home", "/var/tmp")  # noqa: S108 (hidden from sandboxes, not used)


@dataclass(frozen=True, slots=True)
class Isolation:
    """How sandbox processes are wrapped: `bwrap` argv prefix, or not at all."""

    bwrap: str | None = None
    hidden: tuple[str, ...] = field(default=_HIDDEN)
    problem: str = ""  # why there is none (when bwrap is None)

    @property
    def enabled(self) -> bool:
        return self.bwrap is not None

    def wrap(self, argv: list[str], *, home: Path, disk: Path, data_dir: Path) -> list[str]:
        """`argv` run inside bubblewrap (unchanged when isolation is off)."""
        if self.bwrap is None:
            return argv
        args = [self.bwrap, *system_binds()]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # noqa: S108
        for path in (*self.hidden, str(data_dir)):
            if os.path.isdir(path):
                args += ["--tmpfs", path]
        args += ["--dir", "/data", "--bind", str(disk), DISK_PATH, "--bind", str(home), str(home)]
        program = Path(program_of(argv))  # the agent's, not the clone's shell
        visible = next((p for p in program.parents if p.name == "node_modules"), program)
        args += ["--ro-bind", str(visible), str(visible)]
        args += [
            "--chdir",
            DISK_PATH,
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--",
        ]
        return args + argv


def system_binds() -> list[str]:
    """Every top-level entry of / read-only (symlinks as symlinks), except the special ones."""
    args: list[str] = []
    for name in sorted(os.listdir("/")):
        if name in _SPECIAL:
            continue
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _try(bwrap: str, data_dir: Path, account: Account) -> str | None:
    """Run `true` the way a sandbox would run (as its user, in a home and disk of its own);
    None when it works, else bwrap's complaint."""
    with tempfile.TemporaryDirectory(prefix="agentserver-probe-") as tmp:
        home, disk = Path(tmp) / "home", Path(tmp) / "disk"
        home.mkdir()
        disk.mkdir()
        if account.switches:
            # Traversable only (no listing): the account reaches its two folders inside.
            os.chmod(tmp, 0o711)  # noqa: S103
            account.give(home, 0o700)
            account.give(disk, 0o700)
            if account.blocked_at(home) is not None:
                return f"{account.name} cannot reach the temporary directory {tmp}"
        argv = Isolation(bwrap).wrap(
            [shutil.which("true") or "/bin/true"], home=home, disk=disk, data_dir=data_dir
        )
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=20,
                check=False,
                cwd=home,
                **account.popen_args(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0:
            return done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
    return None


async def probe_isolation(settings: Settings, account: Account) -> Isolation:
    """Bubblewrap when it is installed and works here as `account`; otherwise none, saying why
    (the backend decides whether sandboxes may start without it)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        await trio.lowlevel.checkpoint()
        return Isolation(problem="bubblewrap (bwrap) is not installed")
    problem = await trio.to_thread.run_sync(_try, bwrap, settings.data_dir, account)
    if problem is not None:
        return Isolation(
            problem=f"bubblewrap does not work here as {account.name} ({problem}); allowing"
            " unprivileged user namespaces (sysctl user.max_user_namespaces,"
            " kernel.apparmor_restrict_unprivileged_userns) enables it"
        )
    log.info("sandbox processes are isolated with bubblewrap, as %s", account.name)
    return Isolation(bwrap)


def isolation_verdict(settings: Settings, isolation: Isolation) -> tuple[str, tuple[str, ...]]:
    """Without working bubblewrap a sandbox can read the server's command line, every home and
    disk, and reach every local port: refuse to start sandboxes then (the returned refusal),
    unless the operator allowed it (then a warning the web UI shows)."""
    allow = OPTION_BY_NAME["allow_unisolated_sandboxes"].flag
    if isolation.enabled:
        return "", ()
    if settings.allow_unisolated_sandboxes:
        warning = (
            f"Sandboxes run without isolation ({allow}): {isolation.problem}. Each sandbox can"
            " see every process's command line and reach the other sandboxes' ports and the"
            " server's (and, unless the server runs as root, read the others' files)."
        )
        log.warning("%s", warning)
        return "", (warning,)
    refusal = (
        f"sandboxes cannot start: {isolation.problem}; install bubblewrap where it works, or"
        f" pass {allow} to run them without isolation"
    )
    log.error("%s", refusal)
    return refusal, (refusal[0].upper() + refusal[1:] + ".",)
