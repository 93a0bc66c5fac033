"""Domain records and enumerations shared by every layer (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    """A member's role in one workspace, strongest first."""

    OWNER = "owner"
    MAINTAINER = "maintainer"
    DEVELOPER = "developer"
    GUEST = "guest"


class SystemRole(StrEnum):
    """A user's role on the whole server."""

    ADMIN = "admin"
    USER = "user"


class SandboxStatus(StrEnum):
    """Where a sandbox is in its lifecycle (see sandboxes/lifecycle.py for the transitions)."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    OFFLINE = "offline"
    FAILED = "failed"


class SandboxType(StrEnum):
    """What runs inside a sandbox."""

    OPENCODE = "opencode"
    OPENCLAW = "openclaw"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    email: str | None
    role: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    idle_timeout_seconds: int | None = None  # None: the server's --idle-timeout
    # Members who may manage sandboxes may manage everyone's, not only their own (0011).
    members_manage_all: bool = False


@dataclass(frozen=True, slots=True)
class Member:
    workspace_id: str
    user_id: str
    username: str
    email: str | None
    role: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A sandbox row. `agent_secret` is the agent's password: never put it in API output."""

    id: str
    workspace_id: str
    name: str
    type: str
    status: str
    status_reason: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    paused_at: datetime | None
    agent_secret: str
    endpoint_host: str | None
    endpoint_port: int | None
    backend_ref: str | None
    last_heartbeat_at: datetime | None
    # Only its creator and the roles that may see private sandboxes open it (migration 0011).
    # Every query that reads a sandbox selects it: a row without it would show a private
    # sandbox to everyone.
    private: bool = False
    # Why it was paused (migration 0010): "idle" after `paused_idle_seconds`, or "user" by
    # `paused_by` (its name in `paused_by_name`). Only the queries that show it select these.
    paused_reason: str | None = None
    paused_by: str | None = None
    paused_by_name: str | None = None
    paused_idle_seconds: float | None = None
    # Bumped by every change a dashboard shows (migration 0023): event streams never go back
    # to an older row. None where a query does not select it.
    version: int | None = None
