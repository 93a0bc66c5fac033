"""Opening a sandbox in the browser: one-time tickets and per-sandbox subdomain sessions.

The main session never leaves the main host. `GET /api/sandboxes/{id}/open` mints a ticket that
lives ≤ 60 s and works once; the sandbox's subdomain redeems it for a session token scoped to
that one sandbox and user. Both are stored only as SHA-256 hashes. A session answers with the
member's current role on every check (cached for a few seconds), so a removed member or a
changed role takes effect at once — and the members API deletes the rows as well.

A subdomain session belongs to the main session whose /open minted its ticket: it ends when
that main session ends (sign-out, sign-out everywhere, a password change; ON DELETE CASCADE)
or expires, whichever comes first.

Binding (why a ticket cannot sign a victim in as someone else): the ticket travels in a URL, so
an attacker could mint one for themselves and send the link to a victim, whose browser would
then hold the attacker's session on that sandbox host (and type into the attacker's agent).
So the flow starts on the sandbox host, OAuth-`state` style: it gives the browser a random
nonce in a host-only, HttpOnly cookie (`__Host-` with https, so sibling hosts cannot plant one)
and sends it to the main host's /open with only the nonce's SHA-256 (`bind=`). /open stores
that hash with the ticket; redemption succeeds only for a browser presenting the nonce itself.
A link with someone else's ticket fails in any other browser, and the hash in the URL is of no
use to whoever sees it: it cannot be turned back into the nonce.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import trio

from agentserver.auth.permissions import Action, SandboxFacts, allowed, may_on_sandbox
from agentserver.auth.revocation import Revocation
from agentserver.auth.tokens import hash_token, new_token, same
from agentserver.db.database import Database, Tx
from agentserver.models import Role, Sandbox

SANDBOX_COOKIE = "agentserver_sandbox"


def sandbox_cookie_name(secure: bool) -> str:
    """The subdomain cookie's name; `__Host-` with https so sibling sandboxes cannot plant it."""
    return f"__Host-{SANDBOX_COOKIE}" if secure else SANDBOX_COOKIE


BIND_COOKIE = "agentserver_bind"
# Long enough for the round trip through the main host (and a sign-in there, if needed).
BIND_LIFETIME = 600
_HEX = frozenset("0123456789abcdef")


def bind_cookie_name(secure: bool) -> str:
    """The binding nonce's cookie on the sandbox host; `__Host-` with https, as above."""
    return f"__Host-{BIND_COOKIE}" if secure else BIND_COOKIE


def new_binding() -> tuple[str, str]:
    """A fresh nonce for the browser's cookie, and the hash that goes to /open (`bind=`)."""
    nonce = new_token()
    return nonce, hash_token(nonce)


def binding_of(nonce: str) -> str | None:
    """The `bind=` value of a nonce from a cookie, or None when it is no nonce of ours."""
    return hash_token(nonce) if 20 <= len(nonce) <= 200 else None


def is_binding(text: str) -> bool:
    """True when `text` has the form of a `bind=` value (a hex SHA-256)."""
    return len(text) == 64 and set(text) <= _HEX


TICKET_LIFETIME = 60.0
SESSION_LIFETIME = 12 * 3600.0
# How long a validated session is trusted without asking the database again.
ACCESS_CACHE_SECONDS = 2.0
_ACCESS_CACHE_SIZE = 4096
# Every field but the event version (sandboxes/events.py), which access checks never need.
_SANDBOX_FIELDS = tuple(f.name for f in fields(Sandbox) if f.name != "version")


@dataclass(frozen=True, slots=True)
class SandboxAccess:
    """Who is using a sandbox through its subdomain, with what role, and the sandbox row."""

    user_id: str
    role: Role
    sandbox: Sandbox
    session_hash: str | None = None  # the main session it was opened from

    def ended_by(self, revocation: Revocation) -> bool:
        return revocation.covers(
            self.user_id, self.sandbox.workspace_id, self.session_hash, self.sandbox.id
        )

    @property
    def read_only(self) -> bool:
        return not allowed(self.role, Action.USE_SANDBOX)


def may_view(role: Role | str | None, user_id: str, private: bool, created_by: str | None) -> bool:
    """True when `user_id` with `role` may open the sandbox on its host (a private one: only
    its creator and the roles that may see private sandboxes)."""
    facts = SandboxFacts(own=created_by is not None and created_by == user_id, private=private)
    return may_on_sandbox(role, Action.VIEW_SANDBOX, facts)


def sandbox_from_row(row: dict[str, Any]) -> Sandbox:
    return Sandbox(**{name: row[name] for name in _SANDBOX_FIELDS})


async def mint_ticket(
    db: Database,
    sandbox_id: str,
    user_id: str,
    session_token: str,
    binding: str,
    lifetime: float = TICKET_LIFETIME,
) -> str:
    """A fresh one-time ticket for `user_id` to open `sandbox_id`, for the browser holding
    the nonce whose hash is `binding`, on behalf of the main session `session_token`; the
    caller checked access and that `binding` has the right form."""
    ticket = new_token()

    def work(tx: Tx) -> None:
        tx.exec("proxy_delete_expired_tickets")
        tx.exec(
            "proxy_create_ticket",
            token_hash=hash_token(ticket),
            sandbox_id=sandbox_id,
            user_id=user_id,
            session_hash=hash_token(session_token),
            binding_hash=binding,
            lifetime=min(lifetime, TICKET_LIFETIME),
        )

    await db.transaction(work)
    return ticket


async def redeem_ticket(
    db: Database,
    sandbox_id: str,
    ticket: str,
    nonce: str | None,
    lifetime: float = SESSION_LIFETIME,
) -> str | None:
    """Spend `ticket` (once, atomically) for a subdomain session token; None if refused.

    Refused: unknown, already used, expired, minted for another sandbox or for another
    browser (`nonce`, from the binding cookie, is not the one the ticket was bound to), the
    main session that asked for it has ended, or the user is no longer a member allowed to
    view the sandbox (a private one: only its creator, owners and maintainers).
    """
    binding = binding_of(nonce) if nonce else None
    if not ticket or len(ticket) > 200 or binding is None:
        await trio.lowlevel.checkpoint()
        return None
    token = new_token()

    def work(tx: Tx) -> str | None:
        rows = tx.rows("proxy_redeem_ticket", token_hash=hash_token(ticket), sandbox_id=sandbox_id)
        if not rows or not rows[0]["valid"] or not same(rows[0]["binding_hash"], binding):
            return None
        user_id = rows[0]["user_id"]
        role = tx.scalar("proxy_member_role", sandbox_id=sandbox_id, user_id=user_id)
        privacy = tx.rows("proxy_sandbox_privacy", sandbox_id=sandbox_id)
        if not privacy or not may_view(
            role, user_id, privacy[0]["private"], privacy[0]["created_by"]
        ):
            return None
        tx.exec("proxy_delete_expired_sessions", user_id=user_id)
        created = tx.exec(
            "proxy_create_session",
            token_hash=hash_token(token),
            sandbox_id=sandbox_id,
            user_id=user_id,
            session_hash=rows[0]["session_hash"],
            lifetime=lifetime,
        )
        return token if created == 1 else None  # 0: the main session ended meanwhile

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
    if not rows:
        return None
    row = rows[0]
    if not may_view(row["role"], row["user_id"], row["private"], row["created_by"]):
        return None
    return SandboxAccess(
        row["user_id"], Role(row["role"]), sandbox_from_row(row), row["session_hash"]
    )


class LiveRequest:
    """One proxied request in flight (a page, an event stream, a terminal WebSocket), as a
    context manager: `AccessCache.revoke` cancels it when its access ends."""

    def __init__(
        self,
        live: set[LiveRequest],
        access: SandboxAccess,
        cancel_connection: Callable[[], None] | None = None,
    ) -> None:
        self.access = access
        # On the proxy's fast path the connection's own scope ends the request (and the
        # connection with it): cheaper than a scope per request on the hot path.
        self.scope: trio.CancelScope | None = None
        if cancel_connection is None:
            self.scope = trio.CancelScope()
            cancel_connection = self.scope.cancel
        self.cancel = cancel_connection
        self._live = live

    def __enter__(self) -> LiveRequest:
        self._live.add(self)
        if self.scope is not None:
            self.scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._live.discard(self)
        return self.scope.__exit__(*exc) if self.scope is not None else False


class AccessCache:
    """Validated sessions for a few seconds, so a busy page costs one query per interval; and
    the requests in flight on them, so that ending access ends those too."""

    def __init__(self, db: Database, seconds: float = ACCESS_CACHE_SECONDS) -> None:
        self._db = db
        self._seconds = seconds
        self._entries: OrderedDict[tuple[str, str], tuple[float, SandboxAccess]] = OrderedDict()
        # As many as the requests being proxied (the front end bounds those).
        self._live: set[LiveRequest] = set()

    def live(
        self, access: SandboxAccess, cancel_connection: Callable[[], None] | None = None
    ) -> LiveRequest:
        """Wrap a proxied request: it is cancelled if `access` is revoked meanwhile (through
        `cancel_connection`, which ends its whole connection, when given)."""
        return LiveRequest(self._live, access, cancel_connection)

    async def get(
        self, sandbox_id: str, token: str, digest: str | None = None
    ) -> SandboxAccess | None:
        """The access `token` gives to the sandbox (`digest`: its `hash_token`, if known)."""
        key = (digest or hash_token(token), sandbox_id)
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

    def revoke(self, revocation: Revocation) -> int:
        """Access ended (signed out, removed, role changed): drop what it covers from the
        cache, so the next request is checked against the database at once, and cancel the
        requests in flight on it (an open terminal or event stream); returns how many."""
        for key in [k for k, (_, a) in self._entries.items() if a.ended_by(revocation)]:
            del self._entries[key]
        ended = [r for r in self._live if r.access.ended_by(revocation)]
        for request in ended:
            request.cancel()
        return len(ended)

    def forget_all(self) -> None:
        """Drop every cached entry (a revocation may have been missed: check them afresh)."""
        self._entries.clear()

    def forget(self, sandbox_id: str) -> None:
        """Drop cached entries for a sandbox (its status or address changed)."""
        for key in [k for k in self._entries if k[1] == sandbox_id]:
            del self._entries[key]
