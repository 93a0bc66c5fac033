"""The unprivileged account sandbox processes run as when the server runs as root.

A root server would otherwise hand uid 0 to every agent: bubblewrap drops its capabilities,
but uid 0 still reads every root-owned file the sandbox sees read-only (/etc/shadow, keys
under /etc), and without bubblewrap it could do anything. So, like embedded PostgreSQL runs
as a `pgserver` system user, sandboxes run as `--sandbox-user` (a system user created on first
use), without supplementary groups. A server that is not root runs them as itself. A root
server's process backend goes further and gives each sandbox an account of its own (a uid per
sandbox, a gid per workspace disk: ids.py); the system user is who the isolation probe runs as.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentserver.errors import ConfigError
from agentserver.settings import OPTION_BY_NAME, Settings

log = logging.getLogger(__name__)
DEFAULT_USER = "agentserver-sandbox"
_OPTION = OPTION_BY_NAME["sandbox_user"]
WHERE = f"{_OPTION.flag} / {_OPTION.env}"


@dataclass(frozen=True, slots=True)
class Account:
    """Who sandbox processes run as: a uid and its one group (no supplementary groups)."""

    name: str
    uid: int
    gid: int

    @property
    def switches(self) -> bool:
        """True when processes must change user at start (the server runs as someone else)."""
        return self.uid != os.geteuid()

    def popen_args(self) -> dict[str, Any]:
        """subprocess.Popen keywords that start a process as this account."""
        if not self.switches:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def may(self, info: os.stat_result, bits: int) -> bool:
        """Whether this account has every permission in `bits` (r=4, w=2, x=1) per mode bits."""
        mode = info.st_mode
        if info.st_uid == self.uid:
            granted = (mode >> 6) & 7
        elif info.st_gid == self.gid:
            granted = (mode >> 3) & 7
        else:
            granted = mode & 7
        return granted & bits == bits

    def blocked_at(self, path: Path) -> Path | None:
        """The first directory on the way to `path` (itself included if a directory) this
        account cannot enter, or None when every one is traversable."""
        for folder in (*reversed(path.parents), path):
            info = folder.stat()
            if stat.S_ISDIR(info.st_mode) and not self.may(info, 1):
                return folder
        return None

    def give(self, path: Path, mode: int) -> None:
        """Make `path` (a directory we created) this account's own, with `mode`.

        Its contents are handed over too when the directory belonged to someone else (a
        home from before this setting, or another --sandbox-user): fd-relative and without
        following symbolic links, so a link planted inside cannot redirect the chown.
        """
        if not self.switches:
            return
        info = path.lstat()
        if info.st_uid != self.uid or info.st_gid != self.gid:
            for _dir, dirs, files, dir_fd in os.fwalk(path, follow_symlinks=False):
                for name in (*dirs, *files):
                    os.chown(name, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)
            os.chown(path, self.uid, self.gid, follow_symlinks=False)
        os.chmod(path, mode, follow_symlinks=False)


def _create(name: str) -> None:
    """Create the system user (no home, no login shell), or raise ConfigError saying why not."""
    useradd = shutil.which("useradd") or shutil.which("adduser")
    if useradd is None:
        raise ConfigError(
            f"{WHERE}: the user {name!r} does not exist and neither useradd nor adduser is"
            " installed to create it; create it or name an existing user"
        )
    if os.path.basename(useradd) == "useradd":
        argv = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    else:  # busybox/Alpine adduser
        argv = [useradd, "-S", "-D", "-H", "-s", "/sbin/nologin", name]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{WHERE}: cannot create the user {name!r}: {exc}") from exc
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        reason = why[-1] if why else f"exit status {done.returncode}"
        raise ConfigError(f"{WHERE}: cannot create the user {name!r}: {reason}")
    log.info("created the system user %s for sandbox processes", name)


def resolve_account(settings: Settings) -> Account:
    """The account sandbox processes run as; the default system user is created if missing."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name if _known(os.geteuid()) else str(os.geteuid())
        return Account(me, os.geteuid(), os.getegid())
    name = settings.sandbox_user
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name != DEFAULT_USER:
            raise ConfigError(
                f"{WHERE}: there is no user {name!r} on this system (create it, or leave the"
                f" option unset to use {DEFAULT_USER}, created automatically)"
            ) from None
        _create(name)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"{WHERE}: {name!r} was created but cannot be found") from None
    if entry.pw_uid == 0:
        log.warning("%s names a root account: sandbox processes run as uid 0", WHERE)
    else:
        group = _group_name(entry.pw_gid)
        log.info("sandbox processes run as %s (uid %d, group %s)", name, entry.pw_uid, group)
    return Account(name, entry.pw_uid, entry.pw_gid)


def data_dir_problem(account: Account, data_dir: Path) -> str | None:
    """Why the account cannot reach the data directory (naming the options), or None.

    Sandbox homes and disks live under it, so every folder on the way must be traversable
    by the account. Nothing is opened up here: a private folder stays private.
    """
    if not account.switches:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    blocked = account.blocked_at(data_dir)
    if blocked is None:
        return None
    mode = stat.S_IMODE(blocked.stat().st_mode)
    return (
        f"the sandbox user {account.name} ({WHERE}) cannot enter {blocked} (mode {mode:04o})"
        f" on the way to the data directory {data_dir}; choose another --data-dir or let that"
        " user traverse the folder (e.g. chmod o+x)"
    )


def check_program(account: Account, program: Path, option: str) -> str | None:
    """Why the account cannot run `program` (a problem naming `option`), or None if it can."""
    if not account.switches:
        return None
    blocked = account.blocked_at(program.parent)
    if blocked is not None:
        mode = stat.S_IMODE(blocked.stat().st_mode)
        return (
            f"the sandbox user {account.name} cannot enter {blocked} (mode {mode:04o}) to run"
            f" {program}; install it where that user can read it, or set {option}"
        )
    if not account.may(program.stat(), 5):
        return (
            f"the sandbox user {account.name} cannot read and execute {program}; make it"
            f" readable and executable by that user, or set {option}"
        )
    return None


def _known(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
