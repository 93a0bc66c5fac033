"""`GET /api/sandboxes/{id}/open`: hand a member over to the sandbox's own subdomain.

The main session cookie stays on the main host. This route checks membership, mints a
one-time ticket (≤ 60 s, stored hashed) and redirects the browser to the sandbox's subdomain,
which spends the ticket for a cookie scoped to that sandbox and user (proxy/subdomain.py).

The ticket is bound to the browser that asked (auth/tickets.py): the sandbox host starts the
flow by giving the browser a nonce and sending it here with `?bind=<sha256 of the nonce>`.
Without `bind` (the dashboard's Open button), this route first sends the browser to the
sandbox host's `/_agentserver/auth`, which comes back with one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from quart import Blueprint, Response, request

from agentserver.api.common import deps, optional_user, require, session_cookie
from agentserver.auth.permissions import Action
from agentserver.auth.tickets import is_binding, mint_ticket
from agentserver.deps import Deps
from agentserver.errors import Invalid, NotFound, Unauthenticated
from agentserver.kinds import kind_of
from agentserver.models import Sandbox

blueprint = Blueprint("sandbox_open", __name__, url_prefix="/api/sandboxes")


def sandbox_url(sandbox_id: str, sandbox_type: str, path: str = "/") -> str:
    """The browser URL of a sandbox's subdomain."""
    settings = deps().settings
    prefix = kind_of(sandbox_type).prefix  # the kinds table, as proxy/routing.py reads it
    return f"{settings.base_scheme}://{prefix}{sandbox_id}.{settings.domain}{path}"


@blueprint.get("/<sandbox_id>/open")
async def open_sandbox(sandbox_id: str) -> Response:
    """Redirect a member (guests too: read-only) to the sandbox with a one-time ticket."""
    if await optional_user() is None and "text/html" in request.headers.get("Accept", ""):
        # A browser that is not signed in: the dashboard signs in, then the user opens again.
        return _redirect(deps().settings.main_url + "/")
    sandbox = await deps().db.one("proxy_get_sandbox", Sandbox, id=sandbox_id.lower())
    if sandbox is None:
        await _signed_in()
        raise NotFound("sandbox not found")
    try:
        user, _ = await require(sandbox.workspace_id, Action.VIEW_SANDBOX)
    except NotFound:
        raise NotFound("sandbox not found") from None
    bind = request.args.get("bind", "")
    if not bind:
        return _redirect(sandbox_url(sandbox.id, sandbox.type, "/_agentserver/auth"))
    if not is_binding(bind):
        raise Invalid("bind: must be the 64 hex digits the sandbox's host sent", field="bind")
    session = request.cookies.get(session_cookie(), "")
    ticket = await mint_ticket(deps().db, sandbox.id, user.id, session, bind)
    return _redirect(sandbox_url(sandbox.id, sandbox.type, f"/_agentserver/auth?ticket={ticket}"))


def _redirect(location: str) -> Response:
    # no-store and no-referrer: the ticket in Location must not be cached or passed on.
    return Response(
        "",
        status=302,
        headers={
            "Location": location,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


async def _signed_in() -> None:
    if await optional_user() is None:
        raise Unauthenticated("sign in first")


@asynccontextmanager
async def register(deps: Deps) -> AsyncIterator[None]:
    """Feature opener (serve.FEATURES): adds this blueprint before the app is created."""
    deps.extras.setdefault("blueprints", []).append(blueprint)
    yield
