"""Workspaces: list, create, read, rename and change settings (idle timeout, who manages
sandboxes), delete."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field
from quart import Blueprint, Response
from quart_schema import validate_request

from agentserver.api.auditing import record
from agentserver.api.common import Body, Name, current_user, deps, grant, require, rfc3339
from agentserver.audit import Action as AuditAction
from agentserver.audit import Target
from agentserver.auth.permissions import Action, allowed
from agentserver.db.database import Tx
from agentserver.errors import Conflict, Forbidden, Invalid, NotFound
from agentserver.models import Role, Workspace
from agentserver.sandboxes.service import duration_text

blueprint = Blueprint("workspaces", __name__, url_prefix="/api/workspaces")


@dataclass(frozen=True, slots=True)
class WorkspaceWithRole:
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    members_manage_all: bool
    role: str
    idle_timeout_seconds: int | None = None


NAME_MAX = 100  # the web UI counts against the same number


class WorkspaceBody(Body):
    name: Name = Field(min_length=1, max_length=NAME_MAX)


class ChangeWorkspaceBody(Body):
    """`PATCH`: a new name and/or settings (each optional, at least one);
    `idleTimeoutSeconds: null` restores the server's default."""

    name: Name | None = Field(default=None, min_length=1, max_length=NAME_MAX)
    idle_timeout_seconds: int | None = Field(default=None, ge=0, le=2**31 - 1)
    members_manage_all_sandboxes: bool | None = None


def workspace_json(ws: Workspace | WorkspaceWithRole, role: Role | str) -> dict[str, Any]:
    settings = deps().settings
    return {
        "id": ws.id,
        "name": ws.name,
        "role": str(role),
        "membersManageAllSandboxes": ws.members_manage_all,
        "createdAt": rfc3339(ws.created_at),
        "updatedAt": rfc3339(ws.updated_at),
        "idleTimeoutSeconds": ws.idle_timeout_seconds,
        "defaultIdleTimeoutSeconds": settings.idle_timeout,
        "maxIdleTimeoutSeconds": settings.max_idle_timeout,
    }


def checked_idle_timeout(seconds: int | None, maximum: float) -> int | None:
    """A workspace's idle timeout within the server's maximum (0: never pause, only without
    one); Invalid names the maximum."""
    field = "idleTimeoutSeconds"
    if seconds is None:
        return None
    if maximum > 0 and seconds == 0:
        raise Invalid(
            f"{field}: 0 (never pause) is not allowed on this server; the maximum is"
            f" {duration_text(maximum)}",
            field=field,
        )
    if maximum > 0 and seconds > maximum:
        raise Invalid(
            f"{field}: at most {duration_text(maximum)} ({maximum:g} seconds) on this server",
            field=field,
        )
    return seconds


@blueprint.get("")
async def list_workspaces() -> list[dict[str, Any]]:
    """The workspaces the caller is a member of, with their role in each (with a token
    limited to one workspace: only that one)."""
    user = await current_user()
    rows = await deps().db.many("list_workspaces_for_user", WorkspaceWithRole, user_id=user.id)
    limits = grant()
    return [workspace_json(ws, ws.role) for ws in rows if limits is None or limits.reaches(ws.id)]


@blueprint.post("")
@validate_request(WorkspaceBody)
async def create_workspace(data: WorkspaceBody) -> tuple[dict[str, Any], int]:
    """Create a workspace; the caller becomes its owner."""
    user = await current_user()
    limits = grant()
    if limits is not None and limits.workspace_id is not None:
        raise Forbidden("a token limited to one workspace cannot create workspaces")
    name = data.name

    def work(tx: Tx) -> Workspace:
        ws = tx.one("create_workspace", Workspace, name=name, created_by=user.id)
        assert ws is not None
        tx.exec("add_member", workspace_id=ws.id, user_id=user.id, role=Role.OWNER.value)
        return ws

    try:
        ws = await deps().db.transaction(work)
    except Conflict:  # the only unique key a new workspace can hit: its owner's names
        raise Conflict(f'you already have a workspace named "{name}"', field="name") from None
    await record(AuditAction.WORKSPACE_CREATED, workspace_target(ws), ws.id)
    return workspace_json(ws, Role.OWNER), 201


def workspace_target(ws: Workspace) -> Target:
    return Target.of("workspace", ws.id, ws.name)


@blueprint.get("/<workspace_id>")
async def get_workspace(workspace_id: str) -> dict[str, Any]:
    """One workspace (members only)."""
    _, role = await require(workspace_id, Action.VIEW_WORKSPACE)
    ws = await deps().db.one("get_workspace", Workspace, id=workspace_id)
    if ws is None:
        raise NotFound("workspace not found")
    return workspace_json(ws, role)


@blueprint.patch("/<workspace_id>")
@validate_request(ChangeWorkspaceBody)
async def change_workspace(workspace_id: str, data: ChangeWorkspaceBody) -> dict[str, Any]:
    """Rename a workspace and/or change its settings (owner, maintainer): its own idle timeout,
    and `membersManageAllSandboxes`, which lets members who manage sandboxes manage everyone's."""
    given = data.model_fields_set
    if not given:
        raise Invalid("give a name or a setting to change", field="name")
    user, role = await require(workspace_id, Action.VIEW_WORKSPACE)
    for field, action in (
        ("name", Action.RENAME_WORKSPACE),
        ("idle_timeout_seconds", Action.CHANGE_WORKSPACE_SETTINGS),
        ("members_manage_all_sandboxes", Action.CHANGE_WORKSPACE_SETTINGS),
    ):
        if field in given and not allowed(role, action):
            raise Forbidden(f"a {role.value} may not {action.value.replace('_', ' ')}")
    db = deps().db
    seconds = None
    if "idle_timeout_seconds" in given:  # checked before anything changes
        seconds = checked_idle_timeout(data.idle_timeout_seconds, deps().settings.max_idle_timeout)
    if data.name is not None:  # first: a name already taken (409) leaves the settings as they were
        await _rename(workspace_id, data.name, user.id)
    if "idle_timeout_seconds" in given:
        await db.exec("set_workspace_idle_timeout", id=workspace_id, seconds=seconds)
        watcher = deps().idle_watcher
        if watcher is not None:
            watcher.poke()  # its sandboxes may be due sooner now
    if data.members_manage_all_sandboxes is not None:
        await db.exec(
            "set_workspace_members_manage_all",
            id=workspace_id,
            members_manage_all=data.members_manage_all_sandboxes,
        )
    ws = await db.one("get_workspace", Workspace, id=workspace_id)
    if ws is None:
        raise NotFound("workspace not found")
    if data.name is not None:
        await record(AuditAction.WORKSPACE_RENAMED, workspace_target(ws), ws.id)
    settings: dict[str, int | bool | None] = {}
    if "idle_timeout_seconds" in given:
        settings["idleTimeoutSeconds"] = ws.idle_timeout_seconds
    if data.members_manage_all_sandboxes is not None:
        settings["membersManageAllSandboxes"] = ws.members_manage_all
    if settings:
        await record(
            AuditAction.WORKSPACE_SETTINGS_CHANGED, workspace_target(ws), ws.id, details=settings
        )
    return workspace_json(ws, role)


async def _rename(workspace_id: str, name: str, user_id: str) -> None:
    try:
        await deps().db.exec("rename_workspace", id=workspace_id, name=name)
    except Conflict:  # the owner's names are unique (trimmed, ignoring case)
        owner = await deps().db.rows("workspace_name_owner", id=workspace_id)
        whose = (
            "you already have"
            if not owner or owner[0]["created_by"] == user_id
            else f"its owner {owner[0]['username']} already has"
        )
        raise Conflict(f'{whose} a workspace named "{name}"', field="name") from None


@blueprint.delete("/<workspace_id>")
async def delete_workspace(workspace_id: str) -> Response:
    """Delete a workspace, its sandboxes and its disk (owner)."""
    await require(workspace_id, Action.DELETE_WORKSPACE)
    ws = await deps().db.one("get_workspace", Workspace, id=workspace_id)
    await deps().sandboxes.delete_workspace_resources(workspace_id)
    await deps().db.exec("delete_workspace", id=workspace_id)
    name = ws.name if ws is not None else None
    await record(
        AuditAction.WORKSPACE_DELETED, Target.of("workspace", workspace_id, name), workspace_id
    )
    return Response("", status=204)
