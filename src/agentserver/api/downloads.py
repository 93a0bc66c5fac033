"""What a local agent's machine downloads from this server: the agent itself, when built.

`GET /api/agent/install` tells the agent dialog how to install the agent: this server's
version (for `pip install agentserver==…` / `uvx`) and, when a zipapp was built and configured
(`--agent-zipapp`), where to download it. `GET /downloads/agentserver.pyz` serves that file,
and is 404 when none is configured: the server never pretends to have a binary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from quart import Blueprint, Response

from agentserver import __version__
from agentserver.api.common import deps
from agentserver.errors import NotFound

blueprint = Blueprint("downloads", __name__)

ZIPAPP_ROUTE = "/downloads/agentserver.pyz"


def zipapp_path() -> trio.Path | None:
    configured = deps().settings.agent_zipapp
    return trio.Path(Path(configured).expanduser()) if configured else None


@blueprint.get("/api/agent/install")
async def agent_install() -> dict[str, Any]:
    """The version to install, and the zipapp's URL when this server has one."""
    await trio.lowlevel.checkpoint()
    path = zipapp_path()
    has_file = path is not None and await path.is_file()
    return {"version": __version__, "download": ZIPAPP_ROUTE if has_file else None}


@blueprint.get(ZIPAPP_ROUTE)
async def agent_zipapp() -> Response:
    """The configured agentserver.pyz, or 404 when none was built and configured."""
    path = zipapp_path()
    if path is None or not await path.is_file():
        raise NotFound("this server has no agentserver.pyz to download: install with pip or uvx")
    body = await path.read_bytes()
    return Response(
        body,
        content_type="application/zip",
        headers={
            "Content-Disposition": 'attachment; filename="agentserver.pyz"',
            "Cache-Control": "no-cache",
        },
    )
