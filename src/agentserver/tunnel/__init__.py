"""The agent tunnel: frame codec, sans-IO stream state machine, and the trio transport.

What the rest of agentserver uses is re-exported here; the modules behind it, in import order:
`frames` (pure codec) → `messages` (pure: frames in link messages, one or a batch) →
`connection` (pure stream state machine and credit windows) →
`errors` → `stream` (`TunnelStream`, knowing its tunnel only as a `StreamTransport`) →
`links` (WebSocket / byte-stream links) → `transport` (`Tunnel`, `open_tunnel`) → `hub`.
The tunnel's own WebSocket: `handshake` (pure opening handshake) → `websocket` (the link, both
roles) → `dial` (the client's connect: TCP or TLS, then the handshake).
"""

from .connection import (
    ErrorCode,
    LocalProtocolError,
    RequestReceived,
    Role,
    Settings,
    StreamLimitReached,
)
from .errors import StreamResetError, TunnelClosed
from .frames import ProtocolError, max_message_size
from .hub import SERVER_RESTARTING, Hub
from .links import MessageLink, StreamLink, WebSocketLink
from .stream import RequestHandler, TunnelStream
from .transport import Tunnel, open_tunnel

__all__ = [
    "SERVER_RESTARTING",
    "ErrorCode",
    "Hub",
    "LocalProtocolError",
    "MessageLink",
    "ProtocolError",
    "RequestHandler",
    "RequestReceived",
    "Role",
    "Settings",
    "StreamLimitReached",
    "StreamLink",
    "StreamResetError",
    "Tunnel",
    "TunnelClosed",
    "TunnelStream",
    "WebSocketLink",
    "max_message_size",
    "open_tunnel",
]
