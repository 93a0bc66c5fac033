"""The proxy's `Upstream` for local sandboxes: each request is one stream over the agent's tunnel.

Request and response bodies stream with the tunnel's per-stream credit, so a slow browser slows
only its own stream; closing a response early resets the stream, and the agent then stops its
request to the local opencode. A relayed WebSocket is a stream with message framing.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress

import trio

from agentserver.errors import SandboxUnreachable
from agentserver.framing import exactly
from agentserver.http_headers import FRAMING
from agentserver.kinds import NOT_LISTENING, NOT_SHARED, PREVIEW_REFUSED_HEADER
from agentserver.proxy.headers import Headers, header
from agentserver.proxy.http import HELD, REFUSED
from agentserver.proxy.upstream import (
    HEADER_TIMEOUT,
    Answer,
    NotListening,
    UpstreamResponse,
    UpstreamTimeout,
)
from agentserver.proxy.upstream_socket import UpstreamClosed
from agentserver.tunnel import StreamLimitReached, Tunnel, TunnelClosed, TunnelStream

# Agents see the host they serve on themselves; the browser's Host means nothing to them.
# Framing and Connection are the agent's to set for the request it writes (agent/forward.py);
# a known length travels as our own Content-Length, which the agent checks against the bytes.
_DROPPED = FRAMING | {b"host", b"connection"}
_BROKEN = (TunnelClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class TunnelBusy(SandboxUnreachable):
    """The agent's tunnel carries as many requests as it may at once (503; the tunnel stays up)."""

    status = 503
    code = "sandbox_busy"


class TunnelMoving(SandboxUnreachable):
    """The tunnel was sent away (its replica drains) before the request was opened on it:
    nothing of the request was read or sent, so it can go where the tunnel moved."""


class PortNotShared(SandboxUnreachable):
    """The local agent refused a preview of a port its user did not share (403)."""

    status = 403
    code = "preview_port_not_allowed"


_REFUSALS: dict[bytes, type[SandboxUnreachable]] = {
    NOT_SHARED.encode(): PortNotShared,
    NOT_LISTENING.encode(): NotListening,
}


def _text_headers(headers: Headers, length: int | None = 0) -> list[tuple[str, str]]:
    out = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers if n not in _DROPPED]
    if length:
        out.append(("content-length", str(length)))
    return out


def _byte_headers(headers: Sequence[tuple[str, str]]) -> Headers:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]


async def _send_body(stream: TunnelStream, body: AsyncIterable[bytes], length: int | None) -> None:
    """The body, then the end of our direction. A body that does not match `length` raises
    BodyMismatch (`exactly`) and the stream is reset, so the agent drops the request."""
    async for chunk in exactly(body, length):
        if chunk and not stream.send_nowait(chunk):  # reading it was this chunk's checkpoint
            await stream.send_all(chunk)
    await stream.send_eof()


class _Body:
    """The response body as it arrives over the stream; with a direct writer (`direct`), the
    pieces that arrive while the proxy waits for the next go to the browser from the tunnel's
    reader, and this yields only what that writer refused (and an empty piece when the
    writer left part of one to send)."""

    def __init__(self, stream: TunnelStream) -> None:
        self._stream = stream
        self._write: Callable[[bytes], int] | None = None

    def direct(self, write: Callable[[bytes], int]) -> None:
        self._write = write
        self._stream.deliver_directly(self._offer)

    def _offer(self, piece: bytes) -> bool:
        assert self._write is not None
        written = self._write(piece)
        if written == HELD:  # the proxy's task sends the rest, with an empty piece
            self._stream.wake_receiver()
        return written != REFUSED

    async def aclose(self) -> None:
        """End the stream (reset, unless it finished): nothing to wait for."""
        self._stream.close()
        await trio.lowlevel.checkpoint_if_cancelled()

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._stream.receive_or_wake()
        except _BROKEN:
            raise SandboxUnreachable("the tunnel to the local agent broke") from None
        if chunk is None:
            return b""
        if not chunk:
            raise StopAsyncIteration
        return chunk


class TunnelSocket:
    """A WebSocket relayed over one tunnel stream (satisfies proxy.upstream.UpstreamSocket)."""

    def __init__(self, stream: TunnelStream, subprotocol: str | None) -> None:
        self._stream = stream
        self._subprotocol = subprotocol

    @property
    def subprotocol(self) -> str | None:
        return self._subprotocol

    async def get_message(self) -> str | bytes:
        try:
            return await self._stream.receive_message()
        except trio.EndOfChannel:
            code = self._stream.close_code or 1005
            raise UpstreamClosed(code, self._stream.close_reason or None) from None
        except _BROKEN:
            raise UpstreamClosed(1006, "the tunnel to the local agent broke") from None

    async def send_message(self, message: str | bytes) -> None:
        try:
            await self._stream.send_message(message)
        except _BROKEN:
            raise UpstreamClosed(1006, "the tunnel to the local agent broke") from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        with suppress(*_BROKEN):
            await self._stream.send_close(code, reason or "")
        await self._stream.aclose()


class TunnelUpstream:
    """A local sandbox's agent, reached through its live tunnel; with `port`, a preview of that
    port on the agent's machine (the agent refuses ports its user did not share)."""

    def __init__(
        self, tunnel: Tunnel, header_timeout: float = HEADER_TIMEOUT, port: int | None = None
    ) -> None:
        self._tunnel = tunnel
        self._header_timeout = header_timeout
        self._port = port

    async def _open(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        *,
        body: bool,
        websocket: bool = False,
        subprotocols: Sequence[str] = (),
    ) -> TunnelStream:
        try:
            return await self._tunnel.open_request(
                method,
                target,
                headers,
                body=body,
                websocket=websocket,
                subprotocols=subprotocols,
                port=self._port,
            )
        except _BROKEN:
            if self._tunnel.going_away:
                raise TunnelMoving("the local agent's tunnel is moving") from None
            raise SandboxUnreachable("the local agent is not connected") from None
        except StreamLimitReached as exc:
            raise TunnelBusy(f"the local agent's tunnel is full: {exc}") from None

    async def _head(self, stream: TunnelStream) -> tuple[int, Headers]:
        try:
            with trio.move_on_after(self._header_timeout) as waited:
                status, headers = await stream.receive_response_head()
        except _BROKEN:
            raise SandboxUnreachable("the tunnel to the local agent broke") from None
        if waited.cancelled_caught:
            raise UpstreamTimeout("the local agent did not answer in time")
        response = _byte_headers(headers)
        if self._port is not None:  # the agent's own refusal of a preview: our page says why
            refused = _REFUSALS.get(header(response, PREVIEW_REFUSED_HEADER.encode()) or b"")
            if refused is not None:
                raise refused(f"the local agent refused port {self._port}")
        return status, response

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: AsyncIterable[bytes],
        *,
        length: int | None,
        answer: Answer | None = None,
    ) -> UpstreamResponse:
        """Send the head and the streamed body, then wait for the response head. A response
        that arrives whole (head, body and end in one message, as a small one does) is
        offered to `answer` by the tunnel's reader, before this task runs again."""
        has_body = length != 0
        stream = await self._open(
            method.decode("latin-1"),
            target.decode("latin-1"),
            _text_headers(headers, length),
            body=has_body,
        )
        if answer is not None and self._port is None:  # a preview's refusal needs our page
            offer = answer
            stream.answer_whole(lambda status, text, data: offer(status, _byte_headers(text), data))
        ok = False
        try:
            try:
                if has_body:
                    await _send_body(stream, body, length)
            except _BROKEN:
                pass  # the agent may have answered early (e.g. 413) and dropped the rest
            status, response_headers = await self._head(stream)
            ok = True
            body = _Body(stream)
            return UpstreamResponse(status, response_headers, body, body.aclose, direct=body.direct)
        finally:
            if not ok:
                await stream.aclose()

    @asynccontextmanager
    async def websocket(
        self, target: str, headers: Headers, subprotocols: Sequence[str]
    ) -> AsyncIterator[TunnelSocket]:
        stream = await self._open(
            "GET",
            target,
            _text_headers(headers),
            body=True,
            websocket=True,
            subprotocols=subprotocols,
        )
        try:
            status, response_headers = await self._head(stream)
            if status != 101:
                raise SandboxUnreachable(f"the local agent refused the WebSocket ({status})")
            chosen = next(
                (
                    v.decode("latin-1")
                    for n, v in response_headers
                    if n == b"sec-websocket-protocol"
                ),
                None,
            )
            yield TunnelSocket(stream, chosen)
        finally:
            await stream.aclose()
