"""Sign in with GitHub or OIDC: the redirect routes, the flow cookie, readable failures."""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio
from quart import Blueprint, Response, jsonify, request

from agentserver.api.auditing import record
from agentserver.api.auth import new_session, record_sign_in, set_session_cookie, user_target
from agentserver.api.common import deps, error_response, session_cookie
from agentserver.audit import Action, Actor, Result
from agentserver.auth.identities import Policy, SignInFailed, resolve_identity
from agentserver.auth.oidc import (
    FLOW_LIFETIME,
    OidcProvider,
    Provider,
    flow_for,
    provider_list,
    providers_from_settings,
)
from agentserver.auth.sessions import revoke_session
from agentserver.auth.tokens import hash_token, new_token, same
from agentserver.errors import AgentServerError, NotFound
from agentserver.models import User
from agentserver.settings import Settings

log = logging.getLogger(__name__)
blueprint = Blueprint("oidc", __name__, url_prefix="/api/auth")
DISCOVERY_AT_START = 5.0  # seconds; a slow provider must not hold up the server's start
MAX_PARAM = 2048


@dataclass(frozen=True, slots=True)
class LoginState:
    provider: str
    browser_hash: str


def flow_cookie(settings: Settings) -> str:
    # `__Host-` cookies cannot be planted by a sandbox subdomain (cookie tossing); they need https.
    return "__Host-agentserver_oauth" if settings.secure_cookies else "agentserver_oauth"


def configured() -> Mapping[str, Provider]:
    return deps().oidc_providers


def redirect_uri(settings: Settings, provider_id: str) -> str:
    return f"{settings.oidc_redirect_base_url}/api/auth/oidc/{provider_id}/callback"


def policy(settings: Settings, provider_id: str) -> Policy:
    """New SSO accounts need open registration or an allow-list: GitHub alone admits anyone."""
    restricted = bool(settings.oidc_allowed_domains) or (
        provider_id == "github" and bool(settings.github_allowed_orgs)
    )
    return Policy(
        link_by_email=settings.oidc_link_by_email,
        allowed_domains=settings.oidc_allowed_domains,
        open_signup=settings.allow_registration or restricted,
    )


def _provider(provider_id: str) -> Provider:
    found = configured().get(provider_id)
    if found is None:
        raise NotFound(f"sign-in provider {provider_id!r} is not configured on this server")
    return found


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Sign-in failed</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;
color:#222}}h1{{font-size:1.4rem}}a{{color:#0645ad}}</style></head>
<body><h1>Sign-in failed</h1><p>{message}</p><p><a href="/">Back to the sign-in page</a></p>
</body></html>
"""


def failure_page(exc: AgentServerError) -> Response:
    """The error as JSON for API clients, else a readable page; never sets a session."""
    accepted = request.accept_mimetypes.best_match(["text/html", "application/json"])
    if accepted == "application/json":
        response = error_response(exc.status, exc.code, exc.message)
    else:
        response = Response(
            _PAGE.format(message=html.escape(exc.message)),
            status=exc.status,
            content_type="text/html; charset=utf-8",
        )
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'"
        )
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/providers")
async def providers() -> Response:
    """The sign-in providers this server offers (GitHub, SSO), for the sign-in page."""
    await trio.lowlevel.checkpoint()
    return jsonify(provider_list(configured()))


@blueprint.get("/oidc/<provider_id>")
async def start(provider_id: str) -> Response:
    """Send the browser to the provider, with state, PKCE and nonce bound to this browser."""
    await trio.lowlevel.checkpoint()  # every path, the 404 included, is a cancel point
    try:
        provider = _provider(provider_id)
        settings = deps().settings
        browser_secret, state = new_token(), new_token()
        url = await provider.authorization_url(
            redirect_uri(settings, provider.id), flow_for(browser_secret, state)
        )
        await deps().db.exec("oidc_delete_expired_login_states")
        await deps().db.exec(
            "oidc_create_login_state",
            state_hash=hash_token(state),
            provider=provider.id,
            browser_hash=hash_token(browser_secret),
            lifetime=FLOW_LIFETIME,
        )
    except AgentServerError as exc:
        return failure_page(exc)
    return with_flow_cookie(see_other(url), settings, browser_secret)


def with_flow_cookie(response: Response, settings: Settings, secret: str | None) -> Response:
    """`response` setting the flow's browser-binding cookie (clearing it when `secret` is
    None), kept out of caches and Referer headers: both ends of a sign-in answer this way."""
    if secret is None:
        response.delete_cookie(
            flow_cookie(settings),
            path="/",
            httponly=True,
            samesite="Lax",
            secure=settings.secure_cookies,
        )
    else:
        response.set_cookie(
            flow_cookie(settings),
            secret,
            max_age=FLOW_LIFETIME,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=settings.secure_cookies,
        )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def see_other(url: str) -> Response:
    """A plain 302 (quart's `redirect` is typed as werkzeug's response)."""
    return Response("", status=302, headers={"Location": url})


def _fail(message: str, code: str = "invalid_state", status: int = 400) -> SignInFailed:
    return SignInFailed(message, status=status, code=code)


async def _complete(provider: Provider, args: Any, browser_secret: str | None) -> User:
    """Check the callback against the stored flow, then ask the provider who this is."""
    state = args.get("state", "")
    if not state or len(state) > MAX_PARAM:
        raise _fail(
            "The answer from the provider has no sign-in state. Please start again.",
            "missing_state",
        )
    if not browser_secret:
        raise _fail(
            "This sign-in was started in another browser, or took too long. Please start again."
        )
    row = await deps().db.one("oidc_take_login_state", LoginState, state_hash=hash_token(state))
    if row is None:
        raise _fail("This sign-in link was already used or has expired. Please start again.")
    if row.provider != provider.id or not same(row.browser_hash, hash_token(browser_secret)):
        raise _fail("This sign-in was started in another browser. Please start again.")
    error = args.get("error")
    if error == "access_denied":
        raise _fail(f"You declined the sign-in at {provider.name}.", "access_denied", 403)
    if error:
        message = f"{provider.name} could not sign you in ({str(error)[:60]})."
        raise _fail(message, "provider_refused")
    code = args.get("code", "")
    if not code or len(code) > MAX_PARAM:
        raise _fail("The answer from the provider has no authorization code.", "missing_code")
    settings = deps().settings
    identity = await provider.identity(
        code, redirect_uri(settings, provider.id), flow_for(browser_secret, state)
    )
    user, created = await resolve_identity(deps().db, identity, policy(settings, provider.id))
    if created:
        await record(
            Action.REGISTERED,
            user_target(user),
            actor=Actor.user(user.id, user.username),
            details={"method": "github" if provider.id == "github" else "oidc"},
        )
    return user


@blueprint.get("/oidc/<provider_id>/callback")
async def callback(provider_id: str) -> Response:
    """Finish the sign-in: on success a session cookie and a redirect home, else a readable page."""
    await trio.lowlevel.checkpoint()
    settings = deps().settings
    # What the audit log calls this way of signing in (the provider's id goes in its details).
    method = "github" if provider_id == "github" else "oidc"
    user: User | None = None
    try:
        provider = _provider(provider_id)
        user = await _complete(provider, request.args, request.cookies.get(flow_cookie(settings)))
        token = await new_session(user)  # 403 for a disabled user, as every sign-in
        # Whoever this browser was signed in as before, that session ends here (no fixation).
        await revoke_session(deps().db, request.cookies.get(session_cookie()))
    except AgentServerError as exc:
        log.info("sign-in with %r failed: %s", provider_id[:40], exc.code)
        response = failure_page(exc)
        await record_sign_in(
            user, method, Result.REFUSED, reason=exc.code, provider=provider_id[:40]
        )
    except Exception:
        # Whatever went wrong, nobody is signed in and the person gets a page, not a 500.
        log.exception("sign-in with %r failed unexpectedly", provider_id[:40])
        response = failure_page(
            SignInFailed(
                "The sign-in could not be completed; the server log has details.",
                status=502,
                code="sign_in_error",
            )
        )
        await record_sign_in(
            user, method, Result.FAILED, reason="sign_in_error", provider=provider_id[:40]
        )
    else:
        log.info("user %s signed in with %s", user.id, provider_id)
        response = see_other("/")
        set_session_cookie(response, token)
        await record_sign_in(user, method, provider=provider_id)
    return with_flow_cookie(response, settings, None)


async def sign_in_providers(settings: Settings) -> Mapping[str, Provider]:
    """The configured sign-in providers by id (none: password sign-in only); a half
    configuration stops the start, and OIDC providers are discovered early."""
    found = providers_from_settings(settings)
    await trio.lowlevel.checkpoint()
    for provider in found.values():
        if isinstance(provider, OidcProvider):
            await _discover_at_start(provider)
    return found


async def _discover_at_start(provider: OidcProvider) -> None:
    with trio.move_on_after(DISCOVERY_AT_START) as scope:
        await trio.lowlevel.checkpoint()
        try:
            await provider.metadata()
            return
        except SignInFailed as exc:
            reason = exc.message
    if scope.cancelled_caught:
        reason = "no answer in time"
    log.warning(
        "OIDC discovery at %s failed (%s); it is retried at the next sign-in",
        provider.issuer_url,
        reason,
    )
