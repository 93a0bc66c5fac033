"""Sign-in sessions: create, look up and revoke, with tokens stored only as hashes."""

from __future__ import annotations

import trio

from agentserver.auth.tokens import hash_token, new_token
from agentserver.db.database import Database, Tx
from agentserver.models import User

SESSION_COOKIE = "agentserver_session"


def session_cookie_name(secure: bool) -> str:
    """The main session cookie's name; with https the `__Host-` prefix makes browsers refuse
    a copy planted by a sibling host (a sandbox subdomain) with a Domain attribute."""
    return f"__Host-{SESSION_COOKIE}" if secure else SESSION_COOKIE


async def create_session(db: Database, user_id: str, lifetime: float) -> str:
    """A new session for `user_id`; returns the token for the cookie (never stored as is)."""
    token = new_token()

    def work(tx: Tx) -> None:
        # Sign-ins also sweep expired sessions (an indexed delete), so the table stays small.
        tx.exec("delete_expired_sessions")
        tx.exec("create_session", token_hash=hash_token(token), user_id=user_id, lifetime=lifetime)

    await db.transaction(work)
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
