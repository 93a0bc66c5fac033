"""What an audit entry is: the actions we record, who acts, on what, and how it ended (pure)."""

# ruff: noqa: S105  (action names such as "token.created" are not passwords)

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

# Bounds on what one entry may hold, so a caller cannot make the log (or its buffer) heavy.
NAME_MAX = 200
REASON_MAX = 500
DETAILS_MAX = 2048  # bytes of JSON


class Action(StrEnum):
    """Every action the log records, by its dotted name (what the API filters on)."""

    # Accounts and sessions.
    SIGN_IN = "auth.sign_in"  # details: method (password, github, oidc); refused with a reason
    SIGN_OUT = "auth.sign_out"  # details: everywhere / session
    REGISTERED = "auth.registered"
    # Server administration.
    USER_ROLE_CHANGED = "user.role_changed"  # the server role: admin or user
    USER_DISABLED = "user.disabled"
    USER_ENABLED = "user.enabled"
    USER_PASSWORD_RESET = "user.password_reset"
    QUOTA_CHANGED = "quota.changed"
    # Workspaces and their members.
    WORKSPACE_CREATED = "workspace.created"
    WORKSPACE_RENAMED = "workspace.renamed"
    WORKSPACE_SETTINGS_CHANGED = "workspace.settings_changed"
    WORKSPACE_DELETED = "workspace.deleted"
    MEMBER_ADDED = "member.added"
    MEMBER_ROLE_CHANGED = "member.role_changed"
    MEMBER_REMOVED = "member.removed"
    # Sandboxes.
    SANDBOX_CREATED = "sandbox.created"
    SANDBOX_OPENED = "sandbox.opened"  # a one-time ticket to its host was handed out
    SANDBOX_PAUSED = "sandbox.paused"
    SANDBOX_RESUMED = "sandbox.resumed"
    SANDBOX_RESTARTED = "sandbox.restarted"
    SANDBOX_DELETED = "sandbox.deleted"
    # Local agents.
    AGENT_CODE_CREATED = "agent.code_created"
    AGENT_REGISTERED = "agent.registered"
    AGENT_CONNECTED = "agent.connected"
    AGENT_DISCONNECTED = "agent.disconnected"
    AGENT_REVOKED = "agent.revoked"  # its tunnel token ended (the local sandbox was deleted)
    # API tokens and previews (recorded by those features).
    TOKEN_CREATED = "token.created"
    TOKEN_FIRST_USED = "token.first_used"
    TOKEN_REVOKED = "token.revoked"
    PREVIEW_MADE_PUBLIC = "preview.made_public"  # details: port
    PREVIEW_MADE_PRIVATE = "preview.made_private"


class ActorKind(StrEnum):
    USER = "user"
    TOKEN = "token"  # an API token, acting for its user (`Actor.user_id`)
    AGENT = "agent"  # a local agent, named by its sandbox
    SYSTEM = "system"  # the server's own background work (idle watcher, reconciler)


class Result(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # not allowed, wrong credentials: nothing changed
    FAILED = "failed"  # allowed, but it did not work: the reason says why


def _clip(text: str | None, limit: int) -> str | None:
    """At most `limit` characters, without NUL (which PostgreSQL text cannot hold)."""
    return None if text is None else text.replace("\x00", "")[:limit]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted. The name is captured when the entry is written, so the entries of a user
    deleted later stay readable."""

    kind: ActorKind
    id: str | None
    name: str | None = None
    # For a token: the user it acts for (also what the `actor` filter matches).
    user_id: str | None = None

    @classmethod
    def user(cls, user_id: str | None, name: str | None) -> Actor:
        return cls(ActorKind.USER, user_id, _clip(name, NAME_MAX), user_id)

    @classmethod
    def token(cls, token_id: str, token_name: str | None, user_id: str, username: str) -> Actor:
        name = f"{username} (token {token_name})" if token_name else username
        return cls(ActorKind.TOKEN, token_id, _clip(name, NAME_MAX), user_id)

    @classmethod
    def agent(cls, sandbox_id: str | None, name: str | None) -> Actor:
        return cls(ActorKind.AGENT, sandbox_id, _clip(name, NAME_MAX))

    @classmethod
    def system(cls, part: str) -> Actor:
        """The server itself; `part` names which loop (e.g. "idle watcher")."""
        return cls(ActorKind.SYSTEM, part.replace(" ", "-"), part)


@dataclass(frozen=True, slots=True)
class Target:
    """What was acted on: its kind (user, workspace, member, sandbox, token, quota), its id and
    its name at the time."""

    kind: str
    id: str | None
    name: str | None = None

    @classmethod
    def of(cls, kind: str, id: str | None, name: str | None = None) -> Target:
        return cls(kind, id, _clip(name, NAME_MAX))


NO_TARGET = Target("", None)


def details_json(details: dict[str, Any] | None) -> str:
    """The details as compact JSON, or a marker when they are too large to keep."""
    # jsonb refuses the NUL escape: drop it (a login typed with one is still readable).
    text = json.dumps(details or {}, separators=(",", ":"), default=str).replace("\\u0000", "")
    if len(text.encode()) > DETAILS_MAX:
        return '{"truncated":true}'
    return text


@dataclass(frozen=True, slots=True)
class Entry:
    """One audit entry as the writer stores it (times are taken when it is recorded)."""

    at: datetime
    actor: Actor
    action: Action
    target: Target = NO_TARGET
    workspace_id: str | None = None
    client_address: str | None = None
    result: Result = Result.OK
    reason: str | None = None
    details: str = "{}"  # JSON (details_json)

    def row(self) -> tuple[Any, ...]:
        """The values of its table row, in COLUMNS order."""
        return (
            self.at,
            self.actor.kind.value,
            self.actor.id,
            self.actor.name,
            self.actor.user_id,
            self.action.value,
            self.target.kind or None,
            self.target.id,
            self.target.name,
            self.workspace_id,
            _clip(self.client_address, NAME_MAX),
            self.result.value,
            _clip(self.reason, REASON_MAX),
            self.details,
        )


COLUMNS = (
    "at",
    "actor_kind",
    "actor_id",
    "actor_name",
    "actor_user_id",
    "action",
    "target_kind",
    "target_id",
    "target_name",
    "workspace_id",
    "client_address",
    "result",
    "reason",
    "details",
)
