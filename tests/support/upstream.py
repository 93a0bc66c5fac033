"""A recording upstream for proxy tests: a small trio + h11 (+ wsproto) server.

It records every request's headers and serves what the proxy tests need: HTML, JSON, an echo,
a step-by-step SSE stream the test drives, a large body, an endless stream that reports when
its client goes away, and a WebSocket echo.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import parse_qs, urlsplit

import h11
import trio
import wsproto
import wsproto.events as ws

from tests.support.tcp import serve_on_free_port

CHUNK = 256 * 1024
HTML = (
    b"<!doctype html><html><head><title>upstream</title></head>"
    b"<body>hello from the agent</body></html>"
)


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]


@dataclass
class RecordingUpstream:
    """The server's state, shared with the test."""

    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    websockets: list[Seen] = field(default_factory=list)
    # The test sends event payloads here; /sse writes each one as it arrives.
    sse_send: trio.MemorySendChannel[str] | None = None
    sse_receive: trio.MemoryReceiveChannel[str] | None = None
    # Set when a client of /forever goes away.
    stream_closed: trio.Event = field(default_factory=trio.Event)
    stream_started: trio.Event = field(default_factory=trio.Event)
    # When True the server drops every connection after its response, without saying so.
    drop_after_response: bool = False
    connections: int = 0
    # Close codes the WebSocket echo received from its clients, and an event per close.
    ws_close_codes: list[int] = field(default_factory=list)
    ws_closed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.sse_send, self.sse_receive = trio.open_memory_channel[str](0)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if urlsplit(r.target).path == path]


async def _send(stream: trio.SocketStream, conn: h11.Connection, *events: h11.Event) -> None:
    await stream.send_all(b"".join(conn.send(e) or b"" for e in events))


async def _next(stream: trio.SocketStream, conn: h11.Connection) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(CHUNK))
            continue
        return event  # type: ignore[return-value]


def patterned(size: int, seed: int) -> bytes:
    """The body `/big?size=…&seed=…` sends."""
    return random.Random(seed).randbytes(size)


def _response(status: int, content_type: str, length: int | None = None) -> h11.Response:
    headers = [("content-type", content_type)]
    headers.append(
        ("content-length", str(length)) if length is not None else ("transfer-encoding", "chunked")
    )
    return h11.Response(status_code=status, headers=headers)


async def _serve_http(
    up: RecordingUpstream, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request
) -> None:
    seen = Seen(
        request.method.decode(),
        request.target.decode(),
        [(n.decode().lower(), v.decode("latin-1")) for n, v in request.headers],
    )
    while not isinstance(event := await _next(stream, conn), h11.EndOfMessage):
        if isinstance(event, h11.Data):
            seen.body += event.data
    up.requests.append(seen)
    url = urlsplit(seen.target)
    query = parse_qs(url.query)
    if url.path == "/" and seen.method == "HEAD":
        head = _response(200, "text/html; charset=utf-8", len(HTML))
        await _send(stream, conn, head, h11.EndOfMessage())
    elif url.path == "/":
        await _send(
            stream,
            conn,
            _response(200, "text/html; charset=utf-8", len(HTML)),
            h11.Data(data=HTML),
            h11.EndOfMessage(),
        )
    elif url.path in ("/json", "/session"):
        body = json.dumps({"ok": True, "path": url.path}).encode()
        await _send(
            stream,
            conn,
            _response(200, "application/json", len(body)),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
    elif url.path == "/echo":
        await _send(
            stream,
            conn,
            _response(200, "application/octet-stream", len(seen.body)),
            h11.Data(data=seen.body),
            h11.EndOfMessage(),
        )
    elif url.path == "/cookie":
        response = h11.Response(
            status_code=200,
            headers=[
                ("content-length", "0"),
                ("set-cookie", "agentserver_sandbox=evil; Path=/"),
                ("set-cookie", "theme=dark; Domain=localhost; Path=/"),
            ],
        )
        await _send(stream, conn, response, h11.EndOfMessage())
    elif url.path == "/sse":
        await _send(stream, conn, _response(200, "text/event-stream"))
        assert up.sse_receive is not None
        async for payload in up.sse_receive:
            if payload == "":
                break
            line = f"data: {json.dumps({'t': time.monotonic_ns(), 'payload': payload})}\n\n"
            await _send(stream, conn, h11.Data(data=line.encode()))
        await _send(stream, conn, h11.EndOfMessage())
    elif url.path == "/big":
        size = int(query.get("size", ["0"])[0])
        await _send(stream, conn, _response(200, "application/octet-stream", size))
        seed = query.get("seed")
        # With a seed, bytes anyone can recompute (`patterned`), so order and content are checked.
        block = patterned(size, int(seed[0])) if seed else b"x" * CHUNK
        sent = 0
        while sent < size:
            piece = block[sent : sent + CHUNK] if seed else block[: min(CHUNK, size - sent)]
            await _send(stream, conn, h11.Data(data=piece))
            sent += len(piece)
        await _send(stream, conn, h11.EndOfMessage())
    elif url.path == "/forever":
        await _send(stream, conn, _response(200, "text/event-stream"))
        up.stream_started.set()
        try:
            while True:
                await _send(stream, conn, h11.Data(data=b": tick\n\n"))
                await trio.sleep(0.05)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            up.stream_closed.set()
            raise
    else:
        await _send(
            stream,
            conn,
            _response(404, "text/plain", 9),
            h11.Data(data=b"not found"),
            h11.EndOfMessage(),
        )


async def _serve_websocket(up: RecordingUpstream, stream: trio.SocketStream, data: bytes) -> None:
    connection = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    connection.receive_data(data)
    while True:
        for event in connection.events():
            if isinstance(event, ws.Request):
                up.websockets.append(
                    Seen(
                        "GET",
                        event.target,
                        [(n.decode().lower(), v.decode("latin-1")) for n, v in event.extra_headers],
                    )
                )
                chosen = event.subprotocols[0] if event.subprotocols else None
                await stream.send_all(connection.send(ws.AcceptConnection(subprotocol=chosen)))
            elif isinstance(event, ws.TextMessage):
                if event.data == "close-me":
                    await stream.send_all(
                        connection.send(ws.CloseConnection(code=4001, reason="bye"))
                    )
                else:
                    await stream.send_all(connection.send(ws.Message(data="echo:" + event.data)))
            elif isinstance(event, ws.BytesMessage):
                await stream.send_all(connection.send(ws.Message(data=bytes(event.data))))
            elif isinstance(event, ws.CloseConnection):
                up.ws_close_codes.append(event.code)
                up.ws_closed.set()
                up.ws_closed = trio.Event()
                if connection.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                    await stream.send_all(connection.send(event.response()))
                return
            elif isinstance(event, ws.Ping):
                await stream.send_all(connection.send(event.response()))
        data = await stream.receive_some(CHUNK)
        if not data:
            return
        connection.receive_data(data)


async def _serve_connection(up: RecordingUpstream, stream: trio.SocketStream) -> None:
    up.connections += 1
    conn = h11.Connection(h11.SERVER)
    try:
        data = await stream.receive_some(CHUNK)
        if b"upgrade: websocket" in data.lower():
            await _serve_websocket(up, stream, data)
            return
        conn.receive_data(data)
        while isinstance(event := await _next(stream, conn), h11.Request):
            await _serve_http(up, stream, conn, event)
            if up.drop_after_response or conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
        return
    finally:
        await stream.aclose()


async def serve_upstream(
    up: RecordingUpstream,
    task_status: trio.TaskStatus[RecordingUpstream] = trio.TASK_STATUS_IGNORED,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> None:
    """Listen on `host` (127.0.0.1) at `port` (a free one) and serve until cancelled."""

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_connection(up, stream)

    async with trio.open_nursery() as nursery:
        up.port = await nursery.start(partial(serve_on_free_port, handler, host=host, port=port))
        task_status.started(up)
