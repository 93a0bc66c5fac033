"""open_tunnel (both ends opened the same way) and the stream's narrow StreamTransport seam."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from agentserver.tunnel import (
    ErrorCode,
    Role,
    StreamResetError,
    TunnelClosed,
    TunnelStream,
    open_tunnel,
)
from agentserver.tunnel.connection import DataReceived
from agentserver.tunnel.frames import Headers
from tests.unit.test_tunnel_transport import SMALL, Wire, echo, link_pair, read_all


async def test_both_ends_opened_with_open_tunnel_carry_a_request() -> None:
    """The block is entered once the Hello exchange is done, and a request round-trips."""
    server_link, agent_link = link_pair(Wire())
    agent_done = trio.Event()

    async def agent() -> None:
        async with open_tunnel(agent_link, role=Role.CLIENT, settings=SMALL, handler=echo):
            await trio.sleep_forever()  # ended by the tunnel's end, not by this block
        agent_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent)
        async with open_tunnel(server_link, role=Role.SERVER, settings=SMALL) as tunnel:
            assert tunnel.peer_settings is not None  # the peer's Hello has arrived
            stream = await tunnel.open_request("POST", "/echo")
            await stream.send_all(b"hello")
            await stream.send_eof()
            assert (await stream.receive_response_head())[0] == 200
            assert await read_all(stream) == b"HELLO"
            await tunnel.aclose()
        with trio.fail_after(5):
            await agent_done.wait()


async def test_leaving_the_block_keeps_the_tunnel_serving_until_it_ends() -> None:
    """Like a nursery: the `async with` returns only once the tunnel ended, serving till then."""
    server_link, agent_link = link_pair(Wire())
    left_block, agent_done = trio.Event(), trio.Event()

    async def agent() -> None:
        async with open_tunnel(agent_link, role=Role.CLIENT, settings=SMALL, handler=echo) as t:
            left_block.set()
        assert t.closed
        agent_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent)
        async with open_tunnel(server_link, role=Role.SERVER, settings=SMALL) as tunnel:
            await left_block.wait()
            stream = await tunnel.open_request("GET", "/", body=False)
            assert (await stream.receive_response_head())[0] == 200
            await trio.testing.wait_all_tasks_blocked()
            assert not agent_done.is_set()
            await tunnel.aclose()
        with trio.fail_after(5):
            await agent_done.wait()


async def test_a_peer_gone_before_hello_raises_tunnel_closed_without_entering() -> None:
    """A tunnel that fails before it is up raises TunnelClosed out of the `async with`."""
    server_link, agent_link = link_pair(Wire())
    await agent_link.aclose()  # the agent hangs up at once
    entered = False
    with pytest.RaisesGroup(TunnelClosed, flatten_subgroups=True):
        async with open_tunnel(server_link, role=Role.SERVER, settings=SMALL):
            entered = True
    assert not entered


@dataclass
class RecordingTransport:
    """A StreamTransport that records what a stream asks of it; `capacity` is set by the test."""

    capacity: int = 0
    calls: list[tuple[object, ...]] = field(default_factory=list)
    closed: bool = False
    close_reason: str = ""
    send_timeout: float | None = None

    def send_capacity(self, stream_id: int) -> int:
        return self.capacity

    def holding(self) -> AbstractContextManager[None]:
        return nullcontext()

    def send_head(self, stream_id: int, status: int, headers: Headers) -> None:
        self.calls.append(("head", status))

    def send_data(self, stream_id: int, data: bytes, *, text: bool, more: bool) -> None:
        self.capacity -= len(data)
        self.calls.append(("data", data))

    def send_end(self, stream_id: int, code: int | None, reason: str) -> None:
        self.calls.append(("end",))

    def grant_credit(self, stream_id: int, size: int) -> None:
        self.calls.append(("credit", size))

    def send_reset(self, stream_id: int, code: str, message: str) -> bool:
        self.calls.append(("reset", code))
        return True


async def test_a_stream_works_through_the_stream_transport_interface_alone() -> None:
    """Sends stay within the granted capacity and wait for `credit_granted`; reads grant credit."""
    transport = RecordingTransport(capacity=3)
    stream = TunnelStream(transport, 1, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"abcde")
        await trio.testing.wait_all_tasks_blocked()
        assert transport.calls == [("data", b"abc")]  # parked: no capacity left
        transport.capacity = 10
        stream.credit_granted()
    assert transport.calls[-1] == ("data", b"de")
    stream.data_received(DataReceived(1, b"xyz"))
    assert await stream.receive_some(2) == b"xy"
    assert transport.calls[-1] == ("credit", 2)
    stream.reset_received(ErrorCode.CANCEL, "gone", remote=True)
    with pytest.raises(StreamResetError):
        await stream.send_all(b"more")
    assert ("end",) not in transport.calls


async def test_a_closed_transport_fails_the_stream_with_tunnel_closed() -> None:
    """A stream parked on a receive wakes up with TunnelClosed once its tunnel is gone."""
    transport = RecordingTransport(capacity=10)
    stream = TunnelStream(transport, 1, None)
    with pytest.RaisesGroup(TunnelClosed):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            transport.closed, transport.close_reason = True, "the link broke"
            stream.tunnel_closed()
