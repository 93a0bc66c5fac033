"""The tunnel's sending side: the writer task, direct sends, and the backlog they account for.

Frames queued in the `TunnelConnection` leave in one of two ways, always in the order queued
and a message never interleaved with another:

* direct (`send_now`, on a `DirectLink`): while the writer has nothing under way, the task that
  queued them packs them and writes the messages itself with the link's `try_send`, which
  never blocks. No task switch, no trip round the scheduler. What the kernel did not take
  (the rest of one message: the link holds it; the messages after it: `_unsent`) is left to
  the writer, which sends it before anything queued later. Nothing in a direct send awaits,
  so a caller cancelled afterwards leaves no half frame: the rest belongs to the writer;
* by the writer task (`wake`): heads, whose body and end usually follow from the same task
  in the same step (the writer takes one more round so that they share a message), anything
  queued while the writer is busy, and everything on a link without `try_send`.

`backlog` counts the Data payload bytes queued and not yet handed to the kernel, whichever way
they leave; `writing_since` is when the send under way started (a direct send that left a
rest counts from its own start), for the heartbeat's "the peer reads nothing" check.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .connection import TunnelConnection
from .frames import DEFAULT_MAX_PAYLOAD
from .links import DirectLink, MessageLink
from .messages import pack

__all__ = ["LINK_ERRORS", "TunnelWriter"]

LINK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


class TunnelWriter:
    """Sends what `conn` queues over `link`. `broken(exc)` is called when the link fails;
    `drained()` once the backlog fell below `max_backlog` after a stream found it full."""

    def __init__(
        self,
        link: MessageLink,
        conn: TunnelConnection,
        *,
        max_backlog: int,
        broken: Callable[[BaseException], None],
        drained: Callable[[], None],
    ) -> None:
        self._link = link
        self._direct = link if isinstance(link, DirectLink) else None
        self._conn = conn
        self._max_backlog = max_backlog
        self._broken = broken
        self._drained = drained
        self._lot = trio.lowlevel.ParkingLot()
        self._busy = False  # the writer took frames (or a direct send's rest) and sends them
        self._held_data: int | None = None  # Data bytes of the message the link holds a rest of
        self._unsent: list[tuple[bytes, int]] = []  # messages after it, with their Data bytes
        self.stopped = False  # the tunnel closed: nothing more is sent directly
        self.backlog = 0  # Data payload bytes queued for the link, not yet written
        self.backlog_waiting = False  # a stream found the backlog full
        self.writing_since: float | None = None  # when the send under way started
        self._holding = 0  # inside `holding` (how deep): queued frames wait for its end
        self._hold = _Holding(self)  # one for all: a generator-based one cost ~25 lines a use

    @property
    def backlog_full(self) -> bool:
        if self.backlog < self._max_backlog:
            return False
        self.backlog_waiting = True  # `drained` once it drains
        return True

    def holding(self) -> _Holding:
        """Frames queued within go out together at the end (`send_now`): one message where
        they fit, and no wake-up of the writer for a head whose body and end come with it.
        Nested, the outermost one sends."""
        return self._hold

    def wake(self) -> None:
        """Let the writer send what is queued."""
        if self._holding:  # the end of `holding` sends it
            return
        if self._conn.has_frames_to_send:  # a wake-up for nothing costs a task switch per frame
            self._lot.unpark_all()

    def send_now(self) -> None:
        """Send what is queued from the calling task if the writer has nothing under way and
        the link sends directly; else wake the writer."""
        if self._holding:  # the end of `holding` sends it
            return
        direct = self._direct
        peer = self._conn.peer_settings
        if direct is None or self._busy or self._held_data is not None or self.stopped:
            self.wake()
            return
        if peer is None:  # only our Hello goes out before the peer's: the writer sends it
            self.wake()
            return
        frames = self._conn.frames_to_send()
        if not frames:
            return
        messages = pack(frames, batch=peer.batch, limit=peer.max_frame_payload)
        try:
            for message, data in messages:
                if direct.try_send(message):  # the link holds a rest: the writer finishes
                    self._held_data = data
                    self.writing_since = trio.current_time()
                    self._unsent = list(messages)
                    self._lot.unpark_all()
                    return
                self.backlog -= data
        except LINK_ERRORS as exc:
            self._broken(exc)
            return
        self._sent()

    async def run(self) -> None:
        """The writer task, until the link fails (then `broken`) or it is cancelled."""
        try:
            while True:
                if self._held_data is not None:  # a direct send's rest goes before the rest
                    await self._send_rest()
                frames = self._conn.frames_to_send()
                if not frames:
                    await self._lot.park()
                    # Once more round the scheduler before collecting a head: the task that
                    # queued it usually queues more at once (a request's body, a response's
                    # body and end), and they then leave in one message instead of one each.
                    # Body pieces and credit leave at once: a streamed event waits for nothing.
                    if self._conn.head_queued:
                        await trio.lowlevel.checkpoint()
                    continue
                self._busy = True
                peer = self._conn.peer_settings  # None only while our Hello goes out
                batch = peer is not None and peer.batch
                limit = DEFAULT_MAX_PAYLOAD if peer is None else peer.max_frame_payload
                for message, data in pack(frames, batch=batch, limit=limit):
                    self.writing_since = trio.current_time()
                    await self._send(message)
                    self.writing_since = None
                    self.backlog -= data
                self._busy = False
                # A parked writer keeps no frame or message (up to 256 KiB) alive.
                del frames, message
                self._sent()
        except LINK_ERRORS as exc:
            self._broken(exc)
            await trio.lowlevel.checkpoint()  # the link may fail before awaiting anything

    async def _send(self, message: bytes) -> None:
        """One message: on a direct link written at once when the kernel takes it (no trip
        round the scheduler), else as the link drains."""
        if self._direct is None:
            await self._link.send_message(message)
        elif self._direct.try_send(message):
            await self._direct.flush()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def _send_rest(self) -> None:
        """What a direct send left: the rest of its message, then the messages after it."""
        assert self._direct is not None
        assert self._held_data is not None
        self._busy = True
        await self._direct.flush()  # `writing_since` runs from the direct send
        self.writing_since = None
        self.backlog -= self._held_data
        self._held_data = None
        while self._unsent:
            message, data = self._unsent[0]
            self.writing_since = trio.current_time()
            await self._send(message)
            self.writing_since = None
            self.backlog -= data
            del self._unsent[0]
        self._busy = False
        self._sent()

    def _sent(self) -> None:
        if self.backlog_waiting and self.backlog < self._max_backlog:
            self.backlog_waiting = False
            self._drained()


class _Holding:
    """`TunnelWriter.holding`'s context manager (re-entrant: the writer counts the depth)."""

    __slots__ = ("_writer",)

    def __init__(self, writer: TunnelWriter) -> None:
        self._writer = writer

    def __enter__(self) -> None:
        self._writer._holding += 1

    def __exit__(self, *exc: object) -> None:
        writer = self._writer
        writer._holding -= 1
        if not writer._holding:
            writer.send_now()
