"""What every route shares: the Deps, the signed-in user, role checks and JSON shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, cast

import trio
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from quart import Response, current_app, g, jsonify, request

from agentserver.audit import Action as AuditAction
from agentserver.audit import Actor, Target
from agentserver.auth.api_tokens import Grant, authenticate, bearer_of
from agentserver.auth.client_address import client_address as real_client
from agentserver.auth.permissions import Action, allowed
from agentserver.auth.sessions import session_cookie_name, session_user
from agentserver.deps import Deps
from agentserver.errors import Forbidden, NotFound, RateLimited, Unauthenticated
from agentserver.models import Role, User


def not_blank(value: str) -> str:
    """A name without the blanks around it; a name of blanks only is refused."""
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


# A name in a request body (workspace, token, …): its length is the field's to say.
Name = Annotated[str, AfterValidator(not_blank)]


class Body(BaseModel):
    """Base of request bodies: camelCase keys, unknown fields refused."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, str_strip_whitespace=False
    )


def session_cookie() -> str:
    """This server's main session cookie name (depends on the scheme)."""
    return session_cookie_name(deps().settings.secure_cookies)


def deps() -> Deps:
    return cast(Deps, current_app.config["DEPS"])


def rfc3339(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def client_address() -> str:
    """The real client of this request: the peer, or what a trusted proxy says it saw."""
    return real_client(
        request.remote_addr,
        deps().settings.trusted_proxies,
        request.headers.getlist("Forwarded"),
        request.headers.getlist("X-Forwarded-For"),
    )


async def optional_user() -> User | None:
    """The caller: from `Authorization: Bearer <API token>` when given (never falling back to
    the cookie), else from the session cookie. A token is capped by its scope here: a read
    token on any other method than GET/HEAD is refused."""
    if "user" not in g:
        token = bearer_of(request.headers.get("Authorization"))
        if token is None:
            g.grant = None
            g.user = await session_user(deps().db, request.cookies.get(session_cookie()))
        else:
            g.user, g.grant = await _token_user(token)
    else:
        await trio.lowlevel.checkpoint()  # looked up once per request, checkpoint anyway
    limits = cast(Grant | None, g.grant)
    if limits is not None and not limits.may_call(request.method):
        raise Forbidden("this API token may only read (GET); use a token with full scope")
    return cast(User | None, g.user)


async def _token_user(token: str) -> tuple[User, Grant]:
    """The owner and limits of a bearer token; unknown tokens count as failed sign-ins of the
    client address (guessing is throttled like passwords)."""
    throttle = deps().login_throttle
    key = f"bearer:{client_address()}"
    wait = await throttle.retry_after(key)
    if wait:
        raise RateLimited("too many unknown API tokens; try again later", retry_after=wait)
    bearer = await authenticate(deps().db, token)
    if bearer is None:
        await throttle.fail(key)
        raise Unauthenticated("this API token is not valid")
    if bearer.first_use:
        user, limits = bearer.user, bearer.grant
        await deps().audit.record(
            Actor.token(limits.token_id, None, user.id, user.username),
            AuditAction.TOKEN_FIRST_USED,
            Target.of("token", limits.token_id),
            limits.workspace_id,
            client_address=client_address(),
        )
    return bearer.user, bearer.grant


def grant() -> Grant | None:
    """The bearer token's limits for this request (None: a session, or nobody)."""
    return cast(Grant | None, g.get("grant"))


async def refuse_tokens(what: str) -> None:
    """Refuse this request if it came with an API token: `what` needs a browser session (403;
    a token that does not work at all is a 401, as on every route)."""
    if bearer_of(request.headers.get("Authorization")) is None:
        await trio.lowlevel.checkpoint()
        return
    await optional_user()
    raise Forbidden(f"API tokens cannot {what}; sign in in a browser")


async def current_user() -> User:
    user = await optional_user()
    if user is None:
        raise Unauthenticated("sign in first")
    return user


async def require_admin() -> User:
    user = await current_user()
    if user.role != "admin":
        raise Forbidden("only the server admin may do this")
    limit = grant()
    if limit is not None and limit.workspace_id is not None:
        raise Forbidden("a token limited to one workspace cannot use server-wide admin routes")
    return user


async def member_role(workspace_id: str, user_id: str) -> Role | None:
    """The caller's role in the workspace, as this request's credentials reach it: a token
    limited to another workspace reaches none (the caller is treated as a non-member)."""
    limit = grant()
    if limit is not None and not limit.reaches(workspace_id):
        await trio.lowlevel.checkpoint()
        return None
    role = await deps().db.scalar("get_member_role", workspace_id=workspace_id, user_id=user_id)
    return None if role is None else Role(role)


async def require(workspace_id: str, action: Action) -> tuple[User, Role]:
    """The caller and their role, if they may take `action` in the workspace.

    A non-member gets the same 404 as for a workspace that does not exist, so nothing leaks.
    """
    user = await current_user()
    role = await member_role(workspace_id, user.id)
    if role is None:
        raise NotFound("workspace not found")
    if not allowed(role, action):
        raise Forbidden(f"a {role.value} may not {action.value.replace('_', ' ')}")
    return user, role


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "createdAt": rfc3339(user.created_at),
    }


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message, **extra}}
    response = jsonify(body)
    response.status_code = status
    return response
