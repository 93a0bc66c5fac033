"""Relaying a WebSocket (opencode's terminal) between the browser and a sandbox's agent.

The upgrade is accepted only after the caller's checks (cookie, role, `Origin`) and after the
agent accepted its side, so the browser gets the agent's chosen subprotocol. Two pumps run in
one nursery; the first to end closes both sides, passing the close code on.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from agentserver.errors import SandboxUnreachable
from agentserver.proxy.headers import Headers
from agentserver.proxy.http import ACTIVITY_INTERVAL, Receive, Scope, Send
from agentserver.proxy.upstream import Upstream
from agentserver.proxy.upstream_socket import UpstreamClosed, UpstreamSocket

# Codes that describe a close but may not be sent in a close frame (RFC 6455 §7.4.1).
_UNSENDABLE = {1005: 1000, 1006: 1011, 1015: 1011}
GOING_AWAY = 1001


def sendable(code: int | None, abnormal: int | None = None) -> int:
    """A close code that may go on the wire for `code` (None: a normal close); `abnormal`
    replaces 1006 when given."""
    if code is None:
        return 1000
    if code == 1006 and abnormal is not None:
        return abnormal
    return _UNSENDABLE.get(code, code)


def subprotocols_of(scope: Scope) -> list[str]:
    return [str(p) for p in scope.get("subprotocols", ())]


async def reject(scope: Scope, send: Send, status: int, body: bytes, content_type: bytes) -> None:
    """Refuse an upgrade with a plain HTTP answer where the server supports that (ASGI
    `websocket.http.response`), else with a bare close (the server answers 403)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


async def proxy_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    upstream: Upstream,
    target: str,
    headers: Headers,
    on_activity: Callable[[], None],
) -> None:
    """Connect to the agent, accept the browser, and relay messages until either side closes.

    The caller has read the `websocket.connect` message and done every check.
    """
    try:
        async with upstream.websocket(target, headers, subprotocols_of(scope)) as agent:
            await send({"type": "websocket.accept", "subprotocol": agent.subprotocol})
            on_activity()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    _browser_to_agent, receive, agent, nursery.cancel_scope, on_activity
                )
                nursery.start_soon(
                    _agent_to_browser, agent, send, nursery.cancel_scope, on_activity
                )
                nursery.start_soon(_keep_awake, on_activity)
    except SandboxUnreachable:
        await send({"type": "websocket.close", "code": 1011})


async def _browser_to_agent(
    receive: Receive, agent: UpstreamSocket, done: trio.CancelScope, on_activity: Callable[[], None]
) -> None:
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                with trio.move_on_after(5) as cleanup:
                    cleanup.shield = True
                    # hypercorn reports any browser close as 1006 (it drops the browser's own
                    # code), so the agent is told the browser went away.
                    await agent.aclose(sendable(message.get("code"), abnormal=GOING_AWAY))
                return
            if message["type"] == "websocket.receive":
                text = message.get("text")
                await agent.send_message(text if text is not None else message.get("bytes") or b"")
                on_activity()
    except UpstreamClosed:
        await trio.lowlevel.checkpoint()
        return  # the agent closed; the other pump tells the browser
    finally:
        done.cancel()


async def _agent_to_browser(
    agent: UpstreamSocket, send: Send, done: trio.CancelScope, on_activity: Callable[[], None]
) -> None:
    try:
        while True:
            try:
                message = await agent.get_message()
            except UpstreamClosed as closed:
                await send(
                    {
                        "type": "websocket.close",
                        "code": sendable(closed.code),
                        "reason": closed.reason or "",
                    }
                )
                return
            if isinstance(message, str):
                await send({"type": "websocket.send", "text": message})
            else:
                await send({"type": "websocket.send", "bytes": message})
            on_activity()
    finally:
        done.cancel()


async def _keep_awake(on_activity: Callable[[], None]) -> None:
    while True:
        await trio.sleep(ACTIVITY_INTERVAL)
        on_activity()
