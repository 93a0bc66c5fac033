"""`TunnelStream.deliver_directly`: data that arrives while the receiver waits, with nothing queued
before it, is handed to the direct taker (its credit back at once); anything else is queued and
received in order; `wake_receiver` makes `receive_or_wake` return None, which takes what is
queued without a schedule point (but not forever)."""

from __future__ import annotations

from dataclasses import replace

import trio
import trio.testing

from agentserver.tunnel import RequestReceived, TunnelStream
from agentserver.tunnel.websocket import YIELD_EVERY
from tests.unit.test_tunnel_transport import SMALL, tunnel_pair


class Agent:
    """An agent that answers one request with a head, then sends each piece it is given."""

    def __init__(self) -> None:
        self.send, self._pieces = trio.open_memory_channel[bytes](1000)
        self.done = trio.Event()  # its whole answer is sent

    async def handle(self, request: RequestReceived, stream: TunnelStream) -> None:
        await stream.send_response_head(200, [("content-type", "text/event-stream")])
        async for piece in self._pieces:
            if not piece:
                break
            await stream.send_all(piece)
        await stream.send_eof()
        self.done.set()


class Taker:
    """A direct taker that takes or refuses, and records what it took."""

    def __init__(self, take: bool = True) -> None:
        self.take = take
        self.taken: list[bytes] = []

    def __call__(self, piece: bytes) -> bool:
        if self.take:
            self.taken.append(piece)
        return self.take


async def test_data_arriving_while_the_receiver_waits_is_taken_directly_with_its_credit() -> None:
    """Three windows' worth of pieces all reach the taker while the receiver sleeps on: the
    credit of each went back at once (else the agent would have stopped after one window)."""
    agent = Agent()
    async with tunnel_pair(agent.handle) as pair:
        stream = await pair.server.open_request("GET", "/events", body=False)
        assert (await stream.receive_response_head())[0] == 200
        taker = Taker()
        stream.deliver_directly(taker)
        received: list[bytes | None] = []

        async def receiver() -> None:
            received.append(await stream.receive_or_wake())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            piece = b"e" * 4000
            count = 3 * SMALL.initial_window // len(piece)
            for _ in range(count):
                await agent.send.send(piece)
            with trio.fail_after(5):
                while len(taken := b"".join(taker.taken)) < count * len(piece):
                    await trio.testing.wait_all_tasks_blocked()
            assert taken == piece * count
            assert received == []  # the receiver slept throughout
            await agent.send.send(b"")  # the end is never offered: the receiver sees it
        assert received == [b""]


async def test_data_is_queued_in_order_while_the_receiver_is_busy_or_the_taker_refuses() -> None:
    """A refused piece wakes the receiver; a piece that arrives before it waits again is
    queued behind it, never offered: the receiver gets both, in order."""
    agent = Agent()
    async with tunnel_pair(agent.handle) as pair:
        stream = await pair.server.open_request("GET", "/events", body=False)
        await stream.receive_response_head()
        taker = Taker(take=False)
        stream.deliver_directly(taker)
        received: list[bytes | None] = []
        first = trio.Event()

        async def receiver() -> None:
            received.append(await stream.receive_or_wake())
            first.set()
            await trio.testing.wait_all_tasks_blocked()  # busy: "b" arrives meanwhile
            received.append(await stream.receive_or_wake())

        with trio.move_on_after(5):  # a piece offered instead of queued never reaches it
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                await agent.send.send(b"a")
                await first.wait()
                taker.take = True
                await agent.send.send(b"b")
        assert received == [b"a", b"b"]
        assert taker.taken == []  # "b" came while the receiver was busy: queued, not offered
        await agent.send.send(b"")


async def test_wake_receiver_makes_receive_or_wake_return_none_and_not_receive_some() -> None:
    agent = Agent()
    async with tunnel_pair(agent.handle) as pair:
        stream = await pair.server.open_request("GET", "/events", body=False)
        await stream.receive_response_head()
        woken: list[bytes | None] = []

        async def waiting() -> None:
            woken.append(await stream.receive_or_wake())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            stream.wake_receiver()
        assert woken == [None]
        plain: list[bytes] = []

        async def receiving() -> None:
            plain.append(await stream.receive_some())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiving)
            await trio.testing.wait_all_tasks_blocked()
            stream.wake_receiver()
            await trio.testing.wait_all_tasks_blocked()
            assert plain == []  # a plain receive keeps waiting for data
            await agent.send.send(b"data")
        assert plain == [b"data"]
        await agent.send.send(b"")


async def test_receive_or_wake_takes_what_is_there_without_a_schedule_point_but_not_forever() -> (
    None
):
    """Data already queued is taken without a trip round the scheduler (each costs a pass of
    the whole loop), yet a receiver that is never short of data lets the other tasks run at
    least once per YIELD_EVERY bytes."""
    agent = Agent()
    total = 4 * YIELD_EVERY
    roomy = replace(SMALL, initial_window=2 * total)  # all of it is queued before we read
    async with tunnel_pair(agent.handle, settings=roomy) as pair:
        stream = await pair.server.open_request("GET", "/events", body=False)
        await stream.receive_response_head()
        piece = b"p" * 4096
        for _ in range(total // len(piece)):
            await agent.send.send(piece)
        await agent.send.send(b"")
        with trio.fail_after(5):
            await agent.done.wait()
        await trio.testing.wait_all_tasks_blocked()
        turns = 0

        async def other() -> None:
            nonlocal turns
            while True:
                turns += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()
            before = turns
            assert await stream.receive_or_wake() == piece
            assert turns == before  # the other task did not run meanwhile
            taken = len(piece)
            while chunk := await stream.receive_or_wake():
                taken += len(chunk)
            nursery.cancel_scope.cancel()
        assert taken == total
        assert turns - before >= total // YIELD_EVERY - 1
