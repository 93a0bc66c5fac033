"""What must stop at once, on this server, when a user loses access: cached sandbox access and
open workspace event streams (the database rows are revoked by the caller's transaction)."""

from __future__ import annotations

from agentserver.api.common import deps
from agentserver.auth.tickets import forget_user
from agentserver.sandboxes.events import WorkspaceEvents


def access_ended(user_id: str, workspace_id: str | None = None) -> None:
    """After the commit: `user_id` lost access to `workspace_id` (None: everything, as when
    all their sessions end). Their next sandbox-host request is checked against the database,
    and their event streams end, so a browser that reconnects is checked afresh."""
    extras = deps().extras
    forget_user(extras, user_id)
    events = getattr(extras.get("sandboxes"), "events", None)
    if isinstance(events, WorkspaceEvents):
        if workspace_id is None:
            events.end_user(user_id)
        else:
            events.end_member(workspace_id, user_id)
