"""Opening a sandbox in the browser: one-time tickets and per-sandbox subdomain sessions.

The main session never leaves the main host. `GET /api/sandboxes/{id}/open` mints a ticket that
lives ≤ 60 s and works once; the sandbox's subdomain redeems it for a session token scoped to
that one sandbox and user. Both are stored only as SHA-256 hashes. A session answers with the
member's current role on every check (cached for a few seconds), so a removed member or a
changed role takes effect at once — and the members API deletes the rows as well.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import trio

from agentserver.auth.permissions import Action, allowed
from agentserver.auth.tokens import hash_token, new_token
from agentserver.db.database import Database, Tx
from agentserver.models import Role, Sandbox

SANDBOX_COOKIE = "agentserver_sandbox"


def sandbox_cookie_name(secure: bool) -> str:
    """The subdomain cookie's name; `__Host-` with https so sibling sandboxes cannot plant it."""
    return f"__Host-{SANDBOX_COOKIE}" if secure else SANDBOX_COOKIE


TICKET_LIFETIME = 60.0
SESSION_LIFETIME = 12 * 3600.0
# How long a validated session is trusted without asking the database again.
ACCESS_CACHE_SECONDS = 2.0
_ACCESS_CACHE_SIZE = 4096
_SANDBOX_FIELDS = tuple(f.name for f in fields(Sandbox))


@dataclass(frozen=True, slots=True)
class SandboxAccess:
    """Who is using a sandbox through its subdomain, with what role, and the sandbox row."""

    user_id: str
    role: Role
    sandbox: Sandbox

    @property
    def read_only(self) -> bool:
        return not allowed(self.role, Action.USE_SANDBOX)


def sandbox_from_row(row: dict[str, Any]) -> Sandbox:
    return Sandbox(**{name: row[name] for name in _SANDBOX_FIELDS})


async def mint_ticket(
    db: Database, sandbox_id: str, user_id: str, lifetime: float = TICKET_LIFETIME
) -> str:
    """A fresh one-time ticket for `user_id` to open `sandbox_id`; the caller checked access."""
    ticket = new_token()

    def work(tx: Tx) -> None:
        tx.exec("proxy_delete_expired_tickets")
        tx.exec(
            "proxy_create_ticket",
            token_hash=hash_token(ticket),
            sandbox_id=sandbox_id,
            user_id=user_id,
            lifetime=min(lifetime, TICKET_LIFETIME),
        )

    await db.transaction(work)
    return ticket


async def redeem_ticket(
    db: Database, sandbox_id: str, ticket: str, lifetime: float = SESSION_LIFETIME
) -> str | None:
    """Spend `ticket` (once, atomically) for a subdomain session token; None if refused.

    Refused: unknown, already used, expired, minted for another sandbox, or the user is no
    longer a member allowed to view the sandbox.
    """
    if not ticket or len(ticket) > 200:
        await trio.lowlevel.checkpoint()
        return None
    token = new_token()

    def work(tx: Tx) -> str | None:
        rows = tx.rows("proxy_redeem_ticket", token_hash=hash_token(ticket), sandbox_id=sandbox_id)
        if not rows or not rows[0]["valid"]:
            return None
        user_id = rows[0]["user_id"]
        role = tx.scalar("proxy_member_role", sandbox_id=sandbox_id, user_id=user_id)
        if not allowed(role, Action.VIEW_SANDBOX):
            return None
        tx.exec("proxy_delete_expired_sessions", user_id=user_id)
        tx.exec(
            "proxy_create_session",
            token_hash=hash_token(token),
            sandbox_id=sandbox_id,
            user_id=user_id,
            lifetime=lifetime,
        )
        return token

    # The DELETE commits even when the session is refused: a ticket never works twice.
    return await db.transaction(work)


async def session_access(db: Database, sandbox_id: str, token: str) -> SandboxAccess | None:
    """The access a subdomain session token grants to `sandbox_id` right now, if any."""
    if not token or len(token) > 200:
        await trio.lowlevel.checkpoint()
        return None
    rows = await db.rows(
        "proxy_session_access", token_hash=hash_token(token), sandbox_id=sandbox_id
    )
    if not rows or not allowed(rows[0]["role"], Action.VIEW_SANDBOX):
        return None
    return SandboxAccess(rows[0]["user_id"], Role(rows[0]["role"]), sandbox_from_row(rows[0]))


class AccessCache:
    """Validated sessions for a few seconds, so a busy page costs one query per interval."""

    def __init__(self, db: Database, seconds: float = ACCESS_CACHE_SECONDS) -> None:
        self._db = db
        self._seconds = seconds
        self._entries: OrderedDict[tuple[str, str], tuple[float, SandboxAccess]] = OrderedDict()

    async def get(self, sandbox_id: str, token: str) -> SandboxAccess | None:
        key = (hash_token(token), sandbox_id)
        now = trio.current_time()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self._seconds:
            await trio.lowlevel.checkpoint_if_cancelled()  # the hot path: no scheduler trip
            return hit[1]
        access = await session_access(self._db, sandbox_id, token)
        if access is None:
            self._entries.pop(key, None)
            return None
        self._entries[key] = (now, access)
        self._entries.move_to_end(key)
        while len(self._entries) > _ACCESS_CACHE_SIZE:
            self._entries.popitem(last=False)
        return access

    def forget(self, sandbox_id: str) -> None:
        """Drop cached entries for a sandbox (its status or address changed)."""
        for key in [k for k in self._entries if k[1] == sandbox_id]:
            del self._entries[key]
