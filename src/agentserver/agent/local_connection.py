"""One kept-alive connection from the agent to the local opencode: raw reads and writes on its
socket with as few trips round the scheduler as the waits need, and response heads read with
the pure `agentserver.http1` parser."""

from __future__ import annotations

import os

import trio

from agentserver.http1 import (
    MAX_HEAD,
    ProtocolError,
    ResponseHead,
    has_bare_lf,
    head_end,
    parse_response_head,
)

READ_SIZE = 256 * 1024  # one full tunnel frame: fewer, larger frames when opencode outpaces us


class NoAnswer(Exception):
    """The connection ended before a response head."""


class Connection:
    """One connection to the local opencode: raw reads and writes, heads parsed by http1."""

    __slots__ = ("_drained", "_sock", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        # A plain socket is read with os.read: trio's receive_some takes a trip round the
        # scheduler after every read that succeeds, a wake-up of the whole agent per piece.
        # (Its number is asked each time: once closed, the number may be another socket's.)
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        # The last read found nothing, or less than it asked for: the next one waits first.
        self._drained = False

    def readable(self) -> bool:
        """True when an idle connection has something to read: the peer's close, most likely."""
        sock = getattr(self.stream, "socket", None)
        if sock is None:  # TLS: the transport stream's socket
            sock = getattr(getattr(self.stream, "transport_stream", None), "socket", None)
        return sock is None or bool(sock.is_readable())

    async def receive_head(self, method: bytes) -> tuple[ResponseHead, bytes]:
        """The final response head to a `method` request, and the bytes read after it (the
        body's first ones). Informational (1xx) heads before it are skipped; a 101 (a switch
        nobody asked for), a malformed head, a line ended by LF alone or a head of more than
        `http1.MAX_HEAD` bytes raise `ProtocolError`, a close before the head `NoAnswer`."""
        data = b""
        checked = 0  # bytes of `data` already searched for the blank line and bare LFs
        while True:
            end = head_end(data, checked)
            if end < 0:
                if has_bare_lf(data, len(data), checked):
                    raise ProtocolError("a line of the response head ends with LF alone")
                if len(data) > MAX_HEAD:
                    raise ProtocolError(f"a response head of more than {MAX_HEAD} bytes")
                checked = len(data)
                more = await self.receive(READ_SIZE)
                if not more:
                    raise NoAnswer("the connection closed before an answer")
                data += more
                continue
            if end > MAX_HEAD:
                raise ProtocolError(f"a response head of more than {MAX_HEAD} bytes")
            if has_bare_lf(data, end, checked):
                raise ProtocolError("a line of the response head ends with LF alone")
            head = parse_response_head(data[:end], method)
            data, checked = data[end:], 0
            if head.status >= 200:
                await trio.lowlevel.checkpoint_if_cancelled()  # no wait: no scheduler trip
                return head, data
            if head.status == 101:
                raise ProtocolError("a switch of protocols (101) nobody asked for")

    async def receive(self, size: int) -> bytes:
        """The next bytes, up to `size` (b"": the peer closed): what is there now, else the
        first to arrive."""
        if self._sock is None:
            return bytes(await self.stream.receive_some(size))
        if self._drained:
            await trio.lowlevel.wait_readable(self._sock)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = os.read(self._sock.fileno(), size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
                continue
            self._drained = 0 < len(data) < size  # it took all there was: the next one waits
            return data

    async def send(self, data: bytes) -> None:
        """All of `data`: on a plain socket written at once when the kernel takes it (nearly
        always), else as the socket drains, with no trip round the scheduler after a write."""
        if self._sock is None:
            await self.stream.send_all(data)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._sock.fileno(), view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)

    async def receive_now(self, size: int) -> bytes | None:
        """What is there to read now, up to `size` (b"": the peer closed); None: nothing yet."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._sock is None:
            return bytes(await self.stream.receive_some(size)) if self.readable() else None
        try:
            data = os.read(self._sock.fileno(), size)
        except BlockingIOError:
            self._drained = True
            return None
        self._drained = False
        return data

    def close(self) -> None:
        """Close at once, without awaiting (also from a cancelled task)."""
        sock = getattr(self.stream, "socket", None) or getattr(
            getattr(self.stream, "transport_stream", None), "socket", None
        )
        if sock is not None:
            sock.close()
