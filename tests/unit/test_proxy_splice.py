"""splice(2) relaying between two real loopback TCP connections (proxy/splice.py)."""

from __future__ import annotations

import os

import pytest
import trio

from agentserver.errors import SandboxUnreachable
from agentserver.proxy.splice import available, splice
from tests.support.tcp import read_exactly, tcp_pair

pytestmark = pytest.mark.skipif(not available, reason="os.splice (Linux) is not available")


async def test_exact_count_moves_and_what_follows_stays() -> None:
    """Exactly `count` bytes reach the sink, in order; the bytes after them stay unread."""
    payload = os.urandom(3 * 1024 * 1024 + 17)
    async with tcp_pair() as (agent, source), tcp_pair() as (sink, browser):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.send_all, payload + b"NEXT")
            received: list[bytes] = []

            async def read() -> None:
                received.append(await read_exactly(browser, len(payload)))

            nursery.start_soon(read)
            await splice(source, sink, len(payload))
        assert received == [payload]
        assert await read_exactly(source, 4) == b"NEXT"


async def test_source_ending_early_is_the_sandbox_failing() -> None:
    """An agent closing before the declared length is SandboxUnreachable, not a hang."""
    async with tcp_pair() as (agent, source), tcp_pair() as (sink, _browser):
        await agent.send_all(b"short")
        await agent.aclose()
        with pytest.raises(SandboxUnreachable):
            await splice(source, sink, 1000)


async def test_sink_going_away_is_a_broken_browser() -> None:
    """A browser that left makes the relay raise BrokenResourceError (the agent is fine)."""
    async with tcp_pair() as (agent, source), tcp_pair() as (sink, browser):
        await browser.aclose()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.send_all, b"x" * (8 * 1024 * 1024))
            with pytest.raises(trio.BrokenResourceError):
                await splice(source, sink, 8 * 1024 * 1024)
            nursery.cancel_scope.cancel()
