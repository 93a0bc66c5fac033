"""Tests for what a tunnel peer can make the sans-IO connection hold: pongs, control frames,
streams and receive credit all stay within their bounds, without an event loop."""

from __future__ import annotations

import pytest

from agentserver.tunnel.connection import (
    ErrorCode,
    Role,
    Settings,
    StreamLimitReached,
    TunnelConnection,
)
from agentserver.tunnel.frames import (
    VERSION,
    Data,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    RequestOpen,
    Reset,
    Window,
    decode,
    encode,
)
from tests.unit.test_tunnel_connection import SMALL, ConnectionPair


def _connected(settings: Settings, role: Role = Role.SERVER) -> TunnelConnection:
    """A connection that has the peer's Hello and nothing queued."""
    peer_role = Role.CLIENT if role is Role.SERVER else Role.SERVER
    conn = TunnelConnection(role, settings)
    for frame in TunnelConnection(peer_role, SMALL).frames_to_send():
        conn.receive_frame(decode(encode(frame)))
    conn.frames_to_send()
    return conn


def test_a_ping_flood_leaves_one_pong_waiting_with_the_latest_opaque() -> None:
    """However many pings arrive while nothing is sent, one Pong waits, answering the last."""
    conn = _connected(SMALL)
    for opaque in range(1, 10_001):
        conn.receive_frame(Ping(opaque))
    assert conn.frames_to_send() == [Pong(10_000)]
    conn.receive_frame(Ping(7))
    assert conn.frames_to_send() == [Pong(7)]  # once sent, the next ping gets its own pong


def test_a_pong_waiting_behind_other_frames_is_updated_in_place() -> None:
    """A newer ping updates the waiting Pong where it is; frames queued after it stay in order."""
    pair = ConnectionPair()
    stream_id = pair.server.open_request("GET", "/a", body=False)
    pair.server.frames_to_send()
    pair.server.receive_frame(Ping(1))
    pair.server.reset_stream(stream_id)
    pair.server.receive_frame(Ping(2))
    assert pair.server.frames_to_send() == [Pong(2), Reset(stream_id, ErrorCode.CANCEL, "")]


def test_peer_streams_beyond_max_streams_are_refused_and_others_go_on() -> None:
    """A peer ignoring our announced `max_streams` gets its extra stream reset as refused; once
    one of its streams ends, a new one opens."""
    conn = _connected(Settings(1024, 4096, 5.0, max_streams=2), Role.CLIENT)
    for stream_id in (1, 3, 5):
        conn.receive_frame(RequestOpen(stream_id, "GET", "/", body=False))
    assert conn.frames_to_send() == [Reset(5, ErrorCode.REFUSED, "more than 2 open streams")]
    assert conn.is_open(1)
    assert conn.is_open(3)
    conn.receive_frame(Reset(1, ErrorCode.CANCEL))
    conn.receive_frame(RequestOpen(7, "GET", "/", body=False))
    assert conn.frames_to_send() == []
    assert conn.is_open(7)


def test_we_open_no_more_streams_than_the_peer_announced() -> None:
    """The peer's Hello says how many streams it takes; opening one more raises locally, before
    anything is sent."""
    pair = ConnectionPair(client=Settings(1024, 4096, 5.0, max_streams=2))
    pair.open(body=False)
    pair.open(body=False)
    with pytest.raises(StreamLimitReached, match="2 streams"):
        pair.server.open_request("GET", "/3")
    assert pair.server.frames_to_send() == []


def test_a_peer_hello_without_a_stream_count_sets_no_cap() -> None:
    """An older peer announces no stream count: only our own `max_streams` applies."""
    conn = TunnelConnection(Role.SERVER, Settings(1024, 4096, 5.0, max_streams=3))
    old_hello = b'{"type":"hello","version":1,"max_payload":1024,"window":4096,"ping":5}'
    conn.receive_frame(decode(len(old_hello).to_bytes(4, "big") + old_hello))
    for _ in range(3):
        conn.open_request("GET", "/", body=False)
    with pytest.raises(StreamLimitReached, match="3 streams"):
        conn.open_request("GET", "/")


def test_own_streams_beyond_max_streams_raise_and_free_up_when_one_finishes() -> None:
    """Opening more than `max_streams` streams raises StreamLimitReached; a finished one frees a
    place."""
    pair = ConnectionPair(server=Settings(1024, 4096, 5.0, max_streams=2))
    first = pair.open(body=False)
    pair.open(body=False)
    with pytest.raises(StreamLimitReached):
        pair.server.open_request("GET", "/3")
    pair.client.end_stream(first)
    pair.shuttle()
    assert pair.server.open_request("GET", "/3") > 0


def test_control_frames_piling_up_unsent_are_a_protocol_error() -> None:
    """A peer that makes us queue more than `max_queued_control` answers breaks the tunnel."""
    conn = _connected(Settings(1024, 4096, 5.0, max_streams=1, max_queued_control=8))
    conn.receive_frame(RequestOpen(2, "GET", "/"))
    for n in range(8):  # each is refused: 8 Resets wait, still within the bound
        conn.receive_frame(RequestOpen(4 + 2 * n, "GET", "/"))
    with pytest.raises(ProtocolError, match="control frames"):
        conn.receive_frame(RequestOpen(100, "GET", "/"))


def test_control_frames_sent_in_time_never_hit_the_bound() -> None:
    """The bound counts frames waiting now: a peer whose answers are taken may go on for ever."""
    conn = _connected(Settings(1024, 4096, 5.0, max_streams=1, max_queued_control=8))
    refused, stream_id = 0, 2
    for _ in range(100):
        for _ in range(8):
            conn.receive_frame(RequestOpen(stream_id, "GET", "/", body=False))
            stream_id += 2
        refused += sum(type(f) is Reset for f in conn.frames_to_send())
    assert refused == 100 * 8 - 1  # only the first stream found a place


BUDGETED = Settings(
    max_frame_payload=1024,
    initial_window=4096,
    ping_interval=5.0,
    stream_window=16384,
    receive_budget=32768,
)


def _credit(pair: ConnectionPair, stream_id: int) -> int:
    """How many bytes the client may send the server on the stream now."""
    return pair.client._streams[stream_id].send_credit


def test_stream_windows_grow_only_while_the_receive_budget_lasts() -> None:
    """The first streams grow to `stream_window`; once the budget is spent, new streams keep the
    initial window, so all the peer may send stays within budget + streams x initial window."""
    pair = ConnectionPair(server=BUDGETED)
    streams = [pair.open(body=False) for _ in range(4)]
    credits = [_credit(pair, s) for s in streams]
    assert credits == [16384, 16384, 4096, 4096]
    assert sum(credits) <= BUDGETED.receive_budget + 4 * BUDGETED.initial_window


def test_budget_freed_by_a_finished_stream_goes_to_a_stream_that_reads() -> None:
    """When a grown stream finishes, a small stream still being read grows on its next grant."""
    pair = ConnectionPair(server=BUDGETED)
    big, other, small = (pair.open(body=False) for _ in range(3))
    assert _credit(pair, small) == 4096
    pair.client.end_stream(big)
    pair.shuttle()
    for _ in range(4):
        pair.client.send_data(small, b"x" * 1024)
    pair.shuttle()
    pair.server.acknowledge(small, 4096)
    pair.shuttle()
    assert _credit(pair, small) == 16384
    assert pair.server._windows == 2 * 16384  # `other` and `small`, within the budget
    assert pair.server.is_open(other)


def test_receive_budget_holds_for_streams_the_peer_opens() -> None:
    """Streams opened by the peer grow within our budget too (the agent's side of uploads)."""
    pair = ConnectionPair(client=BUDGETED)
    for n in range(3):
        pair.server.open_request("POST", f"/{n}")
    pair.shuttle()
    credits = [s.send_credit for s in pair.server._streams.values()]
    assert credits == [16384, 16384, 4096]


def test_a_peer_request_without_a_body_gets_no_extra_credit() -> None:
    """Only a stream that will carry data is granted more: a bodiless request spends no budget."""
    conn = _connected(BUDGETED, Role.CLIENT)
    conn.receive_frame(RequestOpen(1, "GET", "/", body=False))
    conn.receive_frame(RequestOpen(3, "POST", "/"))
    assert conn.frames_to_send() == [Window(3, 16384 - 4096)]
    assert conn._windows == 4096 + 16384


def test_data_within_a_grown_window_is_accepted() -> None:
    """The extra credit is real: the peer may send the whole grown window without a reset."""
    pair = ConnectionPair(server=BUDGETED)
    stream_id = pair.open(body=False)
    events = []
    for _ in range(16):
        events += pair.server.receive_frame(Data(stream_id, b"y" * 1024))
    assert len(events) == 16
    assert pair.server.frames_to_send() == []  # no reset
    (event,) = pair.server.receive_frame(Data(stream_id, b"z"))
    assert event.code == ErrorCode.FLOW_CONTROL  # type: ignore[union-attr]


def test_growth_grants_are_sent_with_the_request_head() -> None:
    """A stream we open carries its extra credit right after its head, in the same batch."""
    conn = _connected(BUDGETED)
    stream_id = conn.open_request("GET", "/", body=False)
    frames = conn.frames_to_send()
    assert [type(f) for f in frames] == [RequestOpen, Window]
    assert frames[1] == Window(stream_id, 16384 - 4096)


def test_no_growth_without_a_stream_window() -> None:
    """Default settings keep the old behaviour: the initial window only, no extra Window."""
    conn = _connected(SMALL)
    conn.open_request("GET", "/", body=False)
    assert [type(f) for f in conn.frames_to_send()] == [RequestOpen]


def test_finished_streams_give_back_their_windows() -> None:
    """Streams ended, reset by either side or refused leave no window counted against the budget."""
    pair = ConnectionPair(server=BUDGETED)
    a, b, c = (pair.open() for _ in range(3))
    pair.server.end_stream(a)
    pair.client.end_stream(a)
    pair.server.reset_stream(b)
    pair.client.reset_stream(c)
    pair.shuttle()
    assert pair.server._streams == {}
    assert pair.server._windows == 0
    assert pair.server._open_counts == {True: 0, False: 0}


def test_hello_carries_an_optional_stream_count() -> None:
    """`streams` round-trips in the Hello, is left out when unset, and must be a positive int."""
    hello = Hello(VERSION, 1024, 4096, 5.0, max_streams=7)
    assert decode(encode(hello)) == hello
    assert b"streams" not in encode(Hello(VERSION, 1024, 4096, 5.0))
    bad = b'{"type":"hello","version":1,"max_payload":1024,"window":4096,"ping":5,"streams":0}'
    with pytest.raises(ProtocolError, match="streams"):
        decode(len(bad).to_bytes(4, "big") + bad)
