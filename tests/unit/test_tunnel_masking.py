"""Tests for the C WebSocket masker: wsproto's exact bytes, and interoperable on the wire."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import wsproto.frame_protocol
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from agentserver.tunnel import masking

pytestmark = pytest.mark.skipif(
    masking.APPLY_MASK is None, reason="websockets.speedups (C extension) is not importable"
)
PYTHON_MASKER = wsproto.frame_protocol.XorMaskerSimple


@pytest.fixture
def installed() -> Iterator[None]:
    assert masking.install()
    try:
        yield
    finally:
        masking.uninstall()


@given(
    key=st.binary(min_size=4, max_size=4),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_masks_like_wsproto_across_any_split(key: bytes, data: bytes, cuts: list[int]) -> None:
    """Masking a payload in pieces (as frames arrive in chunks) gives wsproto's exact bytes."""
    fast, slow = masking.FastMasker(key), PYTHON_MASKER(bytearray(key))
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for start, end in itertools.pairwise(bounds):
        piece = bytearray(data[start:end])
        got = fast.process(piece)
        assert isinstance(got, bytearray)
        assert got == slow.process(bytearray(piece))


def _handshake() -> tuple[WSConnection, WSConnection]:
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="agentserver", target="/api/tunnel/x")))
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection()))
    assert isinstance(next(client.events()), AcceptConnection)
    return client, server


def _relay(sender_fast: bool, receiver_fast: bool, payload: bytes) -> bytes:
    client, server = _handshake()
    (masking.install if sender_fast else masking.uninstall)()
    wire = client.send(BytesMessage(data=payload))
    (masking.install if receiver_fast else masking.uninstall)()
    received = bytearray()
    for start in range(0, len(wire), 7000):  # the server reads the frame in odd-sized chunks
        server.receive_data(wire[start : start + 7000])
        for event in server.events():
            assert isinstance(event, BytesMessage)
            received += event.data
    return bytes(received)


@pytest.mark.parametrize(("sender_fast", "receiver_fast"), [(True, False), (False, True)])
def test_frames_cross_between_the_c_and_python_maskers(
    installed: None, sender_fast: bool, receiver_fast: bool
) -> None:
    """An agent masking in C and a server unmasking in Python (or the reverse) agree."""
    payload = bytes(range(256)) * 1000 + b"tail"
    assert _relay(sender_fast, receiver_fast, payload) == payload


def test_install_replaces_and_uninstall_restores_wsprotos_masker(installed: None) -> None:
    """`install` makes wsproto build FastMasker; `uninstall` puts its own masker back."""
    current: object = wsproto.frame_protocol.XorMaskerSimple
    assert current is masking.FastMasker
    masking.uninstall()
    assert wsproto.frame_protocol.XorMaskerSimple is PYTHON_MASKER
