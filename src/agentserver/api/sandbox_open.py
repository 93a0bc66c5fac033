"""`GET /api/sandboxes/{id}/open`: hand a member over to the sandbox's own subdomain.

The main session cookie stays on the main host. This route checks membership, mints a
one-time ticket (≤ 60 s, stored hashed) and redirects the browser to the sandbox's subdomain,
which spends the ticket for a cookie scoped to that sandbox and user (proxy/subdomain.py).

The ticket is bound to the browser that asked (auth/tickets.py): the sandbox host starts the
flow by giving the browser a nonce and sending it here with `?bind=<sha256 of the nonce>`.
Without `bind` (the dashboard's Open button), this route first sends the browser to the
sandbox host's `/_agentserver/auth`, which comes back with one.

With `?port=N` the same flow opens the sandbox's preview of port N (`p{N}-{id}`): the ticket is
the sandbox's, redeemed on (and bound to the nonce of) the preview's own host.

`POST /api/sandboxes/{id}/launch` (the command line's `sandboxes open`) makes a link to this
route with `?launch=<one-time secret>` (auth/cli_logins.py): it works once, in a browser signed
in as the same user, and goes on as above. API tokens never open a sandbox themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from quart import Blueprint, Response, request

from agentserver import status_page
from agentserver.api.common import (
    current_user,
    deps,
    optional_user,
    refuse_tokens,
    require,
    rfc3339,
    session_cookie,
)
from agentserver.api.sandboxes import preview_url, sandbox_for, sandbox_url
from agentserver.auth.cli_logins import LAUNCH_TTL, mint_launch, spend_launch
from agentserver.auth.permissions import Action
from agentserver.auth.tickets import is_binding, may_view, mint_ticket
from agentserver.errors import AgentServerError, Forbidden, Invalid, NotFound, Unauthenticated
from agentserver.kinds import preview_refusal
from agentserver.models import Sandbox

blueprint = Blueprint("sandbox_open", __name__, url_prefix="/api/sandboxes")


# What a person sees when opening is refused (the same words as the sandbox host's pages).
_REFUSED = {
    404: (
        "Sandbox not found",
        "This sandbox does not exist any more, or you are not a member of its workspace.",
    ),
    403: ("Not allowed", "Your role in this workspace does not let you open this sandbox."),
    400: ("Link not valid", "This link to the sandbox is not valid. Open it from the dashboard."),
    401: ("Sign in needed", "Sign in on the dashboard, then open the sandbox again."),
}


@blueprint.get("/<sandbox_id>/open")
async def open_sandbox(sandbox_id: str) -> Response:
    """Redirect a member (guests too: read-only) to the sandbox with a one-time ticket.

    A browser navigation that is refused gets a page with a way back, never raw JSON; API
    clients get the JSON error as from every other route."""
    await refuse_tokens("open a sandbox (`agentserver sandboxes open` makes a link for a browser)")
    navigation = "text/html" in request.headers.get("Accept", "")
    if await optional_user() is None and navigation:
        # A browser that is not signed in: the dashboard signs in, then the user opens again.
        return _redirect(deps().settings.main_url + "/")
    try:
        await _spend_launch(sandbox_id)
        return await _open(sandbox_id)
    except (NotFound, Forbidden, Invalid, Unauthenticated) as exc:
        if not navigation:
            raise
        return _refused_page(exc)


async def _spend_launch(sandbox_id: str) -> None:
    """With `?launch=`: spend the link (once, whoever asks) and check it is this user's."""
    link = request.args.get("launch")
    user = await current_user()
    if link is None:
        return
    owner = await spend_launch(deps().db, sandbox_id.lower(), link)
    if owner is None:
        raise Invalid("this link was already used or has expired; make a new one", field="launch")
    if owner != user.id:
        raise Forbidden("this link was made for another user")


@blueprint.post("/<sandbox_id>/launch")
async def launch_sandbox(sandbox_id: str) -> dict[str, Any]:
    """A link that opens the sandbox once, in a browser signed in as the caller (for the
    command line; whoever may open the sandbox)."""
    sandbox, _ = await sandbox_for(sandbox_id, Action.VIEW_SANDBOX)
    user = await current_user()
    link = await mint_launch(deps().db, sandbox.id, user.id)
    expires = datetime.now(UTC) + timedelta(seconds=LAUNCH_TTL)
    url = f"{deps().settings.main_url}/api/sandboxes/{sandbox.id}/open?launch={link}"
    return {"url": url, "expiresAt": rfc3339(expires)}


def _refused_page(exc: AgentServerError) -> Response:
    title, message = _REFUSED[exc.status]
    back = (deps().settings.main_url + "/workspaces", "Back to your workspaces")
    reason = None if exc.status == 404 else exc.message  # a 404 never says which it was
    body = status_page.render(title, message, exc.status, reason=reason, back=back)
    return Response(
        body,
        status=exc.status,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _open(sandbox_id: str) -> Response:
    sandbox = await deps().db.one("proxy_get_sandbox", Sandbox, id=sandbox_id.lower())
    if sandbox is None:
        await _signed_in()
        raise NotFound("sandbox not found")
    try:
        user, role = await require(sandbox.workspace_id, Action.VIEW_SANDBOX)
    except NotFound:
        raise NotFound("sandbox not found") from None
    if not may_view(role, user.id, sandbox.private, sandbox.created_by):
        raise Forbidden(
            "this sandbox is private: only its creator, owners and maintainers may open it"
        )
    port = _preview_port(sandbox)
    bind = request.args.get("bind", "")
    if not bind:
        return _redirect(_url(sandbox, port, "/_agentserver/auth"))
    if not is_binding(bind):
        raise Invalid("bind: must be the 64 hex digits the sandbox's host sent", field="bind")
    session = request.cookies.get(session_cookie(), "")
    ticket = await mint_ticket(deps().db, sandbox.id, user.id, session, bind)
    return _redirect(_url(sandbox, port, f"/_agentserver/auth?ticket={ticket}"))


def _preview_port(sandbox: Sandbox) -> int | None:
    """The `port` asked for (a preview), checked; None to open the agent itself."""
    text = request.args.get("port")
    if text is None:
        return None
    port = int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else 0
    if preview_refusal(port, sandbox.endpoint_port) is not None:
        raise Invalid("port: not a port this sandbox's previews serve", field="port")
    return port


def _url(sandbox: Sandbox, port: int | None, path: str) -> str:
    settings = deps().settings
    if port is None:
        return sandbox_url(sandbox, settings, path)
    return preview_url(sandbox.id, port, settings, path)


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
