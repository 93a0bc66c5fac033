"""The command line's sign-in approved in a browser, and its one-time links to open a sandbox.

Sign-in (`agentserver login` without `--token`): the command asks for a login and gets two
secrets: a `request` it keeps and polls with, and a `code` it shows the person in a link to
`/cli-login?code=…`. A signed-in browser approves the code; the next poll with the request
takes the approval (once, atomically) and only then is the token minted, so no token is ever
stored as is. Both secrets are stored hashed, live ten minutes, and only so many may wait.

Launch links (`agentserver sandboxes open`): a one-time link to `/api/sandboxes/{id}/open`
that works once, in a browser signed in as the same user; the usual /open flow (its ticket
bound to that browser) goes on from there, so a link handed to someone else opens nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import trio

from agentserver.auth.api_tokens import TokenInfo, create_token
from agentserver.auth.tokens import hash_token, new_token
from agentserver.db.database import Database, Tx
from agentserver.errors import RateLimited

LOGIN_TTL = 600.0
MAX_WAITING = 1000  # logins waiting for approval at once, server-wide
LAUNCH_TTL = 300.0
_SECRET_MAX = 200


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """What the approval page shows about a login waiting for approval."""

    token_name: str
    scope: str
    workspace_id: str | None
    workspace_name: str | None
    lifetime_secs: float
    expires_at: datetime


def _fits(secret: str) -> bool:
    return 0 < len(secret) <= _SECRET_MAX


async def start_login(
    db: Database, token_name: str, scope: str, workspace_id: str | None, lifetime: float
) -> tuple[str, str]:
    """A new login waiting for approval: (request, code). Refused past MAX_WAITING."""
    request, code = new_token(), new_token(18)

    def work(tx: Tx) -> None:
        tx.exec("cli_login_sweep")
        if tx.scalar("cli_login_count") >= MAX_WAITING:
            raise RateLimited("too many sign-ins are waiting for approval", retry_after=60)
        tx.exec(
            "cli_login_create",
            request_hash=hash_token(request),
            code_hash=hash_token(code),
            token_name=token_name,
            scope=scope,
            workspace_id=workspace_id,
            lifetime=lifetime,
            ttl=LOGIN_TTL,
        )

    await db.transaction(work)
    return request, code


async def pending_login(db: Database, code: str) -> PendingLogin | None:
    """The login waiting for approval under `code`, if any."""
    if not _fits(code):
        await trio.lowlevel.checkpoint()
        return None
    return await db.one("cli_login_describe", PendingLogin, code_hash=hash_token(code))


async def approve_login(db: Database, code: str, user_id: str) -> bool:
    """`user_id` approves the login under `code`; False when no such login is waiting."""
    if not _fits(code):
        await trio.lowlevel.checkpoint()
        return False
    return await db.exec("cli_login_approve", code_hash=hash_token(code), user_id=user_id) == 1


async def deny_login(db: Database, code: str) -> bool:
    if not _fits(code):
        await trio.lowlevel.checkpoint()
        return False
    return await db.exec("cli_login_deny", code_hash=hash_token(code)) == 1


async def take_login(db: Database, request: str) -> tuple[str, TokenInfo] | bool:
    """Poll: the new token once approved; True while still waiting; False when the login is
    unknown, denied, expired or already taken."""
    if not _fits(request):
        await trio.lowlevel.checkpoint()
        return False
    rows = await db.rows("cli_login_take", request_hash=hash_token(request))
    if not rows:
        return bool(await db.scalar("cli_login_waiting", request_hash=hash_token(request)))
    row = rows[0]
    return await create_token(
        db,
        row["user_id"],
        row["token_name"],
        row["scope"],
        row["workspace_id"],
        row["lifetime_secs"],
    )


async def mint_launch(db: Database, sandbox_id: str, user_id: str) -> str:
    """A one-time link secret for `user_id` to open `sandbox_id` (the caller checked access)."""
    link = new_token()

    def work(tx: Tx) -> None:
        tx.exec("launch_sweep")
        tx.exec(
            "launch_create",
            token_hash=hash_token(link),
            sandbox_id=sandbox_id,
            user_id=user_id,
            lifetime=LAUNCH_TTL,
        )

    await db.transaction(work)
    return link


async def spend_launch(db: Database, sandbox_id: str, link: str) -> str | None:
    """Spend a launch link (once, atomically, valid or not); its user, or None if refused."""
    if not _fits(link):
        await trio.lowlevel.checkpoint()
        return None
    rows = await db.rows("launch_spend", token_hash=hash_token(link), sandbox_id=sandbox_id)
    if not rows or not rows[0]["valid"]:
        return None
    return str(rows[0]["user_id"])
