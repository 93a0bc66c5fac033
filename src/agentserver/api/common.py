"""What every route shares: the Deps, the signed-in user, role checks and JSON shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import trio
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from quart import Response, current_app, g, jsonify, request

from agentserver.auth.client_address import client_address as real_client
from agentserver.auth.permissions import Action, allowed
from agentserver.auth.sessions import session_cookie_name, session_user
from agentserver.deps import Deps
from agentserver.errors import Forbidden, NotFound, Unauthenticated
from agentserver.models import Role, User


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
    if "user" not in g:
        g.user = await session_user(deps().db, request.cookies.get(session_cookie()))
    else:
        await trio.lowlevel.checkpoint()  # looked up once per request, checkpoint anyway
    return cast(User | None, g.user)


async def current_user() -> User:
    user = await optional_user()
    if user is None:
        raise Unauthenticated("sign in first")
    return user


async def require_admin() -> User:
    user = await current_user()
    if user.role != "admin":
        raise Forbidden("only the server admin may do this")
    return user


async def member_role(workspace_id: str, user_id: str) -> Role | None:
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
