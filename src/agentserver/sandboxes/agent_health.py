"""Whether a local agent's opencode answers: a health request through the agent's tunnel.

The agent answers a request it cannot forward with 502 and names where it looked in the
`x-agentserver-opencode-unreachable` header (an older agent sends the 502 alone). The server
asks `GET /global/health` on every tunnel heartbeat and keeps the answer, in words, as the
running sandbox's status reason; `None` means opencode answers.
"""

from __future__ import annotations

import trio

from agentserver.tunnel import StreamLimitReached, StreamResetError, Tunnel, TunnelClosed

HEALTH_TARGET = "/global/health"  # opencode's own health route: cheap, answers locally
PROBE_TIMEOUT = 10.0
UNREACHABLE_HEADER = "x-agentserver-opencode-unreachable"  # as agent/forward.py sends it


def where(url: str) -> str:
    """`http://127.0.0.1:4096/` → `127.0.0.1:4096`: the address as a person would say it."""
    return url.split("://", 1)[-1].rstrip("/")


async def opencode_health(tunnel: Tunnel) -> str | None:
    """None when the agent's opencode answers (any status but the agent's 502); otherwise why
    not. A tunnel that is ending counts as answering: its status goes offline instead."""
    try:
        with trio.move_on_after(PROBE_TIMEOUT) as waited:
            stream = await tunnel.open_request("GET", HEALTH_TARGET, body=False)
            try:
                status, headers = await stream.receive_response_head()
            finally:
                await stream.aclose()
    except (TunnelClosed, StreamResetError, StreamLimitReached):
        await trio.lowlevel.checkpoint()  # refused before anything was awaited
        return None
    if waited.cancelled_caught:
        return f"opencode is not answering: the agent gave no answer in {PROBE_TIMEOUT:.0f} s"
    if status != 502:
        return None
    address = next((v for n, v in headers if n.lower() == UNREACHABLE_HEADER), None)
    if address:
        return f"opencode is not answering on {where(address)}"
    return "opencode is not answering on the agent's machine"
