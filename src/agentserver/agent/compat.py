"""Before connecting: does the server speak this agent's tunnel protocol?

`check_server` asks `/api/agent/install` (public, cheap) and stops with a clear message when
the server's protocol differs; a server that does not say (older, or unreachable right now)
is not refused here: connecting then tells what is wrong.
"""

from __future__ import annotations

import httpx
import trio

from agentserver import __version__
from agentserver.tunnel.version import PROTOCOL, mismatch


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
