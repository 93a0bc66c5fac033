"""Agents' tunnels at the front door: `GET /api/tunnel/<id>` upgrades served on our own
WebSocket (tunnel/websocket.py), without hypercorn's WebSocket stream or quart's message task.

A tunnel message through hypercorn and quart cost two task switches and a signal on the way in
(hypercorn's reader, quart's queue) and as much again on the way out; here the tunnel's reader
parses frames straight from the socket. Only a narrow, well-formed request comes this way:
HTTP/1.1 `GET /api/tunnel/<id>` on the main host with exactly one Host, `Upgrade: websocket`,
`Connection: upgrade`, `Sec-WebSocket-Version: 13`, a valid key and no body
(tunnel/handshake.py). Anything else goes on to hypercorn, where the quart route
(api/agents.py) serves it. Both doors let a tunnel in through the same checks
(sandboxes/tunnel_admission.py) and refuse it with the same status and JSON error body.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

import trio

from agentserver.deps import Deps
from agentserver.errors import AgentServerError
from agentserver.http1 import FIELD, response_head
from agentserver.kinds import PREVIEW_PORTS_HEADER
from agentserver.proxy.exchange import Client
from agentserver.proxy.routing import resolve
from agentserver.proxy.subdomain import SubdomainProxy
from agentserver.sandboxes.tunnel_admission import TunnelAsk, admit
from agentserver.sandboxes.tunnel_session import TUNNEL_SETTINGS
from agentserver.tunnel import max_message_size
from agentserver.tunnel import version as tunnel_version
from agentserver.tunnel.handshake import switching_protocols, upgrade_refusal
from agentserver.tunnel.websocket import WebSocket

log = logging.getLogger(__name__)
Headers = list[tuple[bytes, bytes]]
REFUSAL_WRITE = 1.0
# The request line and header fields as agentserver/http1.py reads them.
_REQUEST_LINE = re.compile(
    rb"GET (/api/tunnel/([A-Za-z0-9_-]{1,100})(?:\?([\x21-\x7e]*))?) HTTP/1\.1"
)
_PROTOCOL = tunnel_version.HEADER.lower().encode()
_PREVIEW_PORTS = PREVIEW_PORTS_HEADER.lower().encode()


@dataclass(frozen=True, slots=True)
class TunnelUpgrade:
    """An agent's tunnel upgrade the front door serves itself."""

    sandbox_id: str
    query: bytes
    host: bytes
    headers: Headers  # lower-case names, in order, repeats kept

    def first(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def all(self, name: bytes) -> list[str]:
        return [v.decode("latin-1") for k, v in self.headers if k == name]


def parse_tunnel_upgrade(head: bytes) -> TunnelUpgrade | None:
    """The tunnel upgrade in `head` (ending with its blank line), or None for anything else."""
    lines = head[:-4].split(b"\r\n")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None or not head.endswith(b"\r\n\r\n"):
        return None
    headers: Headers = []
    for line in lines[1:]:
        field = FIELD.fullmatch(line)
        if field is None:  # obs-fold, bare CR, empty names: hypercorn answers those
            return None
        headers.append((field[1].lower(), field[2]))
    hosts = [v for n, v in headers if n == b"host"]
    if len(hosts) != 1 or not hosts[0] or upgrade_refusal(headers) is not None:
        return None
    return TunnelUpgrade(request[2].decode("ascii"), request[3] or b"", hosts[0], headers)


def ask_of(upgrade: TunnelUpgrade, peer: str) -> TunnelAsk:
    """What `admit` checks, read from the upgrade as the quart route reads its request."""
    query = parse_qs(upgrade.query.decode("latin-1"), keep_blank_values=True)
    return TunnelAsk(
        sandbox_id=upgrade.sandbox_id,
        token_in_url="token" in query,
        authorization=upgrade.first(b"authorization"),
        protocol=upgrade.first(_PROTOCOL),
        extensions=upgrade.first(b"sec-websocket-extensions"),
        preview_ports=upgrade.first(_PREVIEW_PORTS),
        peer=peer,
        forwarded=upgrade.all(b"forwarded"),
        forwarded_for=upgrade.all(b"x-forwarded-for"),
    )


def refusal(status: int, code: str, message: str, **extra: str) -> bytes:
    """A JSON error answer (as the API's `error_response`) that ends the connection."""
    body = json.dumps({"error": {"code": code, "message": message, **extra}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    return response_head(status, headers, chunked=False, close=True) + body


class TunnelDoor:
    """Serves tunnel upgrades for hosts that reach the API (the main site, as `proxy` says)."""

    def __init__(self, proxy: SubdomainProxy) -> None:
        self.deps: Deps = proxy.deps
        domain, names = proxy.settings.domain, proxy.main_names
        self.main_host: Callable[[bytes], bool] = lambda host: resolve(host, domain, names) is None

    def upgrade(self, head: bytes) -> TunnelUpgrade | None:
        """The tunnel upgrade `head` asks for, if it is one this door serves."""
        if not head.startswith(b"GET /api/tunnel/"):
            return None
        upgrade = parse_tunnel_upgrade(head)
        return upgrade if upgrade is not None and self.main_host(upgrade.host) else None

    async def serve(self, client: Client, upgrade: TunnelUpgrade) -> None:
        """Check, then 101 and the tunnel until it ends; or the refusal, and close."""
        d = self.deps
        try:
            admitted = await admit(
                ask_of(upgrade, client.peer[0]),
                db=d.db,
                draining=d.cluster.presence.draining,
                trusted=d.settings.trusted_proxies,
            )
        except AgentServerError as exc:
            extra = {"field": exc.field} if exc.field else {}
            await _answer(client, refusal(exc.status, exc.code, exc.message, **extra))
            return
        except Exception:
            log.exception("checking a tunnel request for sandbox %s failed", upgrade.sandbox_id)
            message = "internal error; the server log has details"
            await _answer(client, refusal(500, "internal", message))
            return
        key = dict(upgrade.headers)[b"sec-websocket-key"]
        await client.stream.send_all(switching_protocols(key))
        link = WebSocket(
            client.stream,
            client=False,
            max_message=max_message_size(TUNNEL_SETTINGS.max_frame_payload),
            buffered=bytes(client.buffer),
        )
        client.buffer.clear()
        try:
            await d.tunnels.serve(
                admitted.sandbox,
                admitted.token_hash,
                link,
                admitted.shared_ports,
                admitted.client_address,
            )
        except Exception:  # one tunnel's failure ends its connection, never the listener
            log.exception("the tunnel of sandbox %s failed", admitted.sandbox.id)


async def _answer(client: Client, response: bytes) -> None:
    """A refusal, then the connection ends (its caller closes the socket)."""
    with trio.move_on_after(REFUSAL_WRITE):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await client.stream.send_all(response)
            await client.stream.send_eof()
    await trio.lowlevel.checkpoint_if_cancelled()
