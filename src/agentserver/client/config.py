"""Where the command line keeps its server and token: one JSON file, mode 0600, in the user's
config directory (`$XDG_CONFIG_HOME/agentserver/client.json`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

SERVER_ENV = "AGENTSERVER_SERVER"
TOKEN_ENV = "AGENTSERVER_TOKEN"  # noqa: S105 (the variable's name, not a token)


@dataclass(frozen=True, slots=True)
class Login:
    """The server the command line talks to and the API token it sends."""

    server: str
    token: str
    token_id: str | None = None


def config_path() -> Path:
    return Path(platformdirs.user_config_dir("agentserver")) / "client.json"


def normal_server(url: str) -> str:
    """A server URL as stored: with a scheme (https unless it says http), no trailing slash."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"https://{url}"
    return url


def save(login: Login, path: Path | None = None) -> Path:
    """Write the login readable by its user only (0600, written whole, then renamed)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = path.with_suffix(".tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"server": login.server, "token": login.token, "tokenId": login.token_id}, out)
    os.chmod(staged, 0o600)  # an older file of the same name kept its mode: set it anyway
    staged.replace(path)
    return path


def load(path: Path | None = None) -> Login | None:
    """The saved login, with AGENTSERVER_SERVER / AGENTSERVER_TOKEN taking precedence (for
    scripts and CI that never run `login`); None when neither says both."""
    saved: dict[str, str | None] = {}
    path = path or config_path()
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        saved = {}
    server = os.environ.get(SERVER_ENV) or saved.get("server")
    token = os.environ.get(TOKEN_ENV) or saved.get("token")
    if not server or not token:
        return None
    from_file = token == saved.get("token")
    return Login(normal_server(server), token, saved.get("tokenId") if from_file else None)
