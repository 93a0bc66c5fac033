"""What a handed-over (hypercorn) connection does while the server drains (proxy/handover.py):
responses say `Connection: close`, and a closed connection's sleeps end with its client."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypercorn.trio.worker_context import WorkerContext

from agentserver.proxy.handover import ClientContext, CloseWhileDraining


class App:
    """An ASGI app (hypercorn's calling convention) that answers 200 with a keep-alive header."""

    async def __call__(self, scope: Any, receive: Any, send: Any, *_: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def answer_head(draining: bool) -> list[tuple[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"type": "http.request", "body": b""}

    app: Any = App()
    wrapped = CloseWhileDraining(app, lambda: draining)
    await wrapped({"type": "http"}, receive, send, None, None)
    return list(sent[0]["headers"])


async def test_responses_say_close_only_while_draining() -> None:
    """While the server drains every response says `Connection: close`; before, none does."""
    assert (b"connection", b"close") not in await answer_head(draining=False)
    assert await answer_head(draining=True) == [(b"x", b"1"), (b"connection", b"close")]


async def test_a_connection_sleep_ends_when_its_client_is_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """hypercorn's WebSocket ping loop sleeps through the connection's context: the sleep
    ends as soon as the client has gone, not a ping interval later."""
    gone = trio.Event()
    worker = WorkerContext(None)
    context = ClientContext(worker, gone)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(context.sleep, 20.0)
        await trio.sleep(1.0)
        gone.set()
    assert trio.current_time() < 2.0
    await context.sleep(5.0)  # once gone, no sleep waits at all
    assert trio.current_time() < 2.0
    assert context.terminated is worker.terminated  # the rest is the worker's own context
