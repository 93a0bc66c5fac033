"""Personal API tokens: the owner's list, create and revoke; admins' list and revoke of anyone's;
and the command line's sign-in approved in a browser (`agentserver login`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import trio
from pydantic import Field
from quart import Blueprint, Response, request
from quart_schema import validate_request

from agentserver.api.auditing import record
from agentserver.api.common import (
    Body,
    Name,
    client_address,
    current_user,
    deps,
    grant,
    refuse_tokens,
    require,
    require_admin,
    rfc3339,
)
from agentserver.api.revocation import access_ended
from agentserver.audit import Action as AuditAction
from agentserver.audit import Actor, Target
from agentserver.auth import cli_logins
from agentserver.auth.api_tokens import (
    DEFAULT_LIFETIME,
    NAME_MAX,
    TokenInfo,
    create_token,
    list_tokens,
    revoke_token,
    token_access_key,
)
from agentserver.auth.permissions import Action
from agentserver.auth.revocation import Revocation
from agentserver.errors import Invalid, NotFound, RateLimited
from agentserver.models import User

blueprint = Blueprint("tokens", __name__, url_prefix="/api")

DAY = 86400.0
_POLL_INTERVAL = 2  # seconds the command line waits between polls


class TokenBody(Body):
    """A new token: a name, `read` (GET only) or `full`, optionally one workspace, and days
    until it expires (default 30, at most the server's --max-token-lifetime)."""

    name: Name = Field(min_length=1, max_length=NAME_MAX)
    scope: Literal["read", "full"] = "full"
    workspace_id: str | None = Field(default=None, max_length=64)
    expires_in_days: int | None = Field(default=None, ge=1, le=36500)


class CodeBody(Body):
    code: str = Field(min_length=1, max_length=200)
    approve: bool = True


class PollBody(Body):
    request: str = Field(min_length=1, max_length=200)


def token_json(info: TokenInfo) -> dict[str, Any]:
    """A token in the API's shape (never the token or its hash); `state`: active, expired or
    revoked."""
    now = datetime.now(UTC)
    state = "revoked" if info.revoked_at else "expired" if info.expires_at <= now else "active"
    return {
        "id": info.id,
        "name": info.name,
        "scope": info.scope,
        "workspaceId": info.workspace_id,
        "userId": info.user_id,
        "username": info.username,
        "createdAt": rfc3339(info.created_at),
        "lastUsedAt": rfc3339(info.last_used_at),
        "expiresAt": rfc3339(info.expires_at),
        "revokedAt": rfc3339(info.revoked_at),
        "state": state,
    }


def lifetime_of(days: int | None) -> float:
    """Seconds a new token lives: `days`, or 30 days (the server's maximum when shorter)."""
    longest = deps().settings.max_token_lifetime
    if days is None:
        return min(DEFAULT_LIFETIME, longest)
    if days * DAY > longest:
        most = max(1, int(longest // DAY))
        raise Invalid(
            f"expiresInDays: this server allows at most {most} days", field="expiresInDays"
        )
    return days * DAY


async def checked_workspace(workspace_id: str | None) -> str | None:
    """The workspace a new token is limited to, if the caller is a member (404 otherwise)."""
    if workspace_id is None:
        await trio.lowlevel.checkpoint()
        return None
    await require(workspace_id, Action.VIEW_WORKSPACE)
    return workspace_id


@blueprint.get("/tokens")
async def my_tokens() -> list[dict[str, Any]]:
    """The caller's tokens, newest first, with their state (active, expired, revoked)."""
    user = await current_user()
    return [token_json(t) for t in await list_tokens(deps().db, user.id)]


@blueprint.post("/tokens")
@validate_request(TokenBody)
async def create_my_token(data: TokenBody) -> tuple[dict[str, Any], int]:
    """Create a token; the answer's `token` is shown this once and never again (a browser
    session only: a token cannot mint tokens)."""
    await refuse_tokens("create tokens")
    user = await current_user()
    workspace_id = await checked_workspace(data.workspace_id)
    lifetime = lifetime_of(data.expires_in_days)
    token, info = await create_token(
        deps().db, user.id, data.name, data.scope, workspace_id, lifetime
    )
    await record_token(AuditAction.TOKEN_CREATED, info)
    return {**token_json(info), "token": token}, 201


async def record_token(action: AuditAction, info: TokenInfo, actor: Actor | None = None) -> None:
    await record(
        action,
        Target.of("token", info.id, info.name),
        info.workspace_id,
        actor=actor,
        details={"scope": info.scope, "owner": info.username},
    )


@blueprint.delete("/tokens/<token_id>")
async def revoke_mine(token_id: str) -> Response:
    """Revoke one of the caller's tokens (with a browser session; a token may revoke only
    itself, as `agentserver logout` does)."""
    user = await current_user()
    limits = grant()
    if limits is not None and limits.token_id != token_id:
        await refuse_tokens("revoke other tokens")
    revoked = await revoke_token(deps().db, token_id, user.id)
    if revoked is None:
        raise NotFound("token not found")
    await record_token(AuditAction.TOKEN_REVOKED, revoked)
    await access_ended(Revocation(revoked.user_id, session_hash=token_access_key(revoked.id)))
    return Response("", status=204)


@blueprint.get("/admin/tokens")
async def all_tokens() -> list[dict[str, Any]]:
    """Every user's tokens, newest first (server admins only; the 1000 newest)."""
    await require_admin()
    return [token_json(t) for t in await list_tokens(deps().db, None)]


@blueprint.delete("/admin/tokens/<token_id>")
async def revoke_any(token_id: str) -> Response:
    """Revoke anyone's token (server admins only, with a browser session)."""
    await refuse_tokens("revoke tokens")
    await require_admin()
    revoked = await revoke_token(deps().db, token_id, None)
    if revoked is None:
        raise NotFound("token not found")
    await record_token(AuditAction.TOKEN_REVOKED, revoked)
    await access_ended(Revocation(revoked.user_id, session_hash=token_access_key(revoked.id)))
    return Response("", status=204)


@blueprint.post("/cli-login")
@validate_request(TokenBody)
async def start_cli_login(data: TokenBody) -> tuple[dict[str, Any], int]:
    """Start a command-line sign-in: `request` is the caller's to poll with; `approveUrl`
    (with the code) is for the person, who approves it in a signed-in browser."""
    # Every start counts (each holds a row until it expires): counted unless refused.
    wait = await deps().code_throttle.spend(f"cli-login:{client_address()}")
    if wait:
        raise RateLimited("too many command-line sign-ins; try again later", retry_after=wait)
    lifetime = lifetime_of(data.expires_in_days)
    secret, code = await cli_logins.start_login(
        deps().db, data.name, data.scope, data.workspace_id, lifetime
    )
    return {
        "request": secret,
        "code": code,
        "approveUrl": f"{deps().settings.main_url}/cli-login?code={code}",
        "expiresIn": int(cli_logins.LOGIN_TTL),
        "interval": _POLL_INTERVAL,
    }, 201


@blueprint.get("/cli-login/pending")
async def pending_cli_login() -> dict[str, Any]:
    """What the approval page shows about the sign-in waiting under `?code=` (signed in)."""
    await refuse_tokens("approve a command-line sign-in")
    await current_user()
    pending = await cli_logins.pending_login(deps().db, request.args.get("code", ""))
    if pending is None:
        raise NotFound("no such sign-in is waiting; it may have expired or been answered")
    return {
        "name": pending.token_name,
        "scope": pending.scope,
        "workspaceId": pending.workspace_id,
        "workspaceName": pending.workspace_name,
        "expiresInDays": round(pending.lifetime_secs / DAY, 1),
        "expiresAt": rfc3339(pending.expires_at),
    }


@blueprint.post("/cli-login/approve")
@validate_request(CodeBody)
async def approve_cli_login(data: CodeBody) -> dict[str, Any]:
    """Approve (or deny, `approve: false`) the sign-in waiting under `code`: the command
    line that started it receives a new token of the signed-in user on its next poll."""
    await refuse_tokens("approve a command-line sign-in")
    user = await current_user()
    db = deps().db
    pending = await cli_logins.pending_login(db, data.code)
    if pending is None:
        raise NotFound("no such sign-in is waiting; it may have expired or been answered")
    if not data.approve:
        await cli_logins.deny_login(db, data.code)
        return {"status": "denied"}
    await checked_workspace(pending.workspace_id)
    if not await cli_logins.approve_login(db, data.code, user.id):
        raise NotFound("no such sign-in is waiting; it may have expired or been answered")
    return {"status": "approved", "user": _who(user)}


@blueprint.post("/cli-login/poll")
@validate_request(PollBody)
async def poll_cli_login(data: PollBody) -> Response | tuple[dict[str, Any], int]:
    """The command line's poll: 202 while waiting, the new token (once) when approved, 404
    when denied, expired or already taken."""
    taken = await cli_logins.take_login(deps().db, data.request)
    if taken is True:
        return {"status": "pending"}, 202
    if taken is False:
        raise NotFound("this sign-in was denied, has expired or was already completed")
    token, info = taken
    # Made for the user who approved it (this poll itself carries no session).
    await record_token(AuditAction.TOKEN_CREATED, info, Actor.user(info.user_id, info.username))
    return {**token_json(info), "token": token}, 200


def _who(user: User) -> dict[str, str]:
    return {"id": user.id, "username": user.username}
