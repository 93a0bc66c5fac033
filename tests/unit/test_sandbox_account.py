"""The sandbox account: the setting's validation, permission checks, and safe hand-over of files."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from agentserver.errors import ConfigError
from agentserver.models import SandboxType
from agentserver.sandboxes import isolation
from agentserver.sandboxes.account import (
    DEFAULT_USER,
    Account,
    check_program,
    data_dir_problem,
    resolve_account,
)
from agentserver.sandboxes.base import SandboxSpec
from agentserver.sandboxes.launch import write_agent_config
from agentserver.settings import Settings, build_settings

REPO = Path(__file__).resolve().parents[2]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (changes file owners)")
STRANGER = Account("stranger", 4242, 4242)  # owns nothing on this machine


def test_default_sandbox_user() -> None:
    """Without the option, sandboxes are meant to run as the agentserver-sandbox system user."""
    assert build_settings({}, {}).sandbox_user == DEFAULT_USER == "agentserver-sandbox"
    chosen = build_settings({}, {"AGENTSERVER_SANDBOX_USER": "builder"})
    assert chosen.sandbox_user == "builder"


@pytest.mark.parametrize("name", ["Bad User", "root;rm", "-dash", "x" * 40, "../etc"])
def test_a_bad_user_name_names_the_option(name: str) -> None:
    """A name useradd would refuse is a configuration error naming the flag or variable."""
    with pytest.raises(ConfigError, match="--sandbox-user") as flag:
        build_settings({"sandbox_user": name}, {})
    assert flag.value.field == "sandbox_user"
    with pytest.raises(ConfigError, match="AGENTSERVER_SANDBOX_USER"):
        build_settings({}, {"AGENTSERVER_SANDBOX_USER": name})


def test_not_root_runs_sandboxes_as_the_server_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that is not root ignores the option: no user switch, no account needed."""
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(os, "getegid", lambda: 4343)
    found = resolve_account(Settings(sandbox_user="no-such-user-anywhere"))
    assert (found.uid, found.gid) == (4242, 4343)
    assert not found.switches
    assert found.popen_args() == {}


@as_root
def test_a_configured_user_must_exist() -> None:
    """Only the default user is created on demand; a missing named one is an error naming it."""
    with pytest.raises(ConfigError, match=r"AGENTSERVER_SANDBOX_USER.*no-such-sbx-user"):
        resolve_account(Settings(sandbox_user="no-such-sbx-user"))


@as_root
def test_the_default_user_exists_after_resolving() -> None:
    """As root the default account is a real, unprivileged user whose processes drop groups."""
    found = resolve_account(Settings())
    entry = pwd.getpwnam(DEFAULT_USER)
    assert (found.uid, found.gid) == (entry.pw_uid, entry.pw_gid)
    assert found.uid != 0
    assert found.popen_args() == {"user": found.uid, "group": found.gid, "extra_groups": []}


def test_permission_bits_are_read_for_owner_group_and_others(tmp_path: Path) -> None:
    """Owner, group and other bits decide, in that order, what the account may do."""
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o750)
    info = path.stat()
    owner = Account("o", info.st_uid, 999_999)
    group = Account("g", 999_999, info.st_gid)
    assert owner.may(info, 7)
    assert group.may(info, 5)
    assert not group.may(info, 2)
    assert not STRANGER.may(info, 4)
    assert not STRANGER.may(info, 1)


def test_a_private_folder_blocks_the_data_dir(tmp_path: Path) -> None:
    """A 0700 folder on the way to the data directory is named, and left private."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    problem = data_dir_problem(STRANGER, private / "data")
    assert problem is not None
    assert str(private) in problem
    assert "--data-dir" in problem
    assert "0700" in problem
    assert (private.stat().st_mode & 0o777) == 0o700
    assert data_dir_problem(STRANGER, Path("/usr/share")) is None  # every folder is 0755


def test_a_program_the_account_cannot_reach_names_its_option(tmp_path: Path) -> None:
    """A binary in a private folder, or not executable by the account, names --opencode-bin."""
    folder = tmp_path / "bin"
    folder.mkdir(mode=0o700)
    program = folder / "opencode"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o700)
    blocked = check_program(STRANGER, program, "--opencode-bin / OPENCODE_BIN")
    assert blocked is not None
    assert "--opencode-bin" in blocked
    assert str(folder) in blocked
    assert check_program(Account("me", os.geteuid(), os.getegid()), program, "x") is None


def test_the_installed_opencode_is_runnable_by_others() -> None:
    """The opencode that scripts/bootstrap installs can be run by an unrelated user."""
    installed = REPO / ".cache/npm/node_modules/.bin/opencode"
    if not installed.exists():
        pytest.skip(f"{installed} is not installed (scripts/bootstrap)")
    if os.geteuid() != 0:
        pytest.skip("only a root server switches users")
    assert check_program(STRANGER, installed.resolve(), "--opencode-bin") is None


@as_root
def test_giving_a_home_hands_over_its_contents_without_following_links(tmp_path: Path) -> None:
    """A root-owned home from before becomes the account's, but a planted link's target does not."""
    account = resolve_account(Settings())
    outside = tmp_path / "server-file"
    outside.write_text("secret")
    outside.chmod(0o600)
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / "sub" / "state.json").write_text("{}")
    (home / "link").symlink_to(outside)
    account.give(home, 0o700)
    for path in (home, home / "sub", home / "sub" / "state.json", home / "link"):
        assert path.lstat().st_uid == account.uid, path
    assert (home.stat().st_mode & 0o777) == 0o700
    assert outside.stat().st_uid == 0


@as_root
def test_openclaw_config_refuses_a_planted_link_and_belongs_to_the_account(
    tmp_path: Path,
) -> None:
    """The config is written as the account's 0600 file, never through a link in the home."""
    account = resolve_account(Settings())
    spec = SandboxSpec("s1", "w1", SandboxType.OPENCLAW, "secret", "http://x", "token")
    home = tmp_path / "home"
    home.mkdir()
    write_agent_config(home, spec, account)
    config = home / ".openclaw" / "openclaw.json"
    assert config.stat().st_uid == account.uid
    assert (config.stat().st_mode & 0o777) == 0o600
    target = tmp_path / "target"
    target.mkdir()
    config.unlink()
    (home / ".openclaw").rmdir()
    (home / ".openclaw").symlink_to(target)
    with pytest.raises(OSError):
        write_agent_config(home, spec, account)
    assert list(target.iterdir()) == []


@as_root
def test_the_isolation_probe_runs_as_the_sandbox_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The bubblewrap probe runs its command as the account, so "isolated" means as that user."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    folder = Path(tempfile.mkdtemp(prefix=".test-probe-", dir=REPO))  # visible in the sandbox
    try:
        folder.chmod(0o755)
        script = folder / "report-uid"
        script.write_text("#!/bin/sh\nid -u >&2\nexit 1\n")
        script.chmod(0o755)
        monkeypatch.setattr(shutil, "which", lambda name: str(script))
        account = resolve_account(Settings())
        assert isolation._try(bwrap, tmp_path / "data", account) == str(account.uid)
        assert isolation._try(bwrap, tmp_path / "data", Account("root", 0, 0)) == "0"
    finally:
        shutil.rmtree(folder)
