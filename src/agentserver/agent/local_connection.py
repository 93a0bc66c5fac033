"""One kept-alive connection from the agent to the local opencode: raw reads and writes on its
socket with as few trips round the scheduler as the waits need, and h11 for message heads."""

from __future__ import annotations

import os

import h11
import trio

READ_SIZE = 256 * 1024  # one full tunnel frame: fewer, larger frames when opencode outpaces us


def new_h11() -> h11.Connection:
    """A client-side h11 state machine, with our bound on a head."""
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)


class Connection:
    """One connection to the local opencode: h11 for heads, raw reads and writes for the rest."""

    __slots__ = ("_drained", "_sock", "h11", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = new_h11()
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

    async def next_event(self) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                await trio.lowlevel.checkpoint_if_cancelled()  # buffered: no scheduler trip
                return event
            self.h11.receive_data(await self.receive(READ_SIZE))

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
