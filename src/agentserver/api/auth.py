"""Password accounts: register, sign in, sign out, who am I."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from quart import Blueprint, Response, jsonify, request
from quart_schema import validate_request

from agentserver.api.common import (
    Body,
    current_user,
    deps,
    optional_user,
    session_cookie,
    user_json,
)
from agentserver.auth import passwords
from agentserver.auth.sessions import create_session, revoke_session
from agentserver.db.database import Tx
from agentserver.errors import Conflict, Forbidden, RateLimited, Unauthenticated
from agentserver.models import User

blueprint = Blueprint("auth", __name__, url_prefix="/api/auth")


# Generous outer bounds (the precise rules and their messages are in auth/passwords.py); they
# keep a megabyte "username" out of the login throttle's memory and out of argon2.
_LOGIN_MAX = 254
_PASSWORD_MAX = 1024


class RegisterBody(Body):
    username: str = Field(max_length=_LOGIN_MAX)
    password: str = Field(max_length=_PASSWORD_MAX)
    email: str | None = Field(default=None, max_length=_LOGIN_MAX)


class LoginBody(Body):
    username: str = Field(max_length=_LOGIN_MAX)
    password: str = Field(max_length=_PASSWORD_MAX)


def set_session_cookie(response: Response, token: str) -> None:
    settings = deps().settings
    # Host-only (no Domain): sandbox subdomains never receive the main session.
    response.set_cookie(
        session_cookie(),
        token,
        max_age=int(settings.session_lifetime),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=settings.secure_cookies,
    )


async def sign_in(user: User, status: int = 200) -> Response:
    """A response carrying a fresh session cookie for `user`."""
    token = await create_session(deps().db, user.id, deps().settings.session_lifetime)
    response = jsonify({"user": user_json(user)})
    response.status_code = status
    set_session_cookie(response, token)
    return response


@blueprint.post("/register")
@validate_request(RegisterBody)
async def register(data: RegisterBody) -> Response:
    """Create a password account and sign it in; the first account becomes the server admin."""
    username = passwords.check_username(data.username)
    password = passwords.check_password(data.password)
    email = passwords.check_email(data.email) if data.email else None
    password_hash = await passwords.hash_password(password)
    allow = deps().settings.allow_registration

    def work(tx: Tx) -> User:
        tx.exec("lock_users")
        if not allow and tx.scalar("count_users") > 0:
            raise Forbidden("registration is closed on this server; ask an admin")
        if tx.one("get_user_by_username", User, username=username):
            raise Conflict("username already taken", field="username")
        if email and tx.one("get_user_by_login", User, login=email):
            raise Conflict("email already in use", field="email")
        user = tx.one(
            "create_user",
            User,
            username=username,
            email=email,
            email_verified=False,  # typed in: nobody vouched for it
            password_hash=password_hash,
        )
        assert user is not None
        return user

    user = await deps().db.transaction(work)
    return await sign_in(user, status=201)


@blueprint.post("/login")
@validate_request(LoginBody)
async def login(data: LoginBody) -> Response:
    """Sign in with username (or email) and password; repeated failures are throttled."""
    throttle = deps().login_throttle
    keys = (f"user:{data.username.strip().lower()}", f"addr:{request.remote_addr}")
    wait = throttle.retry_after(*keys)
    if wait:
        raise RateLimited("too many failed sign-ins; try again later", retry_after=wait)
    db = deps().db
    user = await db.one("get_user_by_login", User, login=data.username.strip())
    stored = await db.scalar("get_password_hash", id=user.id) if user else None
    if not await passwords.verify_password(stored, data.password) or user is None:
        throttle.fail(*keys)
        raise Unauthenticated("wrong username or password")
    throttle.reset(keys[0])
    return await sign_in(user)


@blueprint.post("/logout")
async def logout() -> Response:
    """End the session on the server and clear the cookie."""
    await revoke_session(deps().db, request.cookies.get(session_cookie()))
    response = jsonify({"status": "ok"})
    response.delete_cookie(
        session_cookie(),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=deps().settings.secure_cookies,
    )
    return response


@blueprint.get("/me")
async def me() -> dict[str, Any]:
    """The signed-in user."""
    return user_json(await current_user())


@blueprint.get("/config")
async def config() -> dict[str, Any]:
    """What the sign-in page needs: whether registration is open, and the signed-in user."""
    user = await optional_user()
    first = (await deps().db.scalar("count_users")) == 0
    providers = deps().extras.get("auth_providers", lambda: [])()
    return {
        "registrationOpen": deps().settings.allow_registration or first,
        "providers": providers,
        "user": user_json(user) if user else None,
        "baseDomain": deps().settings.domain,
        # Signed-in users only: e.g. that sandboxes run without isolation (sandboxes/feature.py).
        "warnings": list(deps().extras.get("server_warnings", ())) if user else [],
    }
