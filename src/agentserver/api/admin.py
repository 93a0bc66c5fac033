"""Server administration (the server admin only): users and their server role."""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import validate_request

from agentserver.api.common import Body, deps, require_admin, rfc3339, user_json
from agentserver.db.database import Tx
from agentserver.errors import Conflict, Forbidden, Invalid, NotFound
from agentserver.models import SystemRole, User

blueprint = Blueprint("admin", __name__, url_prefix="/api/admin")


class UserRoleBody(Body):
    role: str


@blueprint.get("/users")
async def list_users() -> list[dict[str, Any]]:
    """Every user."""
    await require_admin()
    return [user_json(u) for u in await deps().db.many("list_users", User)]


@blueprint.put("/users/<user_id>/role")
@validate_request(UserRoleBody)
async def set_user_role(user_id: str, data: UserRoleBody) -> dict[str, Any]:
    """Make a user admin or not; the server always keeps at least one admin."""
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
        tx.exec("lock_users")
        if tx.scalar("get_user_role", id=admin.id) != SystemRole.ADMIN:
            raise Forbidden("only the server admin may do this")
        if not tx.exec("set_user_role", id=user_id, role=role.value):
            raise NotFound("user not found")
        if tx.scalar("count_admins") < 1:
            raise Conflict("the server must keep at least one admin")

    await deps().db.transaction(work)
    user = await deps().db.one("get_user", User, id=user_id)
    assert user is not None
    return user_json(user)


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
