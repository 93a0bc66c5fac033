"""The readiness probe every backend sends: its kind's request, with the agent's credentials.

What the request is and which answers count are the kinds table's (kinds.py); this module only
sends it, so the process and Docker backends cannot drift apart again.
"""

from __future__ import annotations

import httpx
import trio

from agentserver.kinds import answers_with_credentials, kind_of, probe_headers


async def answers(client: httpx.AsyncClient, sandbox_type: str, base_url: str, secret: str) -> bool:
    """Whether the agent at `base_url` (`http://host:port`) answers its readiness request
    with its credentials; False while it cannot be reached."""
    kind = kind_of(sandbox_type)
    try:
        response = await client.request(
            kind.readiness.method,
            base_url + kind.readiness.path,
            headers=probe_headers(kind, secret),
            content=kind.readiness.body or None,
        )
    except httpx.TransportError:
        await trio.lowlevel.checkpoint()  # it may fail before its first one
        return False
    return answers_with_credentials(response.status_code)
