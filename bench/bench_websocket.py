"""The tunnel's own WebSocket (tunnel/websocket.py) against trio-websocket, same run.

Run: `python bench/bench_websocket.py [--messages N]`. One process, loopback TCP: a client
sends a message, the server echoes it, the client reads it back; the same with trio-websocket at
both ends (what the agent used before, and a stand-in for the server's hypercorn stream). Prints
wall and CPU microseconds per round trip (both ends together), medians over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio_websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from agentserver.tunnel import masking
from agentserver.tunnel.websocket import WebSocket

SIZES = (200, 16 * 1024)


async def ours(messages: int, size: int) -> tuple[float, float]:
    """Round trips over our link at both ends (handshake skipped: it is not per message)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def echo() -> None:
            stream = await listener.accept()
            link = WebSocket(stream, client=False, max_message=1 << 20)
            try:
                while True:
                    await link.send_message(await link.get_message())
            except (trio.EndOfChannel, trio.BrokenResourceError):
                pass

        nursery.start_soon(echo)
        client = WebSocket(
            await trio.open_tcp_stream("127.0.0.1", port), client=True, max_message=1 << 20
        )
        result = await _round_trips(client.send_message, client.get_message, messages, size)
        await client.aclose()
        nursery.cancel_scope.cancel()
    return result


async def theirs(messages: int, size: int) -> tuple[float, float]:
    """Round trips over trio-websocket at both ends."""

    async def echo(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server: Any = await nursery.start(
            trio_websocket.serve_websocket, echo, "127.0.0.1", 0, None
        )
        async with trio_websocket.open_websocket(
            "127.0.0.1", server.port, "/", use_ssl=False
        ) as ws:
            result = await _round_trips(ws.send_message, ws.get_message, messages, size)
        nursery.cancel_scope.cancel()
    return result


async def _round_trips(send: Any, receive: Any, messages: int, size: int) -> tuple[float, float]:
    message = b"m" * size
    for _ in range(100):  # warm up
        await send(message)
        await receive()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(messages):
        await send(message)
        assert len(await receive()) == size
    return (
        (time.perf_counter() - wall) / messages * 1e6,
        (time.process_time() - cpu) / messages * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    masking.install()  # wsproto masks in C too, as the agent and server had it
    print(f"{'size':>8} {'link':<16}{'wall µs':>10}{'CPU µs':>10}  (per round trip, medians)")
    for size in SIZES:
        runs: dict[str, list[tuple[float, float]]] = {"ours": [], "trio-websocket": []}
        for _ in range(args.repeats):  # interleaved: load on a shared machine hits both
            runs["ours"].append(trio.run(ours, args.messages, size))
            runs["trio-websocket"].append(trio.run(theirs, args.messages, size))
        for name, results in runs.items():
            wall = statistics.median(r[0] for r in results)
            cpu = statistics.median(r[1] for r in results)
            print(f"{size:>8} {name:<16}{wall:>10.1f}{cpu:>10.1f}")


if __name__ == "__main__":
    main()
