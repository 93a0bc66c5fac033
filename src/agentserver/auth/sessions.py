"""Sign-in sessions: create, look up, list and revoke, with tokens stored only as hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import trio

from agentserver.auth.tokens import hash_token, new_token
from agentserver.db.database import Database, Tx
from agentserver.errors import Forbidden
from agentserver.models import User

# What a session remembers of the browser that opened it (shown in the session list).
USER_AGENT_MAX = 300
DISABLED = "this account is disabled; ask a server admin"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session as its owner sees it: a public id (never the token or its hash)."""

    public_id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    client_address: str | None
    user_agent: str | None
    is_current: bool


SESSION_COOKIE = "agentserver_session"


def session_cookie_name(secure: bool) -> str:
    """The main session cookie's name; with https the `__Host-` prefix makes browsers refuse
    a copy planted by a sibling host (a sandbox subdomain) with a Domain attribute."""
    return f"__Host-{SESSION_COOKIE}" if secure else SESSION_COOKIE


async def create_session(
    db: Database,
    user_id: str,
    lifetime: float,
    *,
    client_address: str | None = None,
    user_agent: str | None = None,
) -> str:
    """A new session for `user_id`; returns the token for the cookie (never stored as is).
    Every sign-in method comes here, so a disabled user is refused here (403)."""
    token = new_token()

    def work(tx: Tx) -> int:
        # Sign-ins also sweep expired sessions (an indexed delete), so the table stays small.
        tx.exec("delete_expired_sessions")
        return tx.exec(
            "create_session",
            token_hash=hash_token(token),
            user_id=user_id,
            lifetime=lifetime,
            client_address=client_address,
            user_agent=user_agent[:USER_AGENT_MAX] if user_agent else None,
        )

    if not await db.transaction(work):
        raise Forbidden(DISABLED)
    return token


async def session_user(db: Database, token: str | None) -> User | None:
    if not token or len(token) > 200:
        await trio.lowlevel.checkpoint()  # every path checkpoints, as callers expect
        return None
    return await db.one("get_session_user", User, token_hash=hash_token(token))


async def revoke_session(db: Database, token: str | None) -> None:
    if token:
        await db.exec("delete_session", token_hash=hash_token(token))
    else:
        await trio.lowlevel.checkpoint()


async def revoke_user_sessions(db: Database, user_id: str) -> int:
    """End every session of `user_id`, and with them every sandbox-host session they opened
    (ON DELETE CASCADE); returns how many ended."""
    return await db.exec("delete_user_sessions", user_id=user_id)


async def list_sessions(db: Database, user_id: str, current_token: str | None) -> list[SessionInfo]:
    """The live sessions of `user_id`, most recently used first; the one holding
    `current_token` is marked."""
    current = hash_token(current_token) if current_token else ""
    return await db.many("list_user_sessions", SessionInfo, user_id=user_id, current_hash=current)


async def revoke_session_by_id(db: Database, user_id: str, public_id: str) -> str | None:
    """End the session of `user_id` named `public_id`; returns its token hash (None: no such
    session of theirs). Its sandbox-host sessions go with it (ON DELETE CASCADE)."""
    if len(public_id) > 64:
        await trio.lowlevel.checkpoint()
        return None
    row = await db.rows("delete_session_by_public_id", user_id=user_id, public_id=public_id)
    return str(row[0]["token_hash"]) if row else None
