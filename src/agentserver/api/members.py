"""Workspace members: list, add (by username or email), change role, remove."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from quart import Blueprint, Response
from quart_schema import validate_request

from agentserver.api.auditing import record
from agentserver.api.common import Body, deps, require, rfc3339
from agentserver.api.revocation import access_ended
from agentserver.audit import Action as AuditAction
from agentserver.audit import Target
from agentserver.auth.permissions import Action, allowed, may_grant, parse_role
from agentserver.auth.revocation import Revocation
from agentserver.db.database import Tx
from agentserver.errors import Conflict, Forbidden, Invalid, NotFound
from agentserver.models import Member, Role, User

blueprint = Blueprint("members", __name__, url_prefix="/api/workspaces/<workspace_id>/members")


class AddMemberBody(Body):
    username: str | None = Field(default=None, max_length=254)
    email: str | None = Field(default=None, max_length=254)
    role: str = "developer"


class RoleBody(Body):
    role: str


def member_json(m: Member) -> dict[str, Any]:
    return {
        "userId": m.user_id,
        "username": m.username,
        "email": m.email,
        "role": m.role,
        "createdAt": rfc3339(m.created_at),
    }


def _role(text: str) -> Role:
    try:
        return parse_role(text)
    except ValueError as exc:
        raise Invalid(str(exc), field="role") from None


@blueprint.get("")
async def list_members(workspace_id: str) -> list[dict[str, Any]]:
    """Everyone in the workspace with their role (members only)."""
    await require(workspace_id, Action.LIST_MEMBERS)
    rows = await deps().db.many("list_members", Member, workspace_id=workspace_id)
    return [member_json(m) for m in rows]


@blueprint.post("")
@validate_request(AddMemberBody)
async def add_member(workspace_id: str, data: AddMemberBody) -> tuple[dict[str, Any], int]:
    """Add a user by username or email (owner; maintainer for non-owner roles)."""
    _, actor = await require(workspace_id, Action.ADD_MEMBER)
    role = _role(data.role)
    if not may_grant(actor, role):
        raise Forbidden(f"a {actor.value} may not add a {role.value}")
    login = (data.username or data.email or "").strip()
    if not login:
        raise Invalid("give a username or an email", field="username")

    def work(tx: Tx) -> Member:
        user = tx.one("get_user_by_login", User, login=login)
        if user is None:
            raise NotFound("no user with that username or email")
        if tx.scalar("get_member_role", workspace_id=workspace_id, user_id=user.id):
            raise Conflict(f"{user.username} is already a member")
        tx.exec("add_member", workspace_id=workspace_id, user_id=user.id, role=role.value)
        member = tx.one("get_member", Member, workspace_id=workspace_id, user_id=user.id)
        assert member is not None
        return member

    member = await deps().db.transaction(work)
    await record(
        AuditAction.MEMBER_ADDED, member_target(member), workspace_id, details={"role": role.value}
    )
    return member_json(member), 201


def member_target(member: Member) -> Target:
    return Target.of("user", member.user_id, member.username)


def _keep_an_owner(tx: Tx, workspace_id: str, user_id: str) -> str:
    """Lock the member list; refuse when this would leave the workspace without an owner."""
    tx.exec("lock_members", workspace_id=workspace_id)
    current = tx.scalar("get_member_role", workspace_id=workspace_id, user_id=user_id)
    if current is None:
        raise NotFound("not a member of this workspace")
    return str(current)


@blueprint.put("/<user_id>")
@validate_request(RoleBody)
async def change_role(workspace_id: str, user_id: str, data: RoleBody) -> dict[str, Any]:
    """Change a member's role (owner); the last owner cannot be demoted."""
    _, actor = await require(workspace_id, Action.CHANGE_MEMBER_ROLE)
    role = _role(data.role)
    if not may_grant(actor, role):
        raise Forbidden(f"a {actor.value} may not grant {role.value}")

    def work(tx: Tx) -> Member:
        current = _keep_an_owner(tx, workspace_id, user_id)
        if (
            current == Role.OWNER
            and role != Role.OWNER
            and tx.scalar("count_owners", workspace_id=workspace_id) <= 1
        ):
            raise Conflict("the last owner cannot be demoted; make someone else owner first")
        tx.exec("set_member_role", workspace_id=workspace_id, user_id=user_id, role=role.value)
        if current != role:
            _revoke_access(
                tx, workspace_id, user_id, keep_codes=allowed(role, Action.CREATE_AGENT_CODE)
            )
        member = tx.one("get_member", Member, workspace_id=workspace_id, user_id=user_id)
        assert member is not None
        return member

    member = await deps().db.transaction(work)
    await access_ended(Revocation(user_id, workspace_id=workspace_id))
    await record(
        AuditAction.MEMBER_ROLE_CHANGED,
        member_target(member),
        workspace_id,
        details={"role": role.value},
    )
    return member_json(member)


@blueprint.delete("/<user_id>")
async def remove_member(workspace_id: str, user_id: str) -> Response:
    """Remove a member (owner; anyone may leave); the last owner cannot be removed."""
    # Any member may leave; removing someone else is REMOVE_MEMBER in the role matrix.
    user, actor = await require(workspace_id, Action.VIEW_WORKSPACE)
    if user.id != user_id and not allowed(actor, Action.REMOVE_MEMBER):
        raise Forbidden(f"a {actor.value} may not remove members")

    def work(tx: Tx) -> Member | None:
        current = _keep_an_owner(tx, workspace_id, user_id)
        if current == Role.OWNER and tx.scalar("count_owners", workspace_id=workspace_id) <= 1:
            raise Conflict("the last owner cannot be removed; make someone else owner first")
        member = tx.one("get_member", Member, workspace_id=workspace_id, user_id=user_id)
        _revoke_access(tx, workspace_id, user_id, keep_codes=False)
        tx.exec("remove_member", workspace_id=workspace_id, user_id=user_id)
        return member

    member = await deps().db.transaction(work)
    await access_ended(Revocation(user_id, workspace_id=workspace_id))
    target = member_target(member) if member else Target.of("user", user_id)
    await record(AuditAction.MEMBER_REMOVED, target, workspace_id)
    return Response("", status=204)


def _revoke_access(tx: Tx, workspace_id: str, user_id: str, keep_codes: bool) -> None:
    """What a member loses with a removal or a role change, in the same transaction: their
    sandbox-host sessions (the next request re-checks the role through /open) and, unless the
    new role may still add local agents, their unspent agent registration codes."""
    tx.exec("revoke_sandbox_sessions_for_member", workspace_id=workspace_id, user_id=user_id)
    if not keep_codes:
        tx.exec("agent_revoke_member_codes", workspace_id=workspace_id, user_id=user_id)
