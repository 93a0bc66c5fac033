"""Opening a sandbox as a browser does: /open, the sandbox host's binding nonce, the ticket."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

BIND_COOKIE = "agentserver_bind"
SANDBOX_COOKIE = "agentserver_sandbox"


async def bound_ticket(
    main: httpx.AsyncClient, sub: httpx.AsyncClient, sandbox_id: str
) -> tuple[str, str]:
    """The ticket URL a signed-in `main` client is sent to, and the binding nonce that `sub`
    (a client of the sandbox's host) was given: /open → the sandbox host → /open?bind= →."""
    opened = await main.get(f"/api/sandboxes/{sandbox_id}/open")
    assert opened.status_code == 302, opened.text
    start = urlsplit(opened.headers["location"])
    assert (start.path, start.query) == ("/_agentserver/auth", ""), start
    started = await sub.get(start.path, headers={"Cookie": ""})
    assert started.status_code == 302, started.text
    nonce = started.cookies[BIND_COOKIE]
    back = urlsplit(started.headers["location"])
    ticketed = await main.get(f"{back.path}?{back.query}")
    assert ticketed.status_code == 302, ticketed.text
    return ticketed.headers["location"], nonce


async def redeem(sub: httpx.AsyncClient, ticket_url: str, nonce: str) -> httpx.Response:
    """Spend a ticket on the sandbox host as the browser holding `nonce`."""
    url = urlsplit(ticket_url)
    return await sub.get(f"{url.path}?{url.query}", headers={"Cookie": f"{BIND_COOKIE}={nonce}"})


async def sandbox_cookie(main: httpx.AsyncClient, sub: httpx.AsyncClient, sandbox_id: str) -> str:
    """The sandbox cookie's value, through the whole bound sign-in."""
    ticket_url, nonce = await bound_ticket(main, sub, sandbox_id)
    redeemed = await redeem(sub, ticket_url, nonce)
    assert redeemed.status_code == 302, redeemed.text
    return str(redeemed.cookies[SANDBOX_COOKIE])
