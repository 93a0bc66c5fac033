"""The tunnel's sans-IO state machine: stream states, credit windows, and events for one side.

`TunnelConnection` takes frames in (`receive_frame`) and returns events; the methods called by the
application queue frames, collected with `frames_to_send`. No I/O, no clock.

Stream ids: either side may open streams (in practice the server opens one per proxied request).
The server uses odd ids, the client (the agent) even ids, each strictly increasing, so the two
never collide and an id that is lower than the last one seen is known to be finished.

Each stream has two directions ("halves"): ours (send) and the peer's (receive). A half moves
through `TRANSITIONS` below: the head (`RequestOpen` from the opener, `ResponseHead` from the
other side) opens it, `Data` flows, `End` finishes it. `Reset` aborts both halves at once. A stream
is forgotten once both halves have ended or it was reset.

The rule for peer mistakes:
* anything that breaks the id bookkeeping (a frame for an id never opened, a reused or
  out-of-order id, the wrong parity, anything before `Hello`) raises `ProtocolError`: the tunnel
  cannot be trusted and must close;
* a frame for a stream already finished is ignored (it crossed our `End`/`Reset` on the wire);
* anything else illegal on one stream (data after end, a second head, a window overrun) resets
  only that stream: a `Reset` goes out, the application gets `StreamReset(remote=False)`.
Misuse by our own application raises `LocalProtocolError` and changes nothing.
Flow control: the peer's `Hello.initial_window` is how many Data payload bytes we may send on a
stream before it grants more with `Window`. We grant credit as the application *consumes* data
(`acknowledge`), in batches of half a window, so the network reader never blocks and a slow
consumer only slows its own stream. (Half, not less: each Window frame costs both ends as much as
a Data frame, and half a window still leaves the sender the other half to go on with.)

Bounds (what a peer can make us hold, whatever it does):
* receive: every stream starts with our announced `initial_window`; a stream's window then grows
  (an extra `Window` grant) up to `stream_window` only while the windows of all streams together
  stay within `receive_budget`. So the bytes the peer may have in flight, and so the bytes
  buffered for slow readers, never exceed `receive_budget` + `initial_window` per open stream;
* streams: at most `max_streams` open streams opened by each side (announced in our Hello; we
  open no more than the peer announced either); a peer's stream beyond that is refused (`Reset`
  "refused"), ours raises `StreamLimitReached`; the tunnel stays up;
* control frames: at most one `Pong` waits in the outbox (a newer ping replaces its opaque), and
  when more than `max_queued_control` frames other than Data wait after a peer's frame (a peer
  that makes us answer but does not read the answers), that is a `ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from .frames import (
    DEFAULT_MAX_PAYLOAD,
    MAX_STREAM_ID,
    MAX_WINDOW,
    VERSION,
    Data,
    End,
    Frame,
    GoAway,
    Headers,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    RequestOpen,
    Reset,
    ResponseHead,
    Window,
    check_head,
)


class Half(Enum):
    """The state of one direction of a stream."""

    IDLE = "idle"  # its head has not been sent yet
    OPEN = "open"  # head sent; data may flow
    ENDED = "ended"  # End sent: this direction is finished

    # Members are singletons compared by identity: hashed the same way, in C (Enum's own
    # __hash__ is Python, and every frame looks up a (Half, Act) pair in TRANSITIONS).
    __hash__ = object.__hash__


class Act(Enum):  # what a frame does to a half
    HEAD = "head"
    DATA = "data"
    END = "end"

    __hash__ = object.__hash__  # as Half's


# The whole per-direction state machine. Anything not listed is illegal; Reset is legal anywhere.
TRANSITIONS: Final[dict[tuple[Half, Act], Half]] = {
    (Half.IDLE, Act.HEAD): Half.OPEN,
    (Half.OPEN, Act.DATA): Half.OPEN,
    (Half.OPEN, Act.END): Half.ENDED,
}


class Role(Enum):
    SERVER, CLIENT = "server", "client"  # the client is the agent


class ErrorCode(StrEnum):
    """Reset and GoAway codes used by this implementation (peers may send others)."""

    CANCEL = "cancel"
    REFUSED = "refused"
    PROTOCOL = "protocol"
    FLOW_CONTROL = "flow_control"
    INTERNAL = "internal"
    NORMAL = "normal"
    TIMEOUT = "timeout"  # we waited too long for the peer's credit


DEFAULT_WINDOW: Final = 256 * 1024
DEFAULT_PING_INTERVAL: Final = 20.0


DEFAULT_MAX_STREAMS: Final = 100
DEFAULT_MAX_QUEUED_CONTROL: Final = 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """What one side announces in its Hello (the first four: limits for what it receives, its
    ping cadence, how many streams it takes), and local bounds (see the module's "Bounds").

    `stream_window` 0 means `initial_window` (no growth); `receive_budget` 0 means no budget
    beyond `max_streams` x `stream_window`.
    """

    max_frame_payload: int = DEFAULT_MAX_PAYLOAD
    initial_window: int = DEFAULT_WINDOW
    ping_interval: float = DEFAULT_PING_INTERVAL
    max_streams: int = DEFAULT_MAX_STREAMS
    stream_window: int = 0
    receive_budget: int = 0
    max_queued_control: int = DEFAULT_MAX_QUEUED_CONTROL
    batch: bool = True  # takes several frames in one message (announced in the Hello)


class LocalProtocolError(Exception):
    """Our own application asked for something the protocol forbids."""


class StreamLimitReached(LocalProtocolError):
    """`max_streams` of our streams are open: no new one until one finishes."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class HelloReceived:
    settings: Settings


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    method: str
    target: str
    headers: Headers
    body: bool
    websocket: bool
    subprotocols: tuple[str, ...]
    port: int | None = None  # a preview's port (frames.RequestOpen)


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    stream_id: int
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    text: bool = False
    more: bool = False


@dataclass(frozen=True, slots=True)
class StreamEnded:
    stream_id: int
    code: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    code: str
    message: str
    remote: bool  # False: we reset it because the peer broke the stream's rules


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    opaque: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    opaque: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    code: str
    message: str


Event = (
    HelloReceived
    | RequestReceived
    | ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | PingReceived
    | PongReceived
    | GoAwayReceived
)


@dataclass(slots=True)
class _Stream:
    stream_id: int
    local: bool  # we opened it
    send: Half = Half.IDLE
    recv: Half = Half.IDLE
    send_credit: int = 0  # payload bytes we may still send
    recv_allowed: int = 0  # payload bytes the peer may still send
    recv_unacked: int = 0  # consumed by the application, not yet granted back
    recv_window: int = 0  # recv_allowed + unread + recv_unacked: what the peer may have sent
    websocket: bool = False  # a relayed WebSocket: Data frames are message boundaries


class TunnelConnection:
    """One side of a tunnel, without I/O. Queues our Hello on creation."""

    def __init__(self, role: Role, settings: Settings | None = None) -> None:
        self.role = role
        self.settings = settings or Settings()
        self.peer_settings: Settings | None = None
        self.peer_going_away = False
        self.going_away = False
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if role is Role.SERVER else 2
        self._peer_parity = 0 if role is Role.SERVER else 1
        self._last_peer_id = 0
        self._stream_window = max(self.settings.initial_window, self.settings.stream_window)
        self._budget = self.settings.receive_budget or (
            self.settings.max_streams * self._stream_window
        )
        self._windows = 0  # the recv_window of every open stream, added up
        self._open_counts = {True: 0, False: 0}  # open streams opened by us (True) / the peer
        self._pong_at: int | None = None  # index of the Pong waiting in the outbox, if any
        self._control_queued = 0  # frames other than Data in the outbox
        self._joinable: Data | None = None  # the outbox's last frame, if body bytes may join it
        self._head_queued = False  # a request or response head waits in the outbox
        self._outbox: list[Frame] = [
            Hello(
                VERSION,
                self.settings.max_frame_payload,
                self.settings.initial_window,
                self.settings.ping_interval,
                self.settings.max_streams,
                self.settings.batch,
            )
        ]

    def frames_to_send(self) -> list[Frame]:
        """Every frame queued since the last call, in order."""
        frames, self._outbox = self._outbox, []
        self._joinable = None  # taken: later bytes start a new frame (and it is not kept alive)
        self._pong_at, self._control_queued = None, 0
        self._head_queued = False
        return frames

    @property
    def has_frames_to_send(self) -> bool:  # lets the transport skip waking an idle writer
        return bool(self._outbox)

    @property
    def head_queued(self) -> bool:
        """Whether a request or response head waits to be sent: its body and end usually
        follow from the same task at once, and may then share its message."""
        return self._head_queued

    def is_open(self, stream_id: int) -> bool:
        """Whether the stream is still tracked (neither fully ended nor reset)."""
        return stream_id in self._streams

    def half_states(self, stream_id: int) -> tuple[Half, Half] | None:  # None once finished
        stream = self._streams.get(stream_id)
        return None if stream is None else (stream.send, stream.recv)

    @property
    def send_limit(self) -> int:
        """The largest Data payload the peer accepts (its Hello's limit)."""
        assert self.peer_settings is not None
        return self.peer_settings.max_frame_payload

    def send_capacity(self, stream_id: int) -> int:
        """How many payload bytes one `send_data` call may carry right now."""
        stream = self._live(stream_id)
        assert self.peer_settings is not None  # a live stream implies the Hello exchange
        return min(stream.send_credit, self.peer_settings.max_frame_payload)

    # ------------------------------------------------------------ our actions

    def open_request(
        self,
        method: str,
        target: str,
        headers: Headers = (),
        *,
        body: bool = True,
        websocket: bool = False,
        subprotocols: tuple[str, ...] = (),
        port: int | None = None,
    ) -> int:
        """Open a stream with a request head; returns its id. `body=False` ends our half too;
        `port`: a preview's port on the peer's machine."""
        if self.peer_settings is None:
            raise LocalProtocolError("cannot open a stream before the peer's Hello")
        if self.peer_going_away or self.going_away:
            raise LocalProtocolError("the tunnel is going away; no new streams")
        limit = min(self.settings.max_streams, self.peer_settings.max_streams)
        if self._open_counts[True] >= limit:
            raise StreamLimitReached(f"{limit} streams are open already")
        frame = RequestOpen(
            self._next_id, method, target, headers, body, websocket, subprotocols, port
        )
        self._check_head(frame)
        stream = self._new_stream(frame.stream_id, local=True, websocket=websocket)
        self._next_id += 2
        self._local_step(stream, Act.HEAD, frame)
        self._grow(stream)
        if not body:
            self._local_step(stream, Act.END, None)
        return stream.stream_id

    def send_response(self, stream_id: int, status: int, headers: Headers = ()) -> None:
        """Send the response head on a stream the peer opened."""
        stream = self._live(stream_id)
        if stream.local:
            raise LocalProtocolError("only the side that did not open a stream sends its response")
        frame = ResponseHead(stream_id, status, headers)
        self._check_head(frame)
        self._local_step(stream, Act.HEAD, frame)

    def send_data(
        self, stream_id: int, data: bytes, *, text: bool = False, more: bool = False
    ) -> None:
        """Send `data` (at most `send_capacity(stream_id)` bytes) in a Data frame.

        Body bytes (not a WebSocket stream's) join the stream's Data frame still waiting at the
        end of the outbox, up to the peer's frame limit: when the writer falls behind, fewer and
        larger frames go out, and a writer that keeps up still sends every piece at once.
        """
        stream = self._live(stream_id)
        if len(data) > (capacity := self.send_capacity(stream_id)):
            raise LocalProtocolError(f"{len(data)} bytes exceed the capacity of {capacity}")
        tail = self._joinable
        if (
            tail is not None
            and tail.stream_id == stream_id
            and self._outbox
            and self._outbox[-1] is tail
            and len(tail.payload) + len(data) <= self.send_limit
        ):
            self._joinable = self._outbox[-1] = Data(stream_id, tail.payload + data)
        else:
            frame = Data(stream_id, data, text, more)
            self._local_step(stream, Act.DATA, frame)
            self._joinable = None if (stream.websocket or text or more) else frame
        stream.send_credit -= len(data)

    def end_stream(self, stream_id: int, *, code: int | None = None, reason: str = "") -> None:
        """Finish our direction of the stream (a WebSocket close carries `code` and `reason`)."""
        stream = self._live(stream_id)
        if code is not None and not 1000 <= code <= 4999:
            raise LocalProtocolError(f"close code {code} is not in [1000, 4999]")
        self._local_step(stream, Act.END, End(stream_id, code, reason))

    def reset_stream(self, stream_id: int, code: str = ErrorCode.CANCEL, message: str = "") -> None:
        """Abort the stream in both directions. A no-op once it is finished."""
        if not code:
            raise LocalProtocolError("a reset needs a code")
        if self._drop(stream_id):
            self._queue(Reset(stream_id, code, message))

    def acknowledge(self, stream_id: int, consumed: int) -> None:
        """The application consumed `consumed` received bytes: grant that much credit back."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.recv is not Half.OPEN:
            return  # nothing more will arrive; no credit needed
        outstanding = stream.recv_window - stream.recv_allowed - stream.recv_unacked
        if not 0 <= consumed <= outstanding:
            raise LocalProtocolError(f"acknowledged {consumed} bytes but {outstanding} are unread")
        stream.recv_unacked += consumed
        if stream.recv_unacked >= max(1, stream.recv_window // 2):
            self._queue(Window(stream_id, stream.recv_unacked))
            stream.recv_allowed += stream.recv_unacked
            stream.recv_unacked = 0
            self._grow(stream)  # budget freed by finished streams goes to those still reading

    def ping(self, opaque: int) -> None:  # the peer answers with a Pong(opaque)
        self._queue(Ping(opaque))

    def go_away(self, code: str = ErrorCode.NORMAL, message: str = "") -> None:
        """Tell the peer we accept and open no new streams; existing ones may finish."""
        if not self.going_away:
            self.going_away = True
            self._queue(GoAway(code, message))

    # ------------------------------------------------------------ peer frames

    def receive_frame(self, frame: Frame) -> list[Event]:
        """Apply one frame from the peer; returns what the application should act on."""
        events = self._receive(frame)
        if self._control_queued > self.settings.max_queued_control:
            raise ProtocolError(
                f"{self._control_queued} control frames wait to be sent: the peer makes us answer"
                " faster than it reads"
            )
        return events

    def _receive(self, frame: Frame) -> list[Event]:
        if self.peer_settings is None:
            if type(frame) is not Hello:
                raise ProtocolError(f"expected hello, got {type(frame).__name__}")
            return self._on_hello(frame)
        match frame:
            case Data():
                return self._on_data(frame)
            case Window():
                return self._on_window(frame)
            case RequestOpen():
                return self._on_request(frame)
            case ResponseHead():
                return self._on_response(frame)
            case End():
                return self._on_end(frame)
            case Reset():
                if not self._drop(frame.stream_id):
                    self._known_finished(frame.stream_id)
                    return []
                return [StreamReset(frame.stream_id, frame.code, frame.message, remote=True)]
            case Ping():
                self._answer_ping(frame.opaque)
                return [PingReceived(frame.opaque)]
            case Pong():
                return [PongReceived(frame.opaque)]
            case GoAway():
                self.peer_going_away = True
                return [GoAwayReceived(frame.code, frame.message)]
            case Hello():
                raise ProtocolError("second hello")

    def _on_hello(self, frame: Hello) -> list[Event]:
        if frame.version != VERSION:
            raise ProtocolError(f"peer speaks tunnel version {frame.version}, we speak {VERSION}")
        self.peer_settings = Settings(
            frame.max_frame_payload,
            frame.initial_window,
            frame.ping_interval,
            frame.max_streams or MAX_STREAM_ID,  # a peer that does not say has no cap we know
            batch=frame.batch,  # an older peer does not say: one frame per message
        )
        return [HelloReceived(self.peer_settings)]

    def _on_request(self, frame: RequestOpen) -> list[Event]:
        stream_id = frame.stream_id
        if stream_id % 2 != self._peer_parity or stream_id <= self._last_peer_id:
            raise ProtocolError(f"stream id {stream_id} is reused, out of order or not the peer's")
        self._last_peer_id = stream_id
        if self.going_away:
            self._queue(Reset(stream_id, ErrorCode.REFUSED, "going away"))
            return []
        if self._open_counts[False] >= self.settings.max_streams:
            message = f"more than {self.settings.max_streams} open streams"
            self._queue(Reset(stream_id, ErrorCode.REFUSED, message))
            return []
        stream = self._new_stream(stream_id, local=False, websocket=frame.websocket)
        stream.recv = TRANSITIONS[stream.recv, Act.HEAD]
        head = (frame.method, frame.target, frame.headers, frame.body, frame.websocket)
        events: list[Event] = [RequestReceived(stream_id, *head, frame.subprotocols, frame.port)]
        if not frame.body:
            stream.recv = TRANSITIONS[stream.recv, Act.END]
            events.append(StreamEnded(stream_id))
        self._grow(stream)  # a request without a body needs no credit at all
        return events

    def _on_response(self, frame: ResponseHead) -> list[Event]:
        stream = self._peer_step(frame.stream_id, Act.HEAD)
        if isinstance(stream, list):
            return stream
        return [ResponseReceived(frame.stream_id, frame.status, frame.headers)]

    def _on_data(self, frame: Data) -> list[Event]:
        stream_id, size = frame.stream_id, len(frame.payload)
        stream = self._peer_step(stream_id, Act.DATA)
        if isinstance(stream, list):
            return stream
        if size > stream.recv_allowed:
            return self._violate(stream, ErrorCode.FLOW_CONTROL, "window exceeded")
        stream.recv_allowed -= size
        return [DataReceived(stream_id, frame.payload, frame.text, frame.more)]

    def _on_end(self, frame: End) -> list[Event]:
        stream = self._peer_step(frame.stream_id, Act.END)
        if isinstance(stream, list):
            return stream
        self._forget_if_done(stream)
        return [StreamEnded(frame.stream_id, frame.code, frame.reason)]

    def _on_window(self, frame: Window) -> list[Event]:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            self._known_finished(frame.stream_id)
            return []
        if stream.send_credit + frame.increment > MAX_WINDOW:
            return self._violate(stream, ErrorCode.FLOW_CONTROL, "window overflow")
        stream.send_credit += frame.increment
        return [WindowUpdated(frame.stream_id, frame.increment)]

    # ------------------------------------------------------------ bookkeeping

    def _live(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return stream

    def _queue(self, frame: Frame) -> None:
        """Put a frame other than Data in the outbox (counted against `max_queued_control`)."""
        self._outbox.append(frame)
        self._control_queued += 1

    def _answer_ping(self, opaque: int) -> None:
        # One Pong waiting is enough to prove we are alive: a newer ping only updates it.
        if self._pong_at is not None:
            self._outbox[self._pong_at] = Pong(opaque)
            return
        self._pong_at = len(self._outbox)
        self._queue(Pong(opaque))

    def _new_stream(self, stream_id: int, *, local: bool, websocket: bool) -> _Stream:
        assert self.peer_settings is not None  # streams exist only after the Hello exchange
        window = self.settings.initial_window
        stream = _Stream(
            stream_id,
            local=local,
            send_credit=self.peer_settings.initial_window,
            recv_allowed=window,
            recv_window=window,
            websocket=websocket,
        )
        self._streams[stream_id] = stream
        self._windows += window
        self._open_counts[local] += 1
        return stream

    def _drop(self, stream_id: int) -> bool:
        """Forget a stream and give its window back to the budget; False if it was unknown."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return False
        self._windows -= stream.recv_window
        self._open_counts[stream.local] -= 1
        return True

    def _grow(self, stream: _Stream) -> None:
        """Grant the stream extra credit, up to `stream_window`, as far as the budget allows."""
        if stream.recv is Half.ENDED or stream.stream_id not in self._streams:
            return
        extra = min(self._stream_window - stream.recv_window, self._budget - self._windows)
        # Not for crumbs: a Window frame costs about what a Data frame does.
        if extra <= 0 or extra < min(self._stream_window - stream.recv_window, 4096):
            return
        stream.recv_window += extra
        stream.recv_allowed += extra
        self._windows += extra
        self._queue(Window(stream.stream_id, extra))

    def _local_step(self, stream: _Stream, act: Act, frame: Frame | None) -> None:
        """Advance our half and queue `frame` (None: the step was implied by the head)."""
        new = TRANSITIONS.get((stream.send, act))
        if new is None:
            half = stream.send.value
            raise LocalProtocolError(
                f"cannot send {act.value}: stream {stream.stream_id} is {half}"
            )
        stream.send = new
        if frame is not None:
            if type(frame) is Data:
                self._outbox.append(frame)
            else:
                self._head_queued = self._head_queued or act is Act.HEAD
                self._queue(frame)
        self._forget_if_done(stream)

    def _peer_step(self, stream_id: int, act: Act) -> _Stream | list[Event]:
        """Advance the peer's half: the stream, or the events to return if the step is void."""
        stream = self._streams.get(stream_id)
        if stream is None:
            self._known_finished(stream_id)
            return []
        new = TRANSITIONS.get((stream.recv, act))
        if new is None:
            message = f"{act.value} not allowed when the peer's half is {stream.recv.value}"
            return self._violate(stream, ErrorCode.PROTOCOL, message)
        stream.recv = new
        return stream

    def _violate(self, stream: _Stream, code: ErrorCode, message: str) -> list[Event]:
        self._drop(stream.stream_id)
        self._queue(Reset(stream.stream_id, code, message))
        return [StreamReset(stream.stream_id, code, message, remote=False)]

    def _known_finished(self, stream_id: int) -> None:
        """Accept a frame for a finished stream; an id never opened breaks the tunnel."""
        if stream_id % 2 == self._peer_parity:
            known = stream_id <= self._last_peer_id
        else:
            known = stream_id < self._next_id
        if not known:
            raise ProtocolError(f"frame for stream {stream_id}, which was never opened")

    def _forget_if_done(self, stream: _Stream) -> None:
        if stream.send is Half.ENDED and stream.recv is Half.ENDED:
            self._drop(stream.stream_id)

    def _check_head(self, frame: RequestOpen | ResponseHead) -> None:
        # The peer would reject an invalid head as a tunnel-fatal ProtocolError, so refuse it
        # here with the very same validation (header size, tokens, target form, values).
        try:
            check_head(frame)
        except ProtocolError as exc:
            raise LocalProtocolError(f"invalid {type(frame).__name__}: {exc}") from None
