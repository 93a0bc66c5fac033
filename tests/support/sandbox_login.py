"""Opening a sandbox as a browser does: /open, the sandbox host's binding nonce, the ticket."""

from __future__ import annotations

from typing import Any
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


async def sandbox_host(main: httpx.AsyncClient, sandbox_id: str) -> str:
    """The sandbox's host (`oc-…`/`claw-…`), as /open names it in its redirect."""
    opened = await main.get(f"/api/sandboxes/{sandbox_id}/open")
    assert opened.status_code == 302, opened.text
    return urlsplit(opened.headers["location"]).netloc


async def sandbox_client(
    server_url: str,
    main: httpx.AsyncClient,
    sandbox_id: str,
    *,
    origin: bool = False,
    host: str | None = None,
    **options: Any,
) -> httpx.AsyncClient:
    """A client of the sandbox's host (Host header to `server_url`) signed in as `main`'s
    user through /open and the one-time ticket, as a browser is; with `origin`, it also sends
    the sandbox's own Origin. `options` go to httpx (timeout 30 s unless given)."""
    host = host or await sandbox_host(main, sandbox_id)
    headers = {"Host": host, **({"Origin": f"http://{host}"} if origin else {})}
    options.setdefault("timeout", 30)
    async with httpx.AsyncClient(base_url=server_url, headers=headers, **options) as sub:
        token = await sandbox_cookie(main, sub, sandbox_id)
    headers["Cookie"] = f"{SANDBOX_COOKIE}={token}"
    # Not used yet, so the caller may still open it with `async with`.
    return httpx.AsyncClient(base_url=server_url, headers=headers, **options)
