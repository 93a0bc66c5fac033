"""Tests for the sans-IO tunnel state machine: handshake, stream states, windows, resets."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentserver.tunnel.connection import (
    DataReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    Half,
    HelloReceived,
    LocalProtocolError,
    PingReceived,
    PongReceived,
    RequestReceived,
    ResponseReceived,
    Role,
    Settings,
    StreamEnded,
    StreamReset,
    TunnelConnection,
    WindowUpdated,
)
from agentserver.tunnel.frames import (
    Data,
    End,
    Frame,
    Hello,
    ProtocolError,
    RequestOpen,
    Reset,
    ResponseHead,
    Window,
    decode,
    encode,
)

SMALL = Settings(max_frame_payload=1024, initial_window=4096, ping_interval=5.0)


class ConnectionPair:
    """A server and a client connection whose frames travel, encoded, between them on `shuttle`."""

    def __init__(self, server: Settings = SMALL, client: Settings = SMALL) -> None:
        self.server = TunnelConnection(Role.SERVER, server)
        self.client = TunnelConnection(Role.CLIENT, client)
        self.shuttle()

    @staticmethod
    def _deliver(source: TunnelConnection, target: TunnelConnection) -> list[Event]:
        events: list[Event] = []
        for frame in source.frames_to_send():
            max_payload = target.settings.max_frame_payload
            events += target.receive_frame(decode(encode(frame), max_payload=max_payload))
        return events

    def shuttle(self) -> tuple[list[Event], list[Event]]:
        """Deliver frames both ways until none are left; (server events, client events)."""
        server_events: list[Event] = []
        client_events: list[Event] = []
        while True:
            to_client = self._deliver(self.server, self.client)
            to_server = self._deliver(self.client, self.server)
            if not to_client and not to_server:
                return server_events, client_events
            client_events += to_client
            server_events += to_server

    def open(self, *, body: bool = True) -> int:
        """A request from server to client, answered with a 200 head; returns the stream id."""
        stream_id = self.server.open_request("GET", "/x", (("Accept", "*/*"),), body=body)
        self.shuttle()
        self.client.send_response(stream_id, 200)
        self.shuttle()
        return stream_id


def test_hello_exchange_gives_each_side_the_peers_settings() -> None:
    """After the Hello exchange each side knows the limits the other announced."""
    server = TunnelConnection(Role.SERVER, SMALL)
    client = TunnelConnection(Role.CLIENT, Settings())
    (hello,) = client.frames_to_send()
    assert server.receive_frame(hello) == [HelloReceived(Settings())]
    (hello,) = server.frames_to_send()
    assert client.receive_frame(hello) == [HelloReceived(SMALL)]


def test_request_response_lifecycle_reaches_closed_and_forgets_the_stream() -> None:
    """A full request and response moves both halves to ended, then the stream is forgotten."""
    pair = ConnectionPair()
    stream_id = pair.server.open_request("POST", "/api?q=1", (("A", "1"), ("A", "2")))
    _, client_events = pair.shuttle()
    assert client_events == [
        RequestReceived(stream_id, "POST", "/api?q=1", (("A", "1"), ("A", "2")), True, False, ())
    ]
    pair.server.send_data(stream_id, b"body")
    pair.server.end_stream(stream_id)
    _, client_events = pair.shuttle()
    assert client_events == [DataReceived(stream_id, b"body"), StreamEnded(stream_id)]
    pair.client.send_response(stream_id, 201, (("Content-Type", "text/plain"),))
    pair.client.send_data(stream_id, b"ok")
    assert pair.client.half_states(stream_id) == (Half.OPEN, Half.ENDED)
    pair.client.end_stream(stream_id)
    server_events, _ = pair.shuttle()
    assert server_events == [
        ResponseReceived(stream_id, 201, (("Content-Type", "text/plain"),)),
        DataReceived(stream_id, b"ok"),
        StreamEnded(stream_id),
    ]
    assert not pair.server.is_open(stream_id)
    assert not pair.client.is_open(stream_id)


def test_request_without_body_ends_the_request_half_without_an_end_frame() -> None:
    """body=False implies the End: the peer sees the request end and no End frame is sent."""
    pair = ConnectionPair()
    stream_id = pair.server.open_request("GET", "/", body=False)
    frames = pair.server.frames_to_send()
    assert [type(f) for f in frames] == [RequestOpen]
    events: list[Event] = []
    for frame in frames:
        events += pair.client.receive_frame(frame)
    assert [type(e) for e in events] == [RequestReceived, StreamEnded]
    assert pair.client.half_states(stream_id) == (Half.IDLE, Half.ENDED)


def test_stream_ids_are_odd_from_the_server_and_even_from_the_client() -> None:
    """Both sides may open streams and their ids never collide."""
    pair = ConnectionPair()
    assert [pair.server.open_request("GET", "/") for _ in range(3)] == [1, 3, 5]
    assert [pair.client.open_request("GET", "/") for _ in range(2)] == [2, 4]
    server_events, client_events = pair.shuttle()
    assert [e.stream_id for e in client_events if isinstance(e, RequestReceived)] == [1, 3, 5]
    assert [e.stream_id for e in server_events if isinstance(e, RequestReceived)] == [2, 4]


def test_send_capacity_is_the_smaller_of_credit_and_frame_limit() -> None:
    """A sender may put at most min(window credit, peer's max payload) in one frame."""
    pair = ConnectionPair()
    stream_id = pair.open()
    assert pair.server.send_capacity(stream_id) == 1024
    for _ in range(4):
        pair.server.send_data(stream_id, b"x" * 1024)
    assert pair.server.send_capacity(stream_id) == 0
    with pytest.raises(LocalProtocolError):
        pair.server.send_data(stream_id, b"x")


def test_credit_returns_only_as_the_receiver_consumes() -> None:
    """Window frames are sent when consumed bytes reach half a window, not on receipt."""
    pair = ConnectionPair()
    stream_id = pair.open()
    for _ in range(4):
        pair.server.send_data(stream_id, b"x" * 1024)
    server_events, _ = pair.shuttle()
    assert server_events == []  # receiving alone grants nothing
    pair.client.acknowledge(stream_id, 2000)
    assert pair.client.frames_to_send() == []  # below the 2048-byte threshold
    pair.client.acknowledge(stream_id, 48)
    server_events, _ = pair.shuttle()
    assert server_events == [WindowUpdated(stream_id, 2048)]
    assert pair.server.send_capacity(stream_id) == 1024
    with pytest.raises(LocalProtocolError):
        pair.client.acknowledge(stream_id, 2049)  # more than was received and unread


def test_window_overrun_resets_only_that_stream() -> None:
    """A peer sending beyond the window gets that stream reset while other streams carry on."""
    pair = ConnectionPair()
    victim, bystander = pair.open(), pair.open()
    events: list[Event] = []
    for _ in range(5):
        events += pair.client.receive_frame(Data(victim, b"x" * 1024))
    assert events[-1] == StreamReset(victim, ErrorCode.FLOW_CONTROL, "window exceeded", False)
    assert pair.client.frames_to_send() == [Reset(victim, "flow_control", "window exceeded")]
    pair.server.send_data(bystander, b"fine")
    _, client_events = pair.shuttle()
    assert client_events == [DataReceived(bystander, b"fine")]


def test_window_overflow_resets_the_stream() -> None:
    """A Window increment pushing credit beyond 2**31-1 resets the stream."""
    pair = ConnectionPair()
    stream_id = pair.open()
    (event,) = pair.server.receive_frame(Window(stream_id, 2**31 - 1))
    assert isinstance(event, StreamReset)
    assert event.code == ErrorCode.FLOW_CONTROL


def _data_after_end(pair: ConnectionPair, stream_id: int) -> Frame:
    pair.server.end_stream(stream_id)
    pair.shuttle()
    return Data(stream_id, b"late")


PEER_STREAM_VIOLATIONS: dict[str, Callable[[ConnectionPair, int], Frame]] = {
    "data after end": _data_after_end,
    "response head from the opener": lambda pair, sid: ResponseHead(sid, 200),
    "end after end": lambda pair, sid: (_data_after_end(pair, sid), End(sid))[1],
}


@pytest.mark.parametrize("make_frame", PEER_STREAM_VIOLATIONS.values(), ids=PEER_STREAM_VIOLATIONS)
def test_illegal_frames_on_a_live_stream_reset_it(
    make_frame: Callable[[ConnectionPair, int], Frame],
) -> None:
    """A frame breaking a live stream's state table resets that stream with a protocol error."""
    pair = ConnectionPair()
    stream_id = pair.open()
    (event,) = pair.client.receive_frame(make_frame(pair, stream_id))
    assert isinstance(event, StreamReset)
    assert event == StreamReset(stream_id, ErrorCode.PROTOCOL, event.message, remote=False)
    assert pair.client.frames_to_send()[-1] == Reset(stream_id, "protocol", event.message)
    assert not pair.client.is_open(stream_id)


def test_data_before_the_response_head_resets_the_stream() -> None:
    """Response bytes arriving before the response head reset the stream."""
    pair = ConnectionPair()
    stream_id = pair.server.open_request("GET", "/")
    pair.shuttle()
    (event,) = pair.server.receive_frame(Data(stream_id, b"early"))
    assert isinstance(event, StreamReset)
    assert event.code == ErrorCode.PROTOCOL


TUNNEL_FATAL: dict[str, Frame] = {
    "data for a never-opened id": Data(99, b"x"),
    "window for a never-opened id": Window(98, 10),
    "duplicate open": RequestOpen(1, "GET", "/"),
    "open with the wrong parity": RequestOpen(4, "GET", "/"),
    "second hello": Hello(1, 16384, 1, 1.0),
}


@pytest.mark.parametrize("frame", TUNNEL_FATAL.values(), ids=TUNNEL_FATAL)
def test_frames_breaking_id_bookkeeping_raise_protocol_error(frame: Frame) -> None:
    """Unknown ids, reused or wrong-parity opens and a second Hello are fatal to the tunnel."""
    pair = ConnectionPair()
    pair.open()
    with pytest.raises(ProtocolError):
        pair.client.receive_frame(frame)


def test_frames_before_hello_raise_protocol_error() -> None:
    """Nothing but a Hello is accepted first."""
    client = TunnelConnection(Role.CLIENT)
    with pytest.raises(ProtocolError):
        client.receive_frame(RequestOpen(1, "GET", "/"))


def test_version_mismatch_raises_protocol_error() -> None:
    """A peer speaking another protocol version is refused."""
    client = TunnelConnection(Role.CLIENT)
    with pytest.raises(ProtocolError):
        client.receive_frame(Hello(2, 16384, 1024, 1.0))


def test_frames_for_finished_streams_are_ignored() -> None:
    """Frames that crossed our Reset on the wire are dropped without events or errors."""
    pair = ConnectionPair()
    stream_id = pair.open()
    pair.client.reset_stream(stream_id)
    late: list[Frame] = [
        Data(stream_id, b"x"),
        End(stream_id),
        Window(stream_id, 5),
        Reset(stream_id, "x"),
    ]
    for frame in late:
        assert pair.client.receive_frame(frame) == []


def test_reset_reaches_the_peer_and_closes_both_sides() -> None:
    """reset_stream sends Reset once; the peer sees StreamReset(remote=True) and forgets it."""
    pair = ConnectionPair()
    stream_id = pair.open()
    pair.server.reset_stream(stream_id, ErrorCode.CANCEL, "browser left")
    pair.server.reset_stream(stream_id)  # already finished: no second frame
    _, client_events = pair.shuttle()
    assert client_events == [StreamReset(stream_id, "cancel", "browser left", remote=True)]
    assert not pair.client.is_open(stream_id)
    assert not pair.server.is_open(stream_id)


def _data_after_own_end(pair: ConnectionPair, stream_id: int) -> None:
    pair.server.end_stream(stream_id)
    pair.server.send_data(stream_id, b"x")


def _end_twice(pair: ConnectionPair, stream_id: int) -> None:
    pair.server.end_stream(stream_id)
    pair.server.end_stream(stream_id)


LOCAL_MISUSE: dict[str, Callable[[ConnectionPair, int], object]] = {
    "data after end": _data_after_own_end,
    "end twice": _end_twice,
    "bad close code": lambda p, s: p.server.end_stream(s, code=5000),
    "invalid header value": lambda p, s: p.server.open_request("GET", "/", (("X", "a\nb"),)),
    "absolute target": lambda p, s: p.server.open_request("GET", "http://evil/"),
    "response on own stream": lambda p, s: p.server.send_response(s, 200),
    "second response": lambda p, s: p.client.send_response(s, 204),
    "unknown stream": lambda p, s: p.server.send_data(77, b"x"),
    "oversized head": lambda p, s: p.server.open_request("GET", "/", (("X", "v" * 70000),)),
}


@pytest.mark.parametrize("misuse", LOCAL_MISUSE.values(), ids=LOCAL_MISUSE)
def test_local_misuse_raises_local_protocol_error(
    misuse: Callable[[ConnectionPair, int], object],
) -> None:
    """Our own application breaking the rules gets LocalProtocolError."""
    pair = ConnectionPair()
    stream_id = pair.open()
    with pytest.raises(LocalProtocolError):
        misuse(pair, stream_id)


def test_open_before_hello_is_local_misuse() -> None:
    """A stream cannot be opened before the peer's limits are known."""
    with pytest.raises(LocalProtocolError):
        TunnelConnection(Role.SERVER).open_request("GET", "/")


def test_ping_is_answered_with_a_pong_automatically() -> None:
    """A Ping yields PingReceived and a Pong with the same opaque value."""
    pair = ConnectionPair()
    pair.server.ping(42)
    server_events, client_events = pair.shuttle()
    assert client_events == [PingReceived(42)]
    assert server_events == [PongReceived(42)]


def test_go_away_stops_new_streams_both_ways() -> None:
    """After GoAway the peer cannot open streams and new peer opens are refused."""
    pair = ConnectionPair()
    pair.client.go_away(ErrorCode.NORMAL, "bye")
    pair.server.open_request("GET", "/crossing")  # crosses the GoAway on the wire
    server_events, _ = pair.shuttle()
    assert GoAwayReceived("normal", "bye") in server_events
    assert StreamReset(1, "refused", "going away", remote=True) in server_events
    with pytest.raises(LocalProtocolError):
        pair.server.open_request("GET", "/")


def test_websocket_flags_and_close_code_travel_end_to_end() -> None:
    """Text/fragment flags on Data and the close code on End reach the peer unchanged."""
    pair = ConnectionPair()
    stream_id = pair.server.open_request("GET", "/pty", websocket=True, subprotocols=("tty",))
    _, client_events = pair.shuttle()
    assert client_events[0] == RequestReceived(stream_id, "GET", "/pty", (), True, True, ("tty",))
    pair.client.send_response(stream_id, 101)
    pair.client.send_data(stream_id, b"he", text=True, more=True)
    pair.client.send_data(stream_id, b"llo", text=True)
    pair.client.end_stream(stream_id, code=1001, reason="going")
    server_events, _ = pair.shuttle()
    assert server_events[1:] == [
        DataReceived(stream_id, b"he", text=True, more=True),
        DataReceived(stream_id, b"llo", text=True),
        StreamEnded(stream_id, 1001, "going"),
    ]
