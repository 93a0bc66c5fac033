"""Previews on the subdomain proxy: `p{port}-{id}` hosts reach a dev server inside a sandbox.

The proxy treats a preview as it treats the sandbox's agent (the same ticket and cookie, roles,
Origin checks, status pages, waking, activity), except for what this module decides: which
ports are never previews (kinds.preview_refusal), which ports a member made public (no sign-in
needed, cached briefly and forgotten on any change of the sandbox), and the way to the port —
the backend's `preview_endpoint` for a sandbox it runs, the tunnel (with the port in the stream's
open message) for a local agent, which answers only for the ports its user shares.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import trio

from agentserver.db.database import Database
from agentserver.kinds import preview_refusal
from agentserver.models import Sandbox
from agentserver.proxy import pages
from agentserver.proxy.upstream import Pool, Upstream
from agentserver.sandboxes.base import Backend, Endpoint

# How long a public (or not public) answer is trusted without asking the database again; a
# change made through the API is seen at once (its event makes the proxy forget the sandbox).
PUBLIC_CACHE_SECONDS = 2.0
_PUBLIC_CACHE_SIZE = 4096
_REFUSAL_PAGES = {"out_of_range": pages.PORT_OUT_OF_RANGE, "agent_port": pages.PORT_OF_AGENT}


@dataclass(frozen=True, slots=True)
class PublicAccess:
    """Anyone's request to a port a member made public: no user, nothing read-only."""

    sandbox: Sandbox
    read_only: bool = False


def port_refusal(port: int, agent_port: int | None = None) -> pages.Page | None:
    """The page refusing a preview of `port` (`agent_port`: where the sandbox's own agent
    listens), or None when the port may be previewed."""
    why = preview_refusal(port, agent_port)
    return None if why is None else _REFUSAL_PAGES[why]


def upstream_of(sandbox: Sandbox, port: int, backend: Backend, pool: Pool) -> Upstream | pages.Page:
    """The way to `port` inside a running sandbox a backend runs (a local agent's ports go
    through its tunnel: proxy/relay.py), or the page saying why there is none."""
    assert sandbox.endpoint_host is not None
    assert sandbox.endpoint_port is not None
    refused = port_refusal(port, sandbox.endpoint_port)
    if refused is not None:
        return refused
    agent = Endpoint(sandbox.endpoint_host, sandbox.endpoint_port)
    found = backend.preview_endpoint(sandbox.id, agent, port)
    if found is None:
        return pages.PREVIEWS_UNAVAILABLE
    return pool.upstream(found.host, found.port)


class PublicPorts:
    """Which sandbox ports are public right now, cached for a few seconds per port."""

    def __init__(self, db: Database, seconds: float = PUBLIC_CACHE_SECONDS) -> None:
        self._db = db
        self._seconds = seconds
        self._entries: OrderedDict[tuple[str, int], tuple[float, Sandbox | None]] = OrderedDict()

    async def access(self, sandbox_id: str, port: int) -> PublicAccess | None:
        """Anyone's access to the port, when it is public."""
        key = (sandbox_id, port)
        now = trio.current_time()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self._seconds:
            await trio.lowlevel.checkpoint_if_cancelled()
            sandbox = hit[1]
        else:
            sandbox = await self._db.one(
                "preview_public_sandbox", Sandbox, sandbox_id=sandbox_id, port=port
            )
            self._entries[key] = (now, sandbox)
            self._entries.move_to_end(key)
            while len(self._entries) > _PUBLIC_CACHE_SIZE:
                self._entries.popitem(last=False)
        return None if sandbox is None else PublicAccess(sandbox)

    def forget(self, sandbox_id: str) -> None:
        """The sandbox changed (status, a port made public or private): ask again."""
        for key in [k for k in self._entries if k[0] == sandbox_id]:
            del self._entries[key]
