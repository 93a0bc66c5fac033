"""A local stand-in for the Anthropic Messages API (raw h11 on loopback) that records requests."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

MODEL = "claude-sonnet-4-5"
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5")
# The endpoints the stand-in serves, after any base path: like the real API, others are 404.
_ENDPOINT = re.compile(r".*/v1/(messages|messages/count_tokens|models|models/[^/]+)")


@dataclass
class Reply:
    """What the stand-in answers: one message whose usage is the truth tests compare against."""

    text: str = "Hello from the stand-in."
    model: str | None = None  # None: echo the request's model
    input_tokens: int = 25
    output_tokens: int = 7
    cache_creation_input_tokens: int = 11
    cache_read_input_tokens: int = 13
    # Like server-tool calls: message_start reports fewer input tokens than the final delta.
    start_input_tokens: int | None = None
    status: int = 200
    error_type: str = "invalid_request_error"
    # A stream cut off (the connection closed mid-body) after this many events.
    break_after: int | None = None

    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


def message_json(
    reply: Reply, model: str = MODEL, message_id: str = "msg_standin"
) -> dict[str, Any]:
    """The non-streaming Messages API body for `reply`."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": reply.model or model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": reply.usage(),
    }


def stream_events(
    reply: Reply, model: str = MODEL, message_id: str = "msg_standin"
) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of a streamed answer for `reply`, in the order Anthropic sends them."""
    start_usage = reply.usage() | {"output_tokens": 1}
    if reply.start_input_tokens is not None:
        start_usage["input_tokens"] = reply.start_input_tokens
    message = message_json(reply, model, message_id) | {
        "content": [],
        "stop_reason": None,
        "usage": start_usage,
    }
    words = reply.text.split(" ")
    deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for piece in deltas:
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": reply.usage(),
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def model_json(model_id: str) -> dict[str, Any]:
    """One entry of the Models API."""
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id.replace("-", " ").title(),
        "created_at": "2025-09-29T00:00:00Z",
    }


def models_json() -> dict[str, Any]:
    """The Models API's list, as `GET /v1/models` answers it."""
    return {
        "data": [model_json(m) for m in MODELS],
        "has_more": False,
        "first_id": MODELS[0],
        "last_id": MODELS[-1],
    }


def encode_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def stream_bytes(reply: Reply, model: str = MODEL) -> bytes:
    return b"".join(encode_event(n, d) for n, d in stream_events(reply, model))


@dataclass
class Received:
    """One request as it reached the stand-in."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Served:
    """The usage the stand-in reported for one answer (what the proxy must record)."""

    streaming: bool
    usage: dict[str, int]


@dataclass
class AnthropicStandIn:
    """Speaks the Messages API on 127.0.0.1; `pace(i)` runs before streamed event i (i ≥ 1)."""

    reply: Reply = field(default_factory=Reply)
    received: list[Received] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)
    pace: Callable[[int], Awaitable[None]] | None = None
    port: int = 0
    # Set when a client closes its connection while a stream is still being written.
    hung_up: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(
        self, *, task_status: trio.TaskStatus[AnthropicStandIn] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while await self._exchange(conn, stream):
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                return

    async def _next(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(65536))

    async def _exchange(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        """Answer one request; True when the connection can carry another."""
        request = await self._next(conn, stream)
        if not isinstance(request, h11.Request):
            return False
        body = bytearray()
        while isinstance(event := await self._next(conn, stream), h11.Data):
            body += event.data
        received = Received(
            method=request.method.decode(),
            target=request.target.decode(),
            headers=[(k.decode().lower(), v.decode()) for k, v in request.headers],
            body=bytes(body),
        )
        self.received.append(received)
        await self._answer(conn, stream, received)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, received: Received
    ) -> None:
        try:
            request = received.json() if received.body else {}
        except ValueError:
            request = {}
        model = request.get("model", MODEL) if isinstance(request, dict) else MODEL
        reply = self.reply
        if received.path == "/healthz":  # a trivial answer, for benchmarks' baselines
            await self._send_json(conn, stream, 200, {"ok": True})
            return
        endpoint = _ENDPOINT.fullmatch(received.path)
        name = endpoint.group(1) if endpoint else ""
        if endpoint is None or (received.method == "GET") != name.startswith("models"):
            error = {"type": "error", "error": {"type": "not_found_error", "message": "no route"}}
            await self._send_json(conn, stream, 404, error)
            return
        if name.startswith("models"):
            document = models_json() if name == "models" else model_json(name.split("/")[1])
            await self._send_json(conn, stream, 200, document)
            return
        if name == "messages/count_tokens":
            await self._send_json(conn, stream, 200, {"input_tokens": reply.input_tokens})
            return
        if reply.status != 200:
            error = {
                "type": "error",
                "error": {"type": reply.error_type, "message": "stand-in error"},
            }
            await self._send_json(conn, stream, reply.status, error)
            self.served.append(Served(streaming=False, usage=dict.fromkeys(reply.usage(), 0)))
            return
        if isinstance(request, dict) and request.get("stream"):
            events = stream_events(reply, model)
            if reply.break_after is not None:
                await self._send_stream(conn, stream, events[: reply.break_after], complete=False)
                await stream.aclose()
                return
            if await self._send_stream(conn, stream, events):
                self.served.append(Served(streaming=True, usage=reply.usage()))
        else:
            await self._send_json(conn, stream, 200, message_json(reply, model))
            self.served.append(Served(streaming=False, usage=reply.usage()))

    async def _send_json(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, document: dict[str, Any]
    ) -> None:
        payload = json.dumps(document).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            ("request-id", "req_standin"),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    async def _send_stream(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        events: list[tuple[str, dict[str, Any]]],
        *,
        complete: bool = True,
    ) -> bool:
        """Write the events (and the end of the body if `complete`); False when the client hung
        up first (noted in `hung_up`)."""
        headers = [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("request-id", "req_standin"),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_hangup, conn, stream, nursery.cancel_scope)
            for index, (name, data) in enumerate(events):
                if index and self.pace is not None:
                    await self.pace(index)
                await stream.send_all(conn.send(h11.Data(data=encode_event(name, data))) or b"")
            if complete:
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            nursery.cancel_scope.cancel()
        return not self.hung_up.is_set()

    async def _watch_hangup(
        self, conn: h11.Connection, stream: trio.SocketStream, writer: trio.CancelScope
    ) -> None:
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.hung_up.set()
                writer.cancel()
                return
            conn.receive_data(data)  # the start of a next request: kept for the next cycle


async def open_anthropic(nursery: trio.Nursery, reply: Reply | None = None) -> AnthropicStandIn:
    """Start a stand-in in `nursery` and return it once it listens."""
    standin = AnthropicStandIn(reply=reply or Reply())
    started: AnthropicStandIn = await nursery.start(standin.serve)
    return started
