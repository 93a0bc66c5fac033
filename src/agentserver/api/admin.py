"""Server administration (the server admin only): users (role, disable, password reset),
every workspace and every sandbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field
from quart import Blueprint
from quart_schema import validate_request

from agentserver.api.auditing import record
from agentserver.api.common import Body, deps, require_admin, rfc3339, user_json
from agentserver.api.revocation import access_ended
from agentserver.audit import Action, Target
from agentserver.auth import passwords
from agentserver.auth.revocation import Revocation
from agentserver.db.database import Tx
from agentserver.errors import Conflict, Forbidden, Invalid, NotFound
from agentserver.models import SystemRole, User

blueprint = Blueprint("admin", __name__, url_prefix="/api/admin")


@dataclass(frozen=True, slots=True)
class ManagedUser:
    """A user as the admin pages see them: with whether they are disabled."""

    id: str
    username: str
    email: str | None
    role: str
    created_at: datetime
    disabled_at: datetime | None


class UserRoleBody(Body):
    role: str


class ResetPasswordBody(Body):
    """A new password for the user, or none: the server makes one up and shows it once."""

    password: str | None = Field(default=None, max_length=1024)


def managed_json(user: ManagedUser) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "createdAt": rfc3339(user.created_at),
        "disabled": user.disabled_at is not None,
        "disabledAt": rfc3339(user.disabled_at),
    }


def still_admin(tx: Tx, admin: User) -> None:
    """Under the users lock: the actor is still an active admin (another admin may have
    demoted or disabled them meanwhile)."""
    tx.exec("lock_users")
    actor = tx.one("admin_get_user", ManagedUser, id=admin.id)
    if actor is None or actor.role != SystemRole.ADMIN or actor.disabled_at is not None:
        raise Forbidden("only the server admin may do this")


@blueprint.get("/users")
async def list_users() -> list[dict[str, Any]]:
    """Every user, with whether they are disabled."""
    await require_admin()
    return [managed_json(u) for u in await deps().db.many("admin_list_users", ManagedUser)]


@blueprint.put("/users/<user_id>/role")
@validate_request(UserRoleBody)
async def set_user_role(user_id: str, data: UserRoleBody) -> dict[str, Any]:
    """Make a user admin or not; the server always keeps at least one active admin."""
    admin = await require_admin()
    try:
        role = SystemRole(data.role)
    except ValueError:
        raise Invalid("role must be admin or user", field="role") from None
    if admin.id == user_id and role != SystemRole.ADMIN:
        raise Conflict("you cannot remove your own admin role")

    def work(tx: Tx) -> None:
        # One change at a time (as registration): two admins demoting each other at once
        # would otherwise each see the other still admin and leave the server with none.
        still_admin(tx, admin)
        if not tx.exec("set_user_role", id=user_id, role=role.value):
            raise NotFound("user not found")
        if tx.scalar("count_admins") < 1:
            raise Conflict("the server must keep at least one admin")

    await deps().db.transaction(work)
    user = await deps().db.one("get_user", User, id=user_id)
    assert user is not None
    await record(
        Action.USER_ROLE_CHANGED,
        Target.of("user", user.id, user.username),
        details={"role": role.value},
    )
    return user_json(user)


@blueprint.post("/users/<user_id>/disable")
async def disable_user(user_id: str) -> dict[str, Any]:
    """Disable a user: they cannot sign in by any method, and every session they have (with
    its sandbox-host sessions and event streams) ends at once. The last active admin stays."""
    admin = await require_admin()
    if admin.id == user_id:
        raise Conflict("you cannot disable your own account")

    def work(tx: Tx) -> ManagedUser:
        still_admin(tx, admin)
        if not tx.exec("set_user_disabled", id=user_id, disabled=True):
            raise NotFound("user not found")
        if tx.scalar("count_admins") < 1:
            raise Conflict("the last active admin cannot be disabled")
        tx.exec("delete_user_sessions", user_id=user_id)
        user = tx.one("admin_get_user", ManagedUser, id=user_id)
        assert user is not None
        return user

    user = await deps().db.transaction(work)
    await access_ended(Revocation(user_id))
    await record(Action.USER_DISABLED, Target.of("user", user.id, user.username))
    return managed_json(user)


@blueprint.post("/users/<user_id>/enable")
async def enable_user(user_id: str) -> dict[str, Any]:
    """Let a disabled user sign in again (their old sessions stay ended)."""
    admin = await require_admin()

    def work(tx: Tx) -> ManagedUser:
        still_admin(tx, admin)
        if not tx.exec("set_user_disabled", id=user_id, disabled=False):
            raise NotFound("user not found")
        user = tx.one("admin_get_user", ManagedUser, id=user_id)
        assert user is not None
        return user

    user = await deps().db.transaction(work)
    await record(Action.USER_ENABLED, Target.of("user", user.id, user.username))
    return managed_json(user)


@blueprint.post("/users/<user_id>/password")
@validate_request(ResetPasswordBody)
async def reset_password(user_id: str, data: ResetPasswordBody) -> dict[str, Any]:
    """Set a user's password (it must pass the same rules as registration), or have the server
    make one up, answered once as `password`. Every session of the user ends."""
    admin = await require_admin()
    if admin.id == user_id:
        raise Conflict("change your own password on your account page")
    target = await deps().db.one("get_user", User, id=user_id)
    if target is None:
        raise NotFound("user not found")
    generated = data.password is None
    if data.password is None:
        password = passwords.generate_password(target.username)
    else:
        password = passwords.check_password(data.password, target.username)
    password_hash = await passwords.hash_password(password)

    def work(tx: Tx) -> None:
        still_admin(tx, admin)
        if not tx.exec("set_password_hash", id=user_id, password_hash=password_hash):
            raise NotFound("user not found")
        tx.exec("delete_user_sessions", user_id=user_id)

    await deps().db.transaction(work)
    await access_ended(Revocation(user_id))
    await record(
        Action.USER_PASSWORD_RESET,
        Target.of("user", target.id, target.username),
        details={"generated": generated},
    )
    return {"password": password if generated else None}


@blueprint.get("/workspaces")
async def list_workspaces() -> list[dict[str, Any]]:
    """Every workspace with its sandbox and member counts."""
    await require_admin()
    rows = await deps().db.rows("list_all_workspaces")
    return [
        {
            "id": r["id"],
            "name": r["name"],
            "createdAt": rfc3339(r["created_at"]),
            "sandboxCount": r["sandbox_count"],
            "memberCount": r["member_count"],
        }
        for r in rows
    ]


@blueprint.get("/sandboxes")
async def list_sandboxes() -> list[dict[str, Any]]:
    """Every sandbox on the server: its workspace, creator, status and type."""
    await require_admin()
    rows = await deps().db.rows("admin_list_sandboxes")
    return [
        {
            "id": r["id"],
            "name": r["name"],
            "type": r["type"],
            "status": r["status"],
            "statusReason": r["status_reason"],
            "workspaceId": r["workspace_id"],
            "workspaceName": r["workspace_name"],
            "createdBy": r["created_by"],
            "creator": r["creator"],
            "createdAt": rfc3339(r["created_at"]),
            "lastActivityAt": rfc3339(r["last_activity_at"]),
        }
        for r in rows
    ]
