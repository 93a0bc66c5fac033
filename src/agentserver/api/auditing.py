"""Recording audit entries from a request: by the signed-in caller, from the real client
address (behind trusted proxies)."""

from __future__ import annotations

from typing import Any

from quart import g

from agentserver.api.common import client_address, deps
from agentserver.audit import Action, Actor, Result, Target
from agentserver.auth.api_tokens import Grant
from agentserver.models import User


def request_actor() -> Actor:
    """Who makes this request: the signed-in user, or the API token acting for them (looked
    up by `current_user` before)."""
    user: User | None = g.get("user")
    if user is None:
        return Actor.user(None, None)
    limits: Grant | None = g.get("grant")
    if limits is not None:
        return Actor.token(limits.token_id, None, user.id, user.username)
    return Actor.user(user.id, user.username)


async def record(
    action: Action,
    target: Target | None = None,
    workspace_id: str | None = None,
    result: Result = Result.OK,
    *,
    actor: Actor | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record `action` taken in this request (by the signed-in user unless `actor` is given),
    with the client's real address. Queued, never slowing or failing the request."""
    await deps().audit.record(
        actor or request_actor(),
        action,
        target,
        workspace_id,
        result,
        reason=reason,
        client_address=client_address(),
        details=details,
    )
