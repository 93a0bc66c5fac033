"""Password accounts: register, sign in, sign out (here or everywhere), the caller's sessions
(list, end one), change the password, who am I."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from quart import Blueprint, Response, jsonify, request
from quart_schema import validate_request

from agentserver.api.auditing import record
from agentserver.api.common import (
    Body,
    client_address,
    current_user,
    deps,
    optional_user,
    refuse_tokens,
    rfc3339,
    session_cookie,
    user_json,
)
from agentserver.api.revocation import access_ended
from agentserver.audit import Action, Actor, Result, Target
from agentserver.auth import passwords
from agentserver.auth.oidc import provider_list
from agentserver.auth.revocation import Revocation
from agentserver.auth.sessions import (
    SessionInfo,
    create_session,
    list_sessions,
    revoke_session,
    revoke_session_by_id,
    revoke_user_sessions,
)
from agentserver.auth.throttle import ask_all, fail_all
from agentserver.auth.tokens import hash_token
from agentserver.banner import missing_credentials
from agentserver.db.database import Tx
from agentserver.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Unauthenticated,
)
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


class PasswordBody(Body):
    current_password: str = Field(max_length=_PASSWORD_MAX)
    new_password: str = Field(max_length=_PASSWORD_MAX)


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


async def new_session(user: User) -> str:
    """A session for `user` opened by this request's client (403 for a disabled user)."""
    return await create_session(
        deps().db,
        user.id,
        deps().settings.session_lifetime,
        client_address=client_address(),
        user_agent=request.headers.get("User-Agent"),
    )


def user_target(user: User) -> Target:
    return Target.of("user", user.id, user.username)


async def record_sign_in(
    user: User | None,
    method: str,
    result: Result = Result.OK,
    *,
    login: str | None = None,
    reason: str | None = None,
    provider: str | None = None,
) -> None:
    """Record a sign-in (`method`: password, github or oidc) and how it ended; a refused one
    names the account if there is one, else what was typed (`login`)."""
    actor = Actor.user(user.id, user.username) if user else Actor.user(None, login)
    details: dict[str, str] = {"method": method}
    if provider is not None and provider != method:
        details["provider"] = provider
    await record(
        Action.SIGN_IN,
        user_target(user) if user else None,
        result=result,
        actor=actor,
        reason=reason,
        details=details,
    )


async def sign_in(user: User, status: int = 200) -> Response:
    """A response carrying a fresh session cookie for `user`."""
    try:
        token = await new_session(user)
    except Forbidden as exc:  # a disabled account
        await record_sign_in(user, "password", Result.REFUSED, reason=exc.message)
        raise
    await record_sign_in(user, "password")
    response = jsonify({"user": user_json(user)})
    response.status_code = status
    set_session_cookie(response, token)
    return response


@blueprint.post("/register")
@validate_request(RegisterBody)
async def register(data: RegisterBody) -> Response:
    """Create a password account and sign it in; the first account becomes the server admin."""
    username = passwords.check_username(data.username)
    password = passwords.check_password(data.password, username)
    email = passwords.check_email(data.email) if data.email else None
    allow = deps().settings.allow_registration

    def refuse_taken(tx: Tx) -> None:
        if not allow and tx.scalar("count_users") > 0:
            raise Forbidden("registration is closed on this server; ask an admin")
        if tx.one("get_user_by_username", User, username=username):
            raise Conflict("username already taken", field="username")
        if email and tx.one("get_user_by_login", User, login=email):
            raise Conflict("email already in use", field="email")

    # Everything cheap first: a closed server or a taken name costs no argon2 work.
    await deps().db.transaction(refuse_taken)
    await spend_password_attempt()
    password_hash = await passwords.hash_password(password)

    def work(tx: Tx) -> User:
        tx.exec("lock_users")
        refuse_taken(tx)  # again, under the lock: another registration may have won meanwhile
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
    await record(Action.REGISTERED, user_target(user), actor=Actor.user(user.id, user.username))
    return await sign_in(user, status=201)


@blueprint.post("/login")
@validate_request(LoginBody)
async def login(data: LoginBody) -> Response:
    """Sign in with username (or email) and password; repeated failures are throttled."""
    d = deps()
    address = f"addr:{client_address()}"
    user = await d.db.one("get_user_by_login", User, login=data.username.strip())
    # Paced per account (however it was named); an unknown name is paced by what was typed.
    account = f"user:{user.id}" if user else f"login:{data.username.strip().lower()}"
    # Every throttle of a sign-in in one round trip (shared by the replicas, auth/throttle.py):
    # the address's failures, its password work (counted unless refused), the account's pacing.
    blocked, work, pacing = await ask_all(
        d.login_throttle.ask(address),
        d.password_attempts.ask(address, spend=True),
        d.account_pacer.ask(account),
    )
    if blocked.wait:
        raise RateLimited("too many failed sign-ins; try again later", retry_after=blocked.wait)
    if work.wait:
        raise password_attempts_refused(work.wait)
    async with d.account_pacer.turn(account, paced=pacing.wait > 0):
        stored = await d.db.scalar("get_password_hash", id=user.id) if user else None
        if not await passwords.verify_password(stored, data.password) or user is None:
            await fail_all(d.login_throttle.ask(address), d.account_pacer.ask(account))
            refusal = Unauthenticated("wrong username or password")
            await record_sign_in(
                user, "password", Result.REFUSED, login=data.username, reason=refusal.message
            )
            raise refusal
        if pacing.recent:  # nothing to clear otherwise: a plain sign-in pays no more
            await d.account_pacer.reset(account)
    return await sign_in(user)


def password_attempts_refused(wait: int) -> RateLimited:
    return RateLimited(
        "too many sign-in or registration attempts; try again later", retry_after=wait
    )


async def spend_password_attempt() -> None:
    """Count one attempt that costs argon2 work against the client; refuse past the limit."""
    wait = await deps().password_attempts.spend(f"addr:{client_address()}")
    if wait:
        raise password_attempts_refused(wait)


@blueprint.post("/logout")
async def logout() -> Response:
    """End the session on the server, with the sandbox-host sessions it opened, and clear the
    cookie."""
    await refuse_tokens("sign out (revoke the token instead)")
    user = await optional_user()
    token = request.cookies.get(session_cookie())
    await revoke_session(deps().db, token)
    if user is not None and token:
        await access_ended(Revocation(user.id, session_hash=hash_token(token)))
        await record(Action.SIGN_OUT, user_target(user))
    return _signed_out()


@blueprint.post("/logout-all")
async def logout_all() -> Response:
    """Sign out everywhere: end every session of the signed-in user, on every browser, with
    every sandbox-host session they opened, and their open event streams."""
    await refuse_tokens("end sessions")
    user = await current_user()
    await revoke_user_sessions(deps().db, user.id)
    await access_ended(Revocation(user.id))
    await record(Action.SIGN_OUT, user_target(user), details={"everywhere": True})
    return _signed_out()


@blueprint.post("/password")
@validate_request(PasswordBody)
async def change_password(data: PasswordBody) -> dict[str, Any]:
    """Change the password (the current one is required). Every other session of the user
    ends, with the sandbox-host sessions they opened; the session that made the change stays."""
    await refuse_tokens("change a password")
    user = await current_user()
    throttle = deps().login_throttle
    key = f"user:{user.username.strip().lower()}"  # the same budget as sign-ins
    wait = await throttle.retry_after(key)
    if wait:
        raise RateLimited("too many wrong passwords; try again later", retry_after=wait)
    db = deps().db
    stored = await db.scalar("get_password_hash", id=user.id)
    if stored is None:
        raise Conflict("this account signs in through a provider and has no password")
    if not await passwords.verify_password(stored, data.current_password):
        await throttle.fail(key)
        raise Forbidden("the current password is wrong")
    try:
        new_password = passwords.check_password(data.new_password, user.username)
    except Invalid as exc:
        raise Invalid(exc.message, field="newPassword") from None
    new_hash = await passwords.hash_password(new_password)
    keep = hash_token(request.cookies.get(session_cookie(), ""))

    def work(tx: Tx) -> None:
        tx.exec("set_password_hash", id=user.id, password_hash=new_hash)
        tx.exec("delete_other_sessions", user_id=user.id, keep_hash=keep)

    await db.transaction(work)
    await access_ended(Revocation(user.id, keep_session=keep))
    return {"status": "ok"}


def session_json(info: SessionInfo) -> dict[str, Any]:
    return {
        "id": info.public_id,
        "createdAt": rfc3339(info.created_at),
        "lastUsedAt": rfc3339(info.last_used_at),
        "expiresAt": rfc3339(info.expires_at),
        "clientAddress": info.client_address,
        "userAgent": info.user_agent,
        "current": info.is_current,
    }


@blueprint.get("/sessions")
async def sessions() -> list[dict[str, Any]]:
    """The caller's own live sessions, most recently used first; `current` is this one. A
    session's id names it for ending it and authenticates nobody."""
    await refuse_tokens("list sessions")
    user = await current_user()
    token = request.cookies.get(session_cookie())
    return [session_json(s) for s in await list_sessions(deps().db, user.id, token)]


@blueprint.delete("/sessions/<session_id>")
async def end_session(session_id: str) -> Response:
    """End one of the caller's sessions, with the sandbox-host sessions it opened; ending this
    one signs this browser out."""
    await refuse_tokens("end sessions")
    user = await current_user()
    ended = await revoke_session_by_id(deps().db, user.id, session_id)
    if ended is None:
        raise NotFound("session not found")
    await access_ended(Revocation(user.id, session_hash=ended))
    await record(Action.SIGN_OUT, user_target(user), details={"session": session_id})
    response = Response("", status=204)
    if ended == hash_token(request.cookies.get(session_cookie(), "")):
        _clear_cookie(response)
    return response


def _signed_out() -> Response:
    response = jsonify({"status": "ok"})
    _clear_cookie(response)
    return response


def _clear_cookie(response: Response) -> None:
    response.delete_cookie(
        session_cookie(),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=deps().settings.secure_cookies,
    )


@blueprint.get("/me")
async def me() -> dict[str, Any]:
    """The signed-in user."""
    return user_json(await current_user())


@blueprint.get("/config")
async def config() -> dict[str, Any]:
    """What the sign-in page needs: whether registration is open, and the signed-in user."""
    user = await optional_user()
    first = (await deps().db.scalar("count_users")) == 0
    providers = provider_list(deps().oidc_providers)
    return {
        "registrationOpen": deps().settings.allow_registration or first,
        "setupNeeded": first,  # nobody has an account yet: the next one becomes the admin
        "providers": providers,
        "user": user_json(user) if user else None,
        "baseDomain": deps().settings.domain,
        "warnings": server_warnings(user),
        "sandboxTypes": creatable_types(),
    }


def creatable_types() -> list[str]:
    """The sandbox types this server can start, for the create dialog: OpenClaw only where
    its process can run (the process backend needs an OpenClaw binary, containers an image)."""
    settings = deps().settings
    if settings.backend == "process":
        openclaw = bool(settings.openclaw_bin)
    else:
        openclaw = bool(settings.openclaw_image)
    return ["opencode", "openclaw"] if openclaw else ["opencode"]


def server_warnings(user: User | None) -> list[str]:
    """What a signed-in user should know about this server: e.g. that sandboxes run without
    isolation (sandboxes/feature.py); admins also that the LLM proxy has no credentials."""
    if user is None:
        return []
    found = list(deps().server_warnings)
    missing = missing_credentials(deps().settings)
    if user.role == "admin" and missing:
        found.append(missing)
    return found
