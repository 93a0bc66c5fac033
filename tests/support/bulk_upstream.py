"""An opencode-like upstream for tunnel tests and benchmarks (trio + h11, no buffering).

Routes: `/numbers?count=N[&pad=P][&every=S]` (an SSE stream of N numbered events, each padded
by up to P bytes, S seconds apart after each tenth, then the end), `/bytes?size=N` (N bytes,
streamed), `/upload` (counts the request body and answers its size and SHA-256), `/small` (a
tiny JSON answer), `/clock?count=N&every=S` (SSE events carrying the send time), `/forever` (an
endless SSE stream that reports when its client goes away).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from tests.support.tcp import serve_on_free_port

CHUNK = 64 * 1024
BLOCK = bytes(range(256)) * (CHUNK // 256)


@dataclass
class BulkUpstream:
    """The server's state, shared with the test."""

    port: int = 0
    forever_started: trio.Event = field(default_factory=trio.Event)
    forever_closed: trio.Event = field(default_factory=trio.Event)
    # When each `/small` request's head arrived (perf_counter_ns), while a benchmark splits a
    # request's time into the way there and the way back; None: not recorded.
    arrivals: list[int] | None = None


def pattern(size: int) -> bytes:
    """The first `size` bytes `/bytes` sends (for checking a download without storing it)."""
    whole, rest = divmod(size, len(BLOCK))
    return BLOCK * whole + BLOCK[:rest]


class _Exchange:
    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self.stream, self.conn = stream, conn

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def next(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(CHUNK))
                continue
            return event  # type: ignore[return-value]

    async def head(self, status: int, content_type: str, length: int | None = None) -> None:
        headers = [("content-type", content_type), ("cache-control", "no-cache")]
        headers.append(
            ("content-length", str(length))
            if length is not None
            else ("transfer-encoding", "chunked")
        )
        await self.send(h11.Response(status_code=status, headers=headers))


async def _serve_one(up: BulkUpstream, ex: _Exchange, request: h11.Request) -> None:
    url = urlsplit(request.target.decode())
    if up.arrivals is not None and url.path == "/small":
        up.arrivals.append(time.perf_counter_ns())
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    digest, size = hashlib.sha256(), 0
    while not isinstance(event := await ex.next(), h11.EndOfMessage):
        if isinstance(event, h11.Data):
            digest.update(event.data)
            size += len(event.data)
    if url.path == "/numbers":
        await ex.head(200, "text/event-stream")
        pad = int(query.get("pad", "0"))  # events padded by 0..pad bytes, varying
        every = float(query.get("every", "0"))  # a pause after every 10th event
        for i in range(int(query.get("count", "10"))):
            padding = " " + "x" * (i * 7919 % (pad + 1)) if pad else ""
            await ex.send(h11.Data(data=f"id: {i}\ndata: {i}{padding}\n\n".encode()))
            if every and i % 10 == 9:
                await trio.sleep(every)
        await ex.send(h11.EndOfMessage())
    elif url.path == "/bytes":
        total = int(query.get("size", "0"))
        await ex.head(200, "application/octet-stream", total)
        sent = 0
        while sent < total:
            piece = BLOCK[: min(CHUNK, total - sent)]
            await ex.send(h11.Data(data=piece))
            sent += len(piece)
        await ex.send(h11.EndOfMessage())
    elif url.path in ("/upload", "/small"):
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
        await ex.head(200, "application/json", len(body))
        await ex.send(h11.Data(data=body), h11.EndOfMessage())
    elif url.path == "/clock":
        await ex.head(200, "text/event-stream")
        every = float(query.get("every", "0.01"))
        for i in range(int(query.get("count", "10"))):
            await ex.send(h11.Data(data=f"id: {i}\ndata: {time.perf_counter_ns()}\n\n".encode()))
            await trio.sleep(every)
        await ex.send(h11.EndOfMessage())
    elif url.path == "/forever":
        await ex.head(200, "text/event-stream")
        up.forever_started.set()
        try:
            while True:
                await ex.send(h11.Data(data=b": tick\n\n"))
                await trio.sleep(0.05)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            up.forever_closed.set()
            raise
    else:
        await ex.head(404, "text/plain", 9)
        await ex.send(h11.Data(data=b"not found"), h11.EndOfMessage())


async def _serve_connection(up: BulkUpstream, stream: trio.SocketStream) -> None:
    ex = _Exchange(stream, h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024))
    try:
        while isinstance(event := await ex.next(), h11.Request):
            await _serve_one(up, ex, event)
            if ex.conn.our_state is not h11.DONE or ex.conn.their_state is not h11.DONE:
                return
            ex.conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
        return
    finally:
        await stream.aclose()


async def serve_bulk(
    up: BulkUpstream, task_status: trio.TaskStatus[BulkUpstream] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on 127.0.0.1 (a free port) and serve until cancelled."""

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_connection(up, stream)

    async with trio.open_nursery() as nursery:
        up.port = await nursery.start(serve_on_free_port, handler)
        task_status.started(up)
