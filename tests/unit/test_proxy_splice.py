"""splice(2) relaying between two real loopback TCP connections (proxy/splice.py), on the
event loop and on a worker thread."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from agentserver.errors import SandboxUnreachable
from agentserver.proxy import splice as splice_module
from agentserver.proxy.splice import available, splice
from tests.support.tcp import read_exactly, tcp_pair

pytestmark = pytest.mark.skipif(not available, reason="os.splice (Linux) is not available")
MIB = 1024 * 1024


@pytest.fixture(params=["event loop", "thread"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each relay test runs both ways a body can move: every size on the event loop, or
    every size on a worker thread."""
    monkeypatch.setattr(splice_module, "THREAD_FROM", 0 if request.param == "thread" else 1 << 62)
    return str(request.param)


@pytest.fixture
def threads_started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the worker threads splice starts."""
    started: list[str] = []
    real = trio.lowlevel.start_thread_soon

    def spy(fn, deliver, name=None):  # type: ignore[no-untyped-def]
        started.append(name)
        real(fn, deliver, name=name)

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", spy)
    return started


async def relay(payload: bytes, after: bytes = b"") -> tuple[bytes, bytes]:
    """Splice `payload` between two loopback connections: (what the browser got, the first
    len(after) bytes left in the agent's socket)."""
    received: list[bytes] = []
    async with tcp_pair() as (agent, source), tcp_pair() as (sink, browser):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.send_all, payload + after)

            async def read() -> None:
                received.append(await read_exactly(browser, len(payload)))

            nursery.start_soon(read)
            await splice(source, sink, len(payload))
        left = await read_exactly(source, len(after)) if after else b""
    return received[0], left


async def test_exact_count_moves_and_what_follows_stays(way: str) -> None:
    """Exactly `count` bytes reach the sink, in order; the bytes after them stay unread."""
    payload = os.urandom(3 * MIB + 17)
    assert await relay(payload, b"NEXT") == (payload, b"NEXT")


async def test_source_ending_early_is_the_sandbox_failing(way: str) -> None:
    """An agent closing before the declared length is SandboxUnreachable, not a hang."""
    async with tcp_pair() as (agent, source), tcp_pair() as (sink, _browser):
        await agent.send_all(b"short")
        await agent.aclose()
        with pytest.raises(SandboxUnreachable):
            await splice(source, sink, 1000)


async def test_sink_going_away_is_a_broken_browser(way: str) -> None:
    """A browser that left makes the relay raise BrokenResourceError (the agent is fine)."""
    async with tcp_pair() as (agent, source), tcp_pair() as (sink, browser):
        await browser.aclose()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.send_all, b"x" * (8 * MIB))
            with pytest.raises(trio.BrokenResourceError):
                await splice(source, sink, 8 * MIB)
            nursery.cancel_scope.cancel()


async def test_large_bodies_move_on_a_thread_small_ones_on_the_loop(
    threads_started: list[str],
) -> None:
    """A body of THREAD_FROM bytes or more starts a worker thread; a smaller one does not."""
    for size in (splice_module.THREAD_FROM - 1, splice_module.THREAD_FROM):
        assert await relay(b"y" * size) == (b"y" * size, b"")
    assert threads_started == ["agentserver splice"]


async def test_cancelling_a_relay_stops_it_before_returning(way: str) -> None:
    """A cancel mid-body returns only after the relay stopped reading: bytes the agent sends
    afterwards are still in its socket, and a thread's slot is free again."""
    async with tcp_pair() as (agent, source), tcp_pair() as (sink, browser):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(splice, source, sink, 4 * MIB)
            async with trio.open_nursery() as transfer:  # the browser reads while the agent sends
                transfer.start_soon(agent.send_all, b"a" * MIB)
                assert await read_exactly(browser, MIB) == b"a" * MIB  # the relay is running
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        await agent.send_all(b"TAIL")
        assert await read_exactly(source, 4) == b"TAIL"
        assert splice_module._threads().borrowed_tokens == 0


async def test_with_every_thread_busy_a_large_body_moves_on_the_loop(
    threads_started: list[str],
) -> None:
    """When THREADS relays already hold threads, the next large body still arrives whole,
    relayed on the event loop instead of waiting for a thread."""
    limiter = splice_module._threads()
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:
        limiter.acquire_on_behalf_of_nowait(holder)
    try:
        payload = os.urandom(2 * MIB)
        assert await relay(payload) == (payload, b"")
        assert threads_started == []
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)


async def test_bytes_before_a_pause_reach_the_browser_at_once(way: str) -> None:
    """When the agent pauses mid-body, what it already sent is not held back (corked) until
    it sends more: a stream of a few bytes now and then arrives as it is sent."""
    async with (
        tcp_pair() as (agent, source),
        tcp_pair() as (sink, browser),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(splice, source, sink, 4 * MIB)
        for piece in (b"first", b"x" * 100_000, b"last"):
            await agent.send_all(piece)
            assert await read_exactly(browser, len(piece)) == piece
        nursery.cancel_scope.cancel()


async def test_the_agent_socket_goes_back_with_its_default_low_water_mark(way: str) -> None:
    """The batching mark a threaded relay sets on the agent's socket is gone afterwards, after
    a whole body and after a cancel, so a pooled connection's next small reply is not held."""

    def mark(stream: trio.SocketStream) -> int:
        return int(stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))

    async with tcp_pair() as (agent, source), tcp_pair() as (sink, browser):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.send_all, b"z" * 3 * MIB)
            nursery.start_soon(read_exactly, browser, 3 * MIB)
            await splice(source, sink, 3 * MIB)
        assert mark(source) == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(splice, source, sink, 4 * MIB)
            await agent.send_all(b"z" * 1000)
            assert await read_exactly(browser, 1000) == b"z" * 1000
            nursery.cancel_scope.cancel()
        assert mark(source) == 1
