"""A tunnel sent away (a draining server's go-away): the stream open on it finishes, no new one
opens, the peer hears it at once, and `wait_idle` returns once nothing is open."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentserver.tunnel import RequestReceived, Tunnel, TunnelClosed, TunnelStream
from agentserver.tunnel.connection import Role, Settings
from tests.unit.test_tunnel_transport import Wire, link_pair, read_all

SETTINGS = Settings(ping_interval=30.0)


async def test_a_tunnel_sent_away_finishes_its_open_stream_and_opens_no_new_one() -> None:
    release = trio.Event()

    async def slow(request: RequestReceived, stream: TunnelStream) -> None:
        await release.wait()
        await stream.send_response(200, [], b"finished", end=True)

    server_link, client_link = link_pair(Wire())
    server = Tunnel(server_link, role=Role.SERVER, settings=SETTINGS)
    client = Tunnel(client_link, role=Role.CLIENT, settings=SETTINGS, handler=slow)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starter:
            starter.start_soon(nursery.start, server.run)
            starter.start_soon(nursery.start, client.run)
        stream = await server.open_request("GET", "/", body=False)
        server.go_away("server restarting")
        assert server.going_away
        with trio.fail_after(5):
            await client.peer_went_away.wait()
        assert client.peer_going_away == "server restarting"
        with pytest.raises(TunnelClosed):
            await server.open_request("GET", "/again", body=False)
        idle = trio.Event()

        async def wait_idle() -> None:
            await client.wait_idle()
            idle.set()

        nursery.start_soon(wait_idle)
        await trio.testing.wait_all_tasks_blocked()
        assert not idle.is_set()  # the stream is still open on the agent's side
        release.set()
        assert (await stream.receive_response_head())[0] == 200
        assert await read_all(stream) == b"finished"
        await stream.aclose()
        with trio.fail_after(5):
            await idle.wait()
        assert not server.closed  # up until one side closes it
        assert not client.closed
        await client.aclose("moved to a new connection")
        await server.aclose()
