"""A bare TCP forwarder in trio: the floor the tunnel benchmark compares against.

Run: `python bench/bare_forwarder.py PORT` listens on a free loopback port, prints
`listening on N`, and copies each connection's bytes both ways to 127.0.0.1:PORT, nothing else
(a task per direction, `receive_some`/`send_all`). Two of them chained put two extra processes
on a request's path, as the server and the agent do: what that costs on this machine (each
wake-up of an idle process, each loopback hop) is the least the tunnel can add.
"""

from __future__ import annotations

import sys

import trio


async def _copy(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(256 * 1024):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.lowlevel.checkpoint()


async def _forward(client: trio.SocketStream, port: int) -> None:
    upstream = await trio.open_tcp_stream("127.0.0.1", port)
    async with client, upstream, trio.open_nursery() as nursery:
        nursery.start_soon(_copy, client, upstream)
        nursery.start_soon(_copy, upstream, client)


async def main(port: int) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(f"listening on {listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(lambda client: _forward(client, port), listeners)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
