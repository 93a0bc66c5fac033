"""What a local agent's machine downloads from this server: the agent itself.

`GET /download/agentserver-agent.pyz` sends the agent as one file (agent_bundle.py), built from
this installation on the first request and kept per version under the data directory, so a
laptop gets the agent that matches this server and nothing comes from elsewhere. An operator's
own file (`--agent-zipapp`, e.g. for a server frozen with PyInstaller, which cannot assemble
one) is sent instead. `GET /api/agent/install` tells the agent dialog what there is: this
server's version (for `pip install agentserver==…`), the tunnel protocol it speaks (an agent
checks it before connecting) and the download's path, or None.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

import trio
from quart import Blueprint, Response, request

from agentserver import __version__, agent_bundle
from agentserver.api.common import deps
from agentserver.errors import NotFound
from agentserver.tunnel.version import PROTOCOL

blueprint = Blueprint("downloads", __name__)
log = logging.getLogger(__name__)

AGENT_ROUTE = "/download/agentserver-agent.pyz"
AGENT_FILE = "agentserver-agent.pyz"
# One build at a time: concurrent first downloads wait for it rather than race to write.
_building = trio.Lock()


@cache
def _bundle_refusal() -> str | None:
    """Why this installation cannot build the agent file, or None (asked once per process)."""
    try:
        for name in agent_bundle.DISTRIBUTIONS:
            agent_bundle.distribution_files(name)
    except agent_bundle.NotBundleable as exc:
        return str(exc)
    return None


def _configured() -> Path | None:
    configured = deps().settings.agent_zipapp
    return Path(configured).expanduser() if configured else None


def _cached() -> Path:
    return deps().settings.data_dir / "downloads" / f"agentserver-agent-{__version__}.pyz"


async def agent_file() -> Path | None:
    """The file to send: the configured one, or this version's build (made now if missing);
    None when there is neither."""
    await trio.lowlevel.checkpoint()
    configured = _configured()
    if configured is not None:
        return configured if await trio.Path(configured).is_file() else None
    if _bundle_refusal() is not None:
        return None
    path = _cached()
    async with _building:
        if not await trio.Path(path).is_file():
            bundle = await trio.to_thread.run_sync(agent_bundle.build, path)
            log.info("built the agent download: %s (%.1f MB)", path, bundle.size / 1e6)
    return path


async def _offers_download() -> bool:
    await trio.lowlevel.checkpoint()
    configured = _configured()
    if configured is not None:
        return await trio.Path(configured).is_file()
    return _bundle_refusal() is None


@blueprint.get("/api/agent/install")
async def agent_install() -> dict[str, Any]:
    """The version to install, and the agent file's path when this server has one."""
    has_file = await _offers_download()
    return {
        "version": __version__,
        "tunnelProtocol": PROTOCOL,
        "download": AGENT_ROUTE if has_file else None,
    }


@blueprint.get(AGENT_ROUTE)
async def agent_download() -> Response:
    """The agent as one file (a zipapp for Python 3.11+), cached by version."""
    path = await agent_file()
    if path is None:
        reason = _bundle_refusal() or "the configured --agent-zipapp is missing"
        raise NotFound(f"this server has no agent file ({reason}): install with pip or uvx")
    stat = await trio.Path(path).stat()
    etag = f'"{__version__}-{stat.st_size}-{int(stat.st_mtime)}"'
    headers = {
        "ETag": etag,
        "Cache-Control": "public, max-age=3600",
        "X-Agentserver-Version": __version__,
    }
    if request.headers.get("If-None-Match") == etag:
        return Response(b"", status=304, headers=headers)
    body = await trio.Path(path).read_bytes()
    headers["Content-Disposition"] = f'attachment; filename="{AGENT_FILE}"'
    return Response(body, content_type="application/zip", headers=headers)
