"""Workspaces: list, create, read, rename, delete."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field, field_validator
from quart import Blueprint, Response
from quart_schema import validate_request

from agentserver.api.common import Body, current_user, deps, require, rfc3339
from agentserver.auth.permissions import Action
from agentserver.db.database import Tx
from agentserver.errors import NotFound
from agentserver.models import Role, Workspace

blueprint = Blueprint("workspaces", __name__, url_prefix="/api/workspaces")


@dataclass(frozen=True, slots=True)
class WorkspaceWithRole:
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    role: str


class WorkspaceBody(Body):
    name: str = Field(min_length=1, max_length=100)

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


def workspace_json(ws: Workspace | WorkspaceWithRole, role: Role | str) -> dict[str, Any]:
    return {
        "id": ws.id,
        "name": ws.name,
        "role": str(role),
        "createdAt": rfc3339(ws.created_at),
        "updatedAt": rfc3339(ws.updated_at),
    }


@blueprint.get("")
async def list_workspaces() -> list[dict[str, Any]]:
    """The workspaces the caller is a member of, with their role in each."""
    user = await current_user()
    rows = await deps().db.many("list_workspaces_for_user", WorkspaceWithRole, user_id=user.id)
    return [workspace_json(ws, ws.role) for ws in rows]


@blueprint.post("")
@validate_request(WorkspaceBody)
async def create_workspace(data: WorkspaceBody) -> tuple[dict[str, Any], int]:
    """Create a workspace; the caller becomes its owner."""
    user = await current_user()
    name = data.name

    def work(tx: Tx) -> Workspace:
        ws = tx.one("create_workspace", Workspace, name=name)
        assert ws is not None
        tx.exec("add_member", workspace_id=ws.id, user_id=user.id, role=Role.OWNER.value)
        return ws

    ws = await deps().db.transaction(work)
    return workspace_json(ws, Role.OWNER), 201


@blueprint.get("/<workspace_id>")
async def get_workspace(workspace_id: str) -> dict[str, Any]:
    """One workspace (members only)."""
    _, role = await require(workspace_id, Action.VIEW_WORKSPACE)
    ws = await deps().db.one("get_workspace", Workspace, id=workspace_id)
    if ws is None:
        raise NotFound("workspace not found")
    return workspace_json(ws, role)


@blueprint.patch("/<workspace_id>")
@validate_request(WorkspaceBody)
async def rename_workspace(workspace_id: str, data: WorkspaceBody) -> dict[str, Any]:
    """Rename a workspace (owner, maintainer)."""
    _, role = await require(workspace_id, Action.RENAME_WORKSPACE)
    await deps().db.exec("rename_workspace", id=workspace_id, name=data.name)
    ws = await deps().db.one("get_workspace", Workspace, id=workspace_id)
    if ws is None:
        raise NotFound("workspace not found")
    return workspace_json(ws, role)


@blueprint.delete("/<workspace_id>")
async def delete_workspace(workspace_id: str) -> Response:
    """Delete a workspace, its sandboxes and its disk (owner)."""
    await require(workspace_id, Action.DELETE_WORKSPACE)
    await deps().sandboxes.delete_workspace_resources(workspace_id)
    await deps().db.exec("delete_workspace", id=workspace_id)
    return Response("", status=204)
