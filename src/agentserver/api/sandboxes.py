"""Sandbox routes: list, create, read, delete, pause, resume, logs; the workspace event stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from pydantic import BaseModel, Field
from quart import Blueprint, Response, make_response, request
from quart_schema import validate_querystring, validate_request

from agentserver.api.common import (
    Body,
    current_user,
    deps,
    member_role,
    require,
    rfc3339,
    session_cookie,
)
from agentserver.auth.permissions import Action, allowed
from agentserver.auth.tokens import hash_token
from agentserver.errors import Conflict, Forbidden, Invalid, NotFound
from agentserver.models import Sandbox, SandboxType
from agentserver.sandboxes.events import Event
from agentserver.sandboxes.service import PauseCause, Sandboxes
from agentserver.settings import Settings

blueprint = Blueprint("sandboxes", __name__, url_prefix="/api")
HEARTBEAT = 15.0  # seconds between keep-alive comments on the event stream
CREATABLE = ("opencode", "openclaw")


class LogsQuery(BaseModel):
    """`GET …/logs` query: how many lines of the tail (a plain whole number)."""

    lines: int = Field(default=200, ge=1, le=5000, description="lines of the tail")


class CreateSandboxBody(Body):
    name: str = Field(min_length=1, max_length=100)
    type: str = "opencode"


def service() -> Sandboxes:
    return deps().sandboxes


def sandbox_url(sandbox: Sandbox, settings: Settings) -> str:
    prefix = "claw" if sandbox.type == SandboxType.OPENCLAW else "oc"
    return f"{settings.base_scheme}://{prefix}-{sandbox.id}.{settings.domain}/"


def sandbox_json(sandbox: Sandbox, settings: Settings) -> dict[str, Any]:
    """The API shape of a sandbox: never its password, token or internal address."""
    return {
        "id": sandbox.id,
        "name": sandbox.name,
        "type": sandbox.type,
        "status": sandbox.status,
        "statusReason": sandbox.status_reason,
        "workspaceId": sandbox.workspace_id,
        "createdBy": sandbox.created_by,
        "createdAt": rfc3339(sandbox.created_at),
        "updatedAt": rfc3339(sandbox.updated_at),
        "lastActivityAt": rfc3339(sandbox.last_activity_at),
        "pausedAt": rfc3339(sandbox.paused_at),
        "pausedReason": sandbox.paused_reason,
        "pausedBy": sandbox.paused_by_name,
        "pausedIdleSeconds": sandbox.paused_idle_seconds,
        "url": sandbox_url(sandbox, settings),
        # A local agent's last heartbeat (shown as "last seen" while it is offline).
        "lastSeenAt": rfc3339(sandbox.last_heartbeat_at),
    }


def render(sandbox: Sandbox) -> dict[str, Any]:
    """`sandbox_json` with this server's settings (inside a request)."""
    return sandbox_json(sandbox, deps().settings)


async def sandbox_for(sandbox_id: str, action: Action) -> Sandbox:
    """The sandbox, if the caller's role in its workspace allows `action`.

    A non-member gets the same 404 as for a sandbox that does not exist.
    """
    user = await current_user()
    sandbox = await service().get(sandbox_id)
    role = None if sandbox is None else await member_role(sandbox.workspace_id, user.id)
    if sandbox is None or role is None:
        raise NotFound("sandbox not found")
    if not allowed(role, action):
        raise Forbidden(f"a {role.value} may not {action.value.replace('_', ' ')}")
    return sandbox


@blueprint.get("/workspaces/<workspace_id>/sandboxes")
async def list_sandboxes(workspace_id: str) -> list[dict[str, Any]]:
    """The workspace's sandboxes, oldest first (any member)."""
    await require(workspace_id, Action.VIEW_SANDBOXES)
    return [render(s) for s in await service().list(workspace_id)]


@blueprint.post("/workspaces/<workspace_id>/sandboxes")
@validate_request(CreateSandboxBody)
async def create_sandbox(workspace_id: str, data: CreateSandboxBody) -> tuple[dict[str, Any], int]:
    """Create a sandbox: answers 201 `creating` at once; it starts in the background."""
    user, _ = await require(workspace_id, Action.CREATE_SANDBOX)
    name = data.name.strip()
    if not name:
        raise Invalid("name: must not be blank", field="name")
    kind = data.type.strip().lower()
    if kind not in CREATABLE:
        raise Invalid(f"type: must be one of {', '.join(CREATABLE)}", field="type")
    taken = Conflict(f'this workspace already has a sandbox named "{name}"', field="name")
    if await deps().db.scalar("sbx_name_taken", workspace_id=workspace_id, name=name):
        raise taken
    try:
        sandbox = await service().create(workspace_id, name, kind, user.id)
    except Conflict:  # another create of this name won the race: the unique index refused
        raise taken from None
    return render(sandbox), 201


@blueprint.get("/sandboxes/<sandbox_id>")
async def get_sandbox(sandbox_id: str) -> dict[str, Any]:
    """One sandbox (any member of its workspace)."""
    return render(await sandbox_for(sandbox_id, Action.VIEW_SANDBOXES))


@blueprint.delete("/sandboxes/<sandbox_id>")
async def delete_sandbox(sandbox_id: str) -> Response:
    """Stop the sandbox and remove it with its files (developer and up)."""
    await sandbox_for(sandbox_id, Action.MANAGE_SANDBOX)
    await service().delete(sandbox_id)
    await deps().hub.close(sandbox_id)  # a local agent's token died with the row: end its tunnel
    return Response("", status=204)


@blueprint.post("/sandboxes/<sandbox_id>/pause")
async def pause_sandbox(sandbox_id: str) -> dict[str, Any]:
    """running → pausing (409 in any other status); it stops in the background."""
    await sandbox_for(sandbox_id, Action.MANAGE_SANDBOX)
    user = await current_user()
    return render(await service().pause(sandbox_id, cause=PauseCause.user(user.id)))


@blueprint.post("/sandboxes/<sandbox_id>/resume")
async def resume_sandbox(sandbox_id: str) -> dict[str, Any]:
    """paused or failed → resuming (409 otherwise); it starts in the background."""
    await sandbox_for(sandbox_id, Action.MANAGE_SANDBOX)
    return render(await service().resume(sandbox_id))


@blueprint.get("/sandboxes/<sandbox_id>/logs")
@validate_querystring(LogsQuery)
async def sandbox_logs(sandbox_id: str, query_args: LogsQuery) -> dict[str, Any]:
    """The tail of the agent's output (`?lines=`, 1-5000, default 200; developer and up)."""
    await sandbox_for(sandbox_id, Action.VIEW_LOGS)
    return {"logs": await service().logs(sandbox_id, query_args.lines)}


def sse(event: Event, settings: Settings) -> bytes:
    """One server-sent event: `event: <type>` and its payload as JSON data (a sandbox's row
    in its API shape)."""
    kind = str(event.get("type", "message"))
    payload = event.get(kind, {k: v for k, v in event.items() if k != "type"})
    if isinstance(payload, Sandbox):
        payload = sandbox_json(payload, settings)
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


@blueprint.get("/workspaces/<workspace_id>/events")
async def workspace_events(workspace_id: str) -> Response:
    """Server-sent events: the current sandboxes, then every change; a heartbeat every 15 s."""
    user, _ = await require(workspace_id, Action.VIEW_WORKSPACE)
    svc = service()
    settings = deps().settings
    # Subscribe before reading the snapshot, so no change can fall between the two. The
    # subscription names its member: removing them or changing their role ends it.
    session = request.cookies.get(session_cookie(), "")
    sub = svc.events.subscribe(workspace_id, user.id, hash_token(session))
    try:
        snapshot = await svc.list(workspace_id)
    except BaseException:
        sub.close()
        raise

    # Quart streams an async iterator. If it were abandoned without being closed, the
    # subscription would fill and the hub would drop it, so nothing leaks for long.
    # A checkpoint before every yield: the snapshot's yields await nothing, and a receive
    # under a deadline may end without one.
    async def stream() -> AsyncIterator[bytes]:
        with sub:
            await trio.lowlevel.checkpoint()
            yield b": connected\n\n"
            for sandbox in snapshot:
                await trio.lowlevel.checkpoint()
                yield sse({"type": "sandbox", "sandbox": sandbox}, settings)
            while True:
                event: Event | None = None
                ended = False
                with trio.move_on_after(HEARTBEAT):
                    try:
                        event = await sub.inbox.receive()
                    except trio.EndOfChannel:  # too slow, workspace gone, or member removed
                        ended = True
                await trio.lowlevel.checkpoint()
                if ended:
                    return
                yield sse(event, settings) if event is not None else b": heartbeat\n\n"

    response: Response = await make_response(  # type: ignore[assignment]
        stream(),
        200,
        {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    response.timeout = None
    return response
