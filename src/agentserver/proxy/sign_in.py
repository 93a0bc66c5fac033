"""Signing a browser in on a sandbox host: the binding nonce, the way to the main host's /open,
and the redemption of the one-time ticket for the host's own cookie (auth/tickets.py says why
the ticket is bound to the browser). A preview host (`p{port}-{id}`) signs in the same way,
with its port passed along to /open so the ticket comes back to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from agentserver.auth.tickets import (
    BIND_LIFETIME,
    bind_cookie_name,
    binding_of,
    new_binding,
    redeem_ticket,
    sandbox_cookie_name,
)
from agentserver.db.database import Database
from agentserver.proxy import pages
from agentserver.proxy.headers import Headers, cookie_values
from agentserver.proxy.http import Scope, Send
from agentserver.proxy.routing import Preview, Route
from agentserver.settings import Settings

AUTH_PATH = "/_agentserver/auth"
SESSION_MAX_AGE = 12 * 3600
# How the subdomain proxy answers with one of its pages (SubdomainProxy.page).
PageAnswer = Callable[[Scope, Send, pages.Page], Awaitable[None]]


async def respond(send: Send, status: int, headers: Headers, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class SignIn:
    """The sign-in of one server's sandbox hosts."""

    def __init__(self, settings: Settings, db: Database, page: PageAnswer) -> None:
        self.settings = settings
        self.db = db
        self.page = page
        self.cookie = sandbox_cookie_name(settings.secure_cookies)
        self.bind_cookie = bind_cookie_name(settings.secure_cookies)

    async def sign_in(
        self, target: Route, scope: Scope, send: Send, method: str, headers: Headers
    ) -> None:
        """No valid cookie: browsers go through the main site's open (which re-checks access
        and comes back with a ticket bound to this browser); API clients get 401."""
        if scope["type"] == "http" and pages.wants_html(method, headers):
            await self.start_binding(target, scope, send)
            return
        await self.page(scope, send, pages.SIGN_IN)

    async def start_binding(self, target: Route, scope: Scope, send: Send) -> None:
        """Give this browser a binding nonce (keeping one it already has, so two tabs opening
        at once both succeed) and send it to the main host's /open with the nonce's hash;
        auth/tickets.py explains why."""
        held = cookie_values(scope["headers"], self.bind_cookie)
        binding = binding_of(held[0]) if held else None
        cookie = b""
        if binding is None:
            nonce, binding = new_binding()
            cookie = self.cookie_header(self.bind_cookie, nonce, BIND_LIFETIME)
        location = f"{self.settings.main_url}/api/sandboxes/{target.sandbox_id}/open?bind={binding}"
        if isinstance(target, Preview):
            location += f"&port={target.port}"
        await respond(
            send,
            302,
            [
                (b"location", location.encode()),
                *([(b"set-cookie", cookie)] if cookie else []),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
                (b"content-length", b"0"),
            ],
        )

    def cookie_header(self, name: str, value: str, max_age: int) -> bytes:
        # Host-only (no Domain): the cookie goes to this sandbox's host and nowhere else.
        cookie = f"{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
        if self.settings.secure_cookies:
            cookie += "; Secure"
        return cookie.encode()

    async def redeem(self, target: Route, scope: Scope, send: Send) -> None:
        """`/_agentserver/auth?ticket=…`: spend the ticket (if it was minted for this browser),
        set the sandbox cookie, go to `/`. Without a ticket: start the bound sign-in."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ticket = (query.get("ticket") or [""])[0]
        if scope["method"] == "GET" and not ticket:
            await self.start_binding(target, scope, send)
            return
        token = None
        if scope["method"] == "GET":
            nonces = cookie_values(scope["headers"], self.bind_cookie)
            token = await redeem_ticket(
                self.db,
                target.sandbox_id,
                ticket,
                nonces[0] if nonces else None,
                lifetime=SESSION_MAX_AGE,
            )
        if token is None:
            await self.page(scope, send, pages.LINK_EXPIRED)
            return
        await respond(
            send,
            302,
            [
                (b"location", b"/"),
                (b"set-cookie", self.cookie_header(self.cookie, token, SESSION_MAX_AGE)),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
                (b"content-length", b"0"),
            ],
        )
