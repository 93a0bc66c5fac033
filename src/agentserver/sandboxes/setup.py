"""What a sandbox is given at creation: environment variables for its agent and a git
repository to clone onto the workspace disk (migration 0014, table `sandbox_setup`).

The variables' values are sealed (Fernet: AES-CBC with an HMAC) with the server's key
(sandboxes/env_key.py: --sandbox-env-key, else one kept in the database for every replica): the
server needs them back at every start, the database never sees them in clear. Only the names are
ever shown again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken

from agentserver.errors import AgentServerError, Invalid

ENV_COUNT_MAX = 50
ENV_VALUE_MAX = 4096  # bytes of one value (UTF-8)
ENV_TOTAL_MAX = 32768  # bytes of every name and value together
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_NAME_MAX = 128
# Set by the server or the backends (launch.py, containers.py, kinds.py) or too dangerous to
# let through (the dynamic loader's): refused, by name or by prefix.
RESERVED_NAMES = frozenset({"HOME", "PATH", "LANG", "TERM", "USER", "LOGNAME", "SHELL", "PWD"})
RESERVED_PREFIXES = ("AGENTSERVER_", "ANTHROPIC_", "OPENCODE_", "OPENCLAW_", "LD_")
GIT_URL_MAX = 2048
GIT_REF_MAX = 255
# https://host/path, ssh://[user@]host[:port]/path, git://host/path, or scp-like user@host:path.
GIT_URL = re.compile(r"(?:(?:https|ssh|git)://[^\s/@]+(?:@[^\s/]+)?/\S+|[\w.-]+@[\w.-]+:\S+)")
GIT_REF = re.compile(r"[A-Za-z0-9._/-]+")


@dataclass(frozen=True, slots=True)
class SandboxSetup:
    """A sandbox's own environment variables (values in clear: never shown, never logged)
    and its git repository."""

    env: dict[str, str] = field(default_factory=dict, repr=False)
    git_url: str | None = None
    git_ref: str | None = None


def reserved(name: str) -> bool:
    upper = name.upper()
    return upper in RESERVED_NAMES or upper.startswith(RESERVED_PREFIXES)


def checked_env(env: dict[str, str]) -> dict[str, str]:
    """The variables as given, or Invalid naming the first one refused."""
    if len(env) > ENV_COUNT_MAX:
        raise Invalid(f"env: at most {ENV_COUNT_MAX} variables", field="env")
    total = 0
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name) or len(name) > ENV_NAME_MAX:
            raise Invalid(
                f"env: {name!r} is not a variable name (letters, digits and _, not first a"
                f" digit, at most {ENV_NAME_MAX})",
                field="env",
            )
        if reserved(name):
            raise Invalid(f"env: {name} is set by the server and cannot be given", field="env")
        size = len(value.encode())
        if "\0" in value:
            raise Invalid(f"env: {name} must not contain a NUL character", field="env")
        if size > ENV_VALUE_MAX:
            raise Invalid(f"env: {name} is longer than {ENV_VALUE_MAX} bytes", field="env")
        total += size + len(name) + 1
    if total > ENV_TOTAL_MAX:
        raise Invalid(f"env: more than {ENV_TOTAL_MAX} bytes in all", field="env")
    return dict(env)


def checked_git_url(url: str, *, allow_file: bool = False) -> str:
    """A repository URL git can clone: https, ssh (URL or scp-like), git; `file://` only when
    the server allows it (AGENTSERVER_GIT_FILE_URLS, for tests)."""
    url = url.strip()
    ok = bool(GIT_URL.fullmatch(url)) and not url.startswith("-")
    if allow_file and url.startswith("file:///") and "\0" not in url:
        ok = True
    if not ok or len(url) > GIT_URL_MAX or repo_folder(url) is None:
        raise Invalid(
            "gitUrl: give an https://, ssh:// or git@host:path repository URL", field="gitUrl"
        )
    return url


def checked_git_ref(ref: str) -> str:
    ref = ref.strip()
    if not GIT_REF.fullmatch(ref) or ref.startswith("-") or ".." in ref or len(ref) > GIT_REF_MAX:
        raise Invalid("gitRef: not a branch or tag name", field="gitRef")
    return ref


def repo_folder(url: str) -> str | None:
    """The folder a clone of `url` lands in on the disk: its last path part without `.git`."""
    last = re.split(r"[/:]", url.rstrip("/"))[-1]
    name = last.removesuffix(".git")
    if not name or name in (".", "..") or not re.fullmatch(r"[\w.-]+", name):
        return None
    return name


class Sealer:
    """Seals and opens the variables with the server's key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, env: dict[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(env).encode())

    def open(self, sealed: bytes) -> dict[str, str]:
        try:
            env = json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise AgentServerError(
                "the sandbox's environment variables cannot be read: the server's key"
                " (AGENTSERVER_SANDBOX_ENV_KEY, or the one every replica shares in the database)"
                " is not the key they were sealed with"
            ) from None
        return {str(k): str(v) for k, v in env.items()}

    def resealed(self, sealed: bytes, old: Sealer) -> bytes | None:
        """`sealed` sealed again with this key if only `old` opens it; None if this key already
        opens it, or neither does (it is left as it is)."""
        try:
            self._fernet.decrypt(sealed)
        except InvalidToken:
            try:
                return self._fernet.encrypt(old._fernet.decrypt(sealed))
            except InvalidToken:
                return None
        return None


# Run inside the sandbox, as its user, beside the agent (so the clone uses the sandbox's own
# network and identity, never the server's): the repository from the environment lands in a
# folder of the workspace disk named after it, unless that folder exists. Its lines go to the
# agent's output (the sandbox's logs). The URL and ref stay out of this argv.
CLONE_FUNCTION = r"""
clone() {
  dest="$AGENTSERVER_DISK/$AGENTSERVER_GIT_FOLDER"
  if [ -e "$dest" ]; then
    echo "git clone skipped: $dest already exists"
    return
  fi
  set -- clone --quiet
  if [ -n "$AGENTSERVER_GIT_REF" ]; then set -- "$@" --branch "$AGENTSERVER_GIT_REF"; fi
  if out=$(git "$@" -- "$AGENTSERVER_GIT_URL" "$dest" 2>&1 < /dev/null); then
    echo "git clone: $AGENTSERVER_GIT_URL into $dest"
  else
    echo "git clone failed: $(printf '%s\n' "$out" | grep -m 1 . | cut -c 1-500)"
  fi
}
"""
# The process backend: the clone beside the agent, which replaces the shell.
CLONE_SCRIPT = CLONE_FUNCTION + 'clone &\nexec "$@"\n'
# Docker: run by `docker exec` once the agent answers, its lines in the container's log.
CLONE_IN_CONTAINER = CLONE_FUNCTION + "clone > /proc/1/fd/1 2>&1\n"


def with_clone(
    argv: list[str], env: dict[str, str], git_url: str | None, git_ref: str | None
) -> tuple[list[str], dict[str, str]]:
    """The agent's argv and environment, with the repository's clone started beside it."""
    extra = clone_environment(git_url, git_ref)
    if not extra:
        return argv, env
    return ["/bin/sh", "-c", CLONE_SCRIPT, "agentserver-setup", *argv], {**env, **extra}


def program_of(argv: list[str]) -> str:
    """The agent program `argv` runs, with or without the clone's shell in front of it."""
    if argv[:2] == ["/bin/sh", "-c"] and len(argv) > 4 and argv[3] == "agentserver-setup":
        return argv[4]
    return argv[0]


def clone_environment(git_url: str | None, git_ref: str | None) -> dict[str, str]:
    """What the clone script reads (empty: nothing to clone)."""
    folder = None if git_url is None else repo_folder(git_url)
    if git_url is None or folder is None:
        return {}
    return {
        "AGENTSERVER_GIT_URL": git_url,
        "AGENTSERVER_GIT_REF": git_ref or "",
        "AGENTSERVER_GIT_FOLDER": folder,
        # Never wait for a password or a host key nobody will type in.
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
    }
