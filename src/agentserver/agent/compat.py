"""Before connecting: does the server speak this agent's tunnel protocol?

`check_server` asks `/api/agent/install` (public, cheap) and stops with a clear message when
the server's protocol differs; a server that does not say (older, or unreachable right now)
is not refused here: connecting then tells what is wrong. When the tunnel itself is refused
with 426 (the server changed while the agent ran, or did not answer the question first),
`upgrade_required` makes the same message, so the agent stops instead of retrying forever.
"""

from __future__ import annotations

import re

import httpx
import trio

from agentserver import __version__
from agentserver.tunnel.version import PROTOCOL as PROTOCOL  # this agent's: asked and sent
from agentserver.tunnel.version import mismatch

# The server's own words in a 426: "… a server running agentserver 0.2.0 (tunnel protocol 2) …".
_SERVER_SAYS = re.compile(
    r"agentserver (?P<version>[^\s(),]+) \(tunnel protocol (?P<protocol>\d+)\)"
)


class IncompatibleServer(Exception):
    """The server speaks another tunnel protocol; the message says what to do."""


async def check_server(server: str, client: httpx.AsyncClient | None = None) -> None:
    """Raise IncompatibleServer when `server` (a normalised base URL) speaks another protocol."""
    await trio.lowlevel.checkpoint()
    own = client is None
    client = client or httpx.AsyncClient(timeout=10)
    answered: object = {}
    try:
        answer = await client.get(f"{server}/api/agent/install")
        answered = answer.json() if answer.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        pass  # not refused here: connecting says what is wrong
    finally:
        if own:
            await client.aclose()
    body: dict[str, object] = answered if isinstance(answered, dict) else {}
    theirs = body.get("tunnelProtocol")
    if isinstance(theirs, int) and theirs != PROTOCOL:
        text = mismatch(PROTOCOL, __version__, theirs, str(body.get("version", "?")))
        raise IncompatibleServer(text.replace("<server>", server))


async def upgrade_required(
    server: str, refusal: bytes | None, client: httpx.AsyncClient | None = None
) -> str:
    """The one line to stop with when `server` refused the tunnel with 426 (`refusal`: the
    answer's body): both sides' versions and where to download the matching agent."""
    await trio.lowlevel.checkpoint()
    try:
        await check_server(server, client)
    except IncompatibleServer as exc:
        return str(exc)
    said = _SERVER_SAYS.search((refusal or b"").decode("utf-8", "replace"))
    if said is not None:
        theirs, version = int(said["protocol"]), said["version"]
        return mismatch(PROTOCOL, __version__, theirs, version).replace("<server>", server)
    return (
        f"this agent (agentserver {__version__}, tunnel protocol {PROTOCOL}) cannot connect to"
        f" {server}, which speaks another tunnel protocol (HTTP 426): get the matching agent"
        f" from the server, e.g. `curl -fLO {server}/download/agentserver-agent.pyz`"
    )
