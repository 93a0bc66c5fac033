"""Personal API tokens: mint, authenticate, list and revoke, stored as SHA-256 hashes only.

Each token action happens in one function here (`create_token`, `authenticate` for the first
use, `revoke_token`), so whoever records them (the audit log) has one place to look.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import trio

from agentserver.auth.tokens import API_TOKEN_PREFIX, hash_token, new_api_token
from agentserver.db.database import Database
from agentserver.errors import Forbidden, Unauthenticated
from agentserver.models import User

SCOPES = ("read", "full")
READ_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_LIFETIME = 30 * 86400.0
NAME_MAX = 100
_TOKEN_MAX = 200  # longer is no token of ours: refused before it is hashed or looked up


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One token as its owner (or an admin) sees it: never the token or its hash."""

    id: str
    user_id: str
    name: str
    scope: str
    workspace_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    revoked_at: datetime | None
    username: str


def token_access_key(token_id: str) -> str:
    """What access opened with an API token is known by (where a browser's is known by its
    session's hash): its revocation names it."""
    return f"token:{token_id}"


@dataclass(frozen=True, slots=True)
class Grant:
    """What the bearer token of one request grants, beyond its owner's role."""

    token_id: str
    scope: str
    workspace_id: str | None  # None: every workspace of the owner

    def may_call(self, method: str) -> bool:
        """A read token may only read (GET/HEAD); a full token may call any method."""
        return self.scope == "full" or method.upper() in READ_METHODS

    def reaches(self, workspace_id: str) -> bool:
        return self.workspace_id is None or self.workspace_id == workspace_id


@dataclass(frozen=True, slots=True)
class Bearer:
    """A working token: its owner, its limits, and whether this request was its first use."""

    user: User
    grant: Grant
    first_use: bool


def bearer_of(authorization: str | None) -> str | None:
    """The token in an `Authorization: Bearer …` header; None when there is no bearer at all."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def looks_like_ours(token: str) -> bool:
    return token.startswith(API_TOKEN_PREFIX) and len(token) <= _TOKEN_MAX


async def create_token(
    db: Database,
    user_id: str,
    name: str,
    scope: str,
    workspace_id: str | None,
    lifetime: float,
) -> tuple[str, TokenInfo]:
    """A new token for `user_id` (the caller checked scope, workspace and lifetime); returns
    the token, shown once and never stored, and what is stored of it. Token created."""
    token = new_api_token()
    info = await db.one(
        "token_create",
        TokenInfo,
        user_id=user_id,
        name=name,
        token_hash=hash_token(token),
        scope=scope,
        workspace_id=workspace_id,
        lifetime=lifetime,
    )
    if info is None:
        raise Forbidden("this account is disabled; ask a server admin")
    return token, info


async def authenticate(db: Database, token: str) -> Bearer | None:
    """The owner and limits of a working token. None: no such token (a guess or a typo; the
    caller counts it as a failure). A known token that no longer works raises Unauthenticated
    saying why. The request that uses a token first has `first_use` (token first used)."""
    if not looks_like_ours(token):
        await trio.lowlevel.checkpoint()
        return None
    rows = await db.rows("token_authenticate", token_hash=hash_token(token))
    if not rows:
        return None
    row = rows[0]
    if row["revoked"]:
        raise Unauthenticated("this API token was revoked; create a new one")
    if row["expired"]:
        expired = row["expires_at"].isoformat(timespec="seconds").replace("+00:00", "Z")
        raise Unauthenticated(f"this API token expired at {expired}; create a new one")
    if row["disabled"]:
        raise Unauthenticated("this account is disabled; ask a server admin")
    user = User(**{k: row[k] for k in ("id", "username", "email", "role", "created_at")})
    grant = Grant(row["token_id"], row["scope"], row["workspace_id"])
    return Bearer(user, grant, bool(row["first_use"]))


async def list_tokens(db: Database, user_id: str | None) -> list[TokenInfo]:
    """The tokens of `user_id`, newest first; every user's when None (for admins)."""
    if user_id is None:
        return await db.many("tokens_all", TokenInfo)
    return await db.many("tokens_of_user", TokenInfo, user_id=user_id)


async def revoke_token(db: Database, token_id: str, user_id: str | None) -> TokenInfo | None:
    """Revoke the token `token_id` of `user_id` (anyone's when None: an admin); None when
    there is no such token (of theirs). Revoking twice changes nothing. Token revoked."""
    if len(token_id) > 64:
        await trio.lowlevel.checkpoint()
        return None
    return await db.one("token_revoke", TokenInfo, id=token_id, user_id=user_id)
