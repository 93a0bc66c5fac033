"""Sandbox routes: list, create, read, change (rename, private), delete, pause, resume,
restart, logs; the workspace event stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from pydantic import BaseModel, Field
from quart import Blueprint, Response, make_response, request
from quart_schema import validate_querystring, validate_request

from agentserver.api.auditing import record
from agentserver.api.common import (
    Body,
    current_user,
    deps,
    grant,
    member_role,
    require,
    rfc3339,
    session_cookie,
)
from agentserver.api.revocation import access_ended
from agentserver.audit import Action as AuditAction
from agentserver.audit import Result, Target
from agentserver.auth.api_tokens import token_access_key
from agentserver.auth.permissions import (
    PRIVATE_ACTIONS,
    Action,
    SandboxFacts,
    allowed,
    may_on_sandbox,
)
from agentserver.auth.revocation import Revocation
from agentserver.auth.tokens import hash_token
from agentserver.db.database import Tx
from agentserver.errors import AgentServerError, Conflict, Forbidden, Invalid, NotFound
from agentserver.kinds import kind_of
from agentserver.models import Role, Sandbox, SandboxType, Workspace
from agentserver.sandboxes.events import Event
from agentserver.sandboxes.service import PauseCause, Sandboxes
from agentserver.sandboxes.setup import (
    GIT_REF_MAX,
    GIT_URL_MAX,
    SandboxSetup,
    checked_env,
    checked_git_ref,
    checked_git_url,
)
from agentserver.settings import Settings

blueprint = Blueprint("sandboxes", __name__, url_prefix="/api")
HEARTBEAT = 15.0  # seconds between keep-alive comments on the event stream
CREATABLE = ("opencode", "openclaw")


class LogsQuery(BaseModel):
    """`GET …/logs` query: how many lines of the tail (a plain whole number)."""

    lines: int = Field(default=200, ge=1, le=5000, description="lines of the tail")


NAME_MAX = 100  # the web UI counts against the same number


class CreateSandboxBody(Body):
    name: str = Field(min_length=1, max_length=NAME_MAX)
    type: str = "opencode"
    private: bool = False
    # Variables for its agent (values never shown again) and a repository to clone onto the
    # workspace disk on its first start: see sandboxes/setup.py.
    env: dict[str, str] | None = None
    git_url: str | None = Field(default=None, max_length=GIT_URL_MAX)
    git_ref: str | None = Field(default=None, max_length=GIT_REF_MAX)


class ChangeSandboxBody(Body):
    """`PATCH /api/sandboxes/<id>`: each field given is changed; the others are kept."""

    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)
    private: bool | None = None


def service() -> Sandboxes:
    return deps().sandboxes


def sandbox_url(sandbox: Sandbox, settings: Settings, path: str = "/") -> str:
    """The browser URL of a sandbox's subdomain (and `path` on it)."""
    prefix = kind_of(sandbox.type).prefix  # the kinds table, as proxy/routing.py reads it
    return f"{settings.base_scheme}://{prefix}{sandbox.id}.{settings.domain}{path}"


def preview_url(sandbox_id: str, port: int, settings: Settings, path: str = "/") -> str:
    """The browser URL of a preview of `port` in a sandbox (and `path` on it)."""
    return f"{settings.base_scheme}://p{port}-{sandbox_id}.{settings.domain}{path}"


def sandbox_json(
    sandbox: Sandbox, settings: Settings, disk_path: str | None = None
) -> dict[str, Any]:
    """The API shape of a sandbox: never its password, token or internal address.
    `disk_path`: where its workspace's shared disk is inside it (Sandboxes.disk_path)."""
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
        "private": sandbox.private,
        # A local agent's last heartbeat (shown as "last seen" while it is offline).
        "lastSeenAt": rfc3339(sandbox.last_heartbeat_at),
        "diskPath": disk_path,
    }


def withheld_json(sandbox: Sandbox) -> dict[str, Any]:
    """Someone else's private sandbox, as members who may not open it see it: that it
    exists, whose it is and its status, nothing more."""
    return {
        "id": sandbox.id,
        "name": sandbox.name,
        "type": sandbox.type,
        "status": sandbox.status,
        "workspaceId": sandbox.workspace_id,
        "createdBy": sandbox.created_by,
        "createdAt": rfc3339(sandbox.created_at),
        "updatedAt": rfc3339(sandbox.updated_at),
        "private": True,
    }


def facts(sandbox: Sandbox, user_id: str, members_manage_all: bool = False) -> SandboxFacts:
    own = sandbox.created_by is not None and sandbox.created_by == user_id
    return SandboxFacts(own, sandbox.private, members_manage_all)


def shown(
    sandbox: Sandbox, sandboxes: Sandboxes, settings: Settings, user_id: str, role: Role
) -> dict[str, Any]:
    """The sandbox as `user_id` with `role` may see it: in full, or withheld (private)."""
    if may_on_sandbox(role, Action.VIEW_SANDBOX, facts(sandbox, user_id)):
        return sandbox_json(sandbox, settings, sandboxes.disk_path(sandbox))
    return withheld_json(sandbox)


def render(sandbox: Sandbox) -> dict[str, Any]:
    """`sandbox_json` with this server's settings (inside a request)."""
    return sandbox_json(sandbox, deps().settings, service().disk_path(sandbox))


async def sandbox_for(sandbox_id: str, action: Action) -> tuple[Sandbox, Role]:
    """The sandbox and the caller's role, if they may take `action` on it (whose it is and
    whether it is private count: auth/permissions.py `may_on_sandbox`).

    A non-member gets the same 404 as for a sandbox that does not exist.
    """
    user = await current_user()
    sandbox = await service().get(sandbox_id)
    role = None if sandbox is None else await member_role(sandbox.workspace_id, user.id)
    if sandbox is None or role is None:
        raise NotFound("sandbox not found")
    verb = action.value.replace("_", " ")
    if not allowed(role, action):
        raise Forbidden(f"a {role.value} may not {verb}")
    manage_all = False
    if action is Action.MANAGE_SANDBOX and sandbox.created_by != user.id:
        ws = await deps().db.one("get_workspace", Workspace, id=sandbox.workspace_id)
        manage_all = ws is not None and ws.members_manage_all
    if not may_on_sandbox(role, action, facts(sandbox, user.id, manage_all)):
        if sandbox.private and action in PRIVATE_ACTIONS:
            raise Forbidden(
                "this sandbox is private: only its creator, owners and maintainers may see it"
            )
        if action is Action.MANAGE_SANDBOX:
            raise Forbidden(
                f"a {role.value} may only pause, resume or delete their own sandboxes here"
            )
        raise Forbidden("only its creator, owners and maintainers may make a sandbox private")
    return sandbox, role


@blueprint.get("/workspaces/<workspace_id>/sandboxes")
async def list_sandboxes(workspace_id: str) -> list[dict[str, Any]]:
    """The workspace's sandboxes, oldest first (any member)."""
    user, role = await require(workspace_id, Action.VIEW_SANDBOXES)
    settings = deps().settings
    return [
        shown(s, service(), settings, user.id, role) for s in await service().list(workspace_id)
    ]


@blueprint.post("/workspaces/<workspace_id>/sandboxes")
@validate_request(CreateSandboxBody)
async def create_sandbox(workspace_id: str, data: CreateSandboxBody) -> tuple[dict[str, Any], int]:
    """Create a sandbox (`private`: only its creator, owners and maintainers may open it):
    answers 201 `creating` at once; it starts in the background."""
    user, _ = await require(workspace_id, Action.CREATE_SANDBOX)
    name = checked_name(data.name)
    kind = data.type.strip().lower()
    if kind not in CREATABLE:
        raise Invalid(f"type: must be one of {', '.join(CREATABLE)}", field="type")
    setup = checked_setup(data, deps().settings)
    taken = name_taken(name)
    if await deps().db.scalar("sbx_name_taken", workspace_id=workspace_id, name=name):
        raise taken
    try:
        sandbox = await service().create(workspace_id, name, kind, user.id, data.private, setup)
    except Conflict:  # another create of this name won the race: the unique index refused
        raise taken from None
    await record(
        AuditAction.SANDBOX_CREATED,
        sandbox_target(sandbox),
        workspace_id,
        details={"type": sandbox.type, "private": sandbox.private},
    )
    return render(sandbox), 201


def sandbox_target(sandbox: Sandbox) -> Target:
    return Target.of("sandbox", sandbox.id, sandbox.name)


async def record_on(
    sandbox: Sandbox, action: AuditAction, result: Result = Result.OK, reason: str | None = None
) -> None:
    """Audit `action` taken on the sandbox in this request."""
    await record(action, sandbox_target(sandbox), sandbox.workspace_id, result, reason=reason)


def checked_setup(data: CreateSandboxBody, settings: Settings) -> SandboxSetup | None:
    """The new sandbox's variables and repository, checked (None: it has neither)."""
    env = checked_env(data.env or {})
    git_url = git_ref = None
    if data.git_url and data.git_url.strip():
        git_url = checked_git_url(data.git_url, allow_file=settings.git_file_urls)
        if data.git_ref and data.git_ref.strip():
            git_ref = checked_git_ref(data.git_ref)
    elif data.git_ref and data.git_ref.strip():
        raise Invalid("gitRef: give a gitUrl too", field="gitRef")
    if not env and git_url is None:
        return None
    return SandboxSetup(env=env, git_url=git_url, git_ref=git_ref)


@blueprint.get("/sandboxes/<sandbox_id>/setup")
async def sandbox_setup(sandbox_id: str) -> dict[str, Any]:
    """What the sandbox was created with: its variables' names (never their values) and its
    git repository (whoever may open it)."""
    sandbox, _ = await sandbox_for(sandbox_id, Action.VIEW_SANDBOX)
    setup = await service().setup_of(sandbox.id, values=False)
    return {"envNames": sorted(setup.env), "gitUrl": setup.git_url, "gitRef": setup.git_ref}


def checked_name(text: str) -> str:
    """A sandbox name as stored: trimmed, never blank."""
    name = text.strip()
    if not name:
        raise Invalid("name: must not be blank", field="name")
    return name


def name_taken(name: str) -> Conflict:
    return Conflict(f'this workspace already has a sandbox named "{name}"', field="name")


@blueprint.get("/sandboxes/<sandbox_id>")
async def get_sandbox(sandbox_id: str) -> dict[str, Any]:
    """One sandbox (any member of its workspace; someone else's private one withheld)."""
    sandbox, role = await sandbox_for(sandbox_id, Action.VIEW_SANDBOXES)
    user = await current_user()
    return shown(sandbox, service(), deps().settings, user.id, role)


@blueprint.patch("/sandboxes/<sandbox_id>")
@validate_request(ChangeSandboxBody)
async def change_sandbox(sandbox_id: str, data: ChangeSandboxBody) -> dict[str, Any]:
    """Rename a sandbox (whoever may manage it) and/or make it private or not (its creator;
    owners and maintainers any). Making it private ends, at once, the sandbox-host sessions
    of everyone else who may not open it. Each change is published on the event stream."""
    if data.name is None and data.private is None:
        raise Invalid("give a name or private to change", field="name")
    # Every permission is checked before anything changes.
    first = Action.SET_SANDBOX_PRIVATE if data.private is not None else Action.MANAGE_SANDBOX
    sandbox, _ = await sandbox_for(sandbox_id, first)
    if data.name is not None:
        if first is not Action.MANAGE_SANDBOX:
            sandbox, _ = await sandbox_for(sandbox_id, Action.MANAGE_SANDBOX)
        name = checked_name(data.name)
        if name != sandbox.name:
            sandbox = await rename(sandbox, name)
    if data.private is not None:
        sandbox = await set_private(sandbox_id, data.private)
    return render(sandbox)


async def set_private(sandbox_id: str, private: bool) -> Sandbox:
    keep = [r.value for r in Role if allowed(r, Action.SEE_PRIVATE_SANDBOX)]

    def work(tx: Tx) -> tuple[Sandbox | None, list[str]]:
        row = tx.one("sbx_set_private", Sandbox, id=sandbox_id, private=private)
        if row is None or not private:
            return row, []
        ended = tx.rows("sbx_end_private_sessions", id=sandbox_id, keep_roles=keep)
        return row, sorted({r["user_id"] for r in ended})

    changed, ended = await deps().db.transaction(work)
    if changed is None:
        raise NotFound("sandbox not found")
    for user_id in ended:
        await access_ended(
            Revocation(user_id, workspace_id=changed.workspace_id, sandbox_id=changed.id)
        )
    deps().access.forget(changed.id)  # cached accesses carry the old row
    service().publish(changed)
    return changed


async def rename(sandbox: Sandbox, name: str) -> Sandbox:
    taken = name_taken(name)
    # Only a case change of its own name may match the sandbox itself: the index allows that.
    if name.lower() != sandbox.name.strip().lower() and await deps().db.scalar(
        "sbx_name_taken", workspace_id=sandbox.workspace_id, name=name
    ):
        raise taken
    try:
        return await service().rename(sandbox.id, name)
    except Conflict:  # another sandbox took the name meanwhile: the unique index refused
        raise taken from None


@blueprint.delete("/sandboxes/<sandbox_id>")
async def delete_sandbox(sandbox_id: str) -> Response:
    """Stop the sandbox and remove it with its files (its creator; owners and maintainers
    any, developers too when the workspace allows it)."""
    sandbox, _ = await sandbox_for(sandbox_id, Action.MANAGE_SANDBOX)
    try:
        await service().delete(sandbox_id)
    except AgentServerError as exc:
        await record_on(sandbox, AuditAction.SANDBOX_DELETED, Result.FAILED, exc.message)
        raise
    await deps().hub.close(sandbox_id)  # a local agent's token died with the row: end its tunnel
    await record_on(sandbox, AuditAction.SANDBOX_DELETED)
    if sandbox.type == SandboxType.LOCAL:
        await record_on(sandbox, AuditAction.AGENT_REVOKED)
    return Response("", status=204)


@blueprint.post("/sandboxes/<sandbox_id>/pause")
async def pause_sandbox(sandbox_id: str) -> dict[str, Any]:
    """running → pausing (409 in any other status); it stops in the background (who: as
    for delete)."""
    await sandbox_for(sandbox_id, Action.MANAGE_SANDBOX)
    user = await current_user()
    sandbox = await service().pause(sandbox_id, cause=PauseCause.user(user.id))
    await record_on(sandbox, AuditAction.SANDBOX_PAUSED)
    return render(sandbox)


@blueprint.post("/sandboxes/<sandbox_id>/resume")
async def resume_sandbox(sandbox_id: str) -> dict[str, Any]:
    """paused or failed → resuming (409 otherwise); it starts in the background (who: as
    for delete)."""
    await sandbox_for(sandbox_id, Action.MANAGE_SANDBOX)
    sandbox = await service().resume(sandbox_id)
    await record_on(sandbox, AuditAction.SANDBOX_RESUMED)
    return render(sandbox)


@blueprint.post("/sandboxes/<sandbox_id>/restart")
async def restart_sandbox(sandbox_id: str) -> dict[str, Any]:
    """running or paused → resuming (409 otherwise, and for a local sandbox); in the background
    its agent is stopped and started again (→ running, or → failed with the reason)."""
    await sandbox_for(sandbox_id, Action.MANAGE_SANDBOX)
    sandbox = await service().restart(sandbox_id)
    await record_on(sandbox, AuditAction.SANDBOX_RESTARTED)
    return render(sandbox)


@blueprint.get("/sandboxes/<sandbox_id>/logs")
@validate_querystring(LogsQuery)
async def sandbox_logs(sandbox_id: str, query_args: LogsQuery) -> dict[str, Any]:
    """The tail of the agent's output (`?lines=`, 1-5000, default 200; developer and up)."""
    await sandbox_for(sandbox_id, Action.VIEW_LOGS)
    return {"logs": await service().logs(sandbox_id, query_args.lines)}


def sse(
    event: Event, settings: Settings, view: Callable[[Sandbox], dict[str, Any]] | None = None
) -> bytes:
    """One server-sent event: `event: <type>` and its payload as JSON data (a sandbox's row
    in its API shape, or as `view` shows it to the subscriber)."""
    kind = str(event.get("type", "message"))
    payload = event.get(kind, {k: v for k, v in event.items() if k != "type"})
    if isinstance(payload, Sandbox):
        payload = sandbox_json(payload, settings) if view is None else view(payload)
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


@blueprint.get("/workspaces/<workspace_id>/events")
async def workspace_events(workspace_id: str) -> Response:
    """Server-sent events: the current sandboxes, then every change; a heartbeat every 15 s."""
    user, role = await require(workspace_id, Action.VIEW_WORKSPACE)
    svc = service()
    settings = deps().settings

    # The role is fixed for the stream's life: a role change ends the subscription.
    def view(sandbox: Sandbox) -> dict[str, Any]:
        return shown(sandbox, svc, settings, user.id, role)

    # Subscribe before reading the snapshot, so no change can fall between the two. The
    # subscription names its member: removing them or changing their role ends it.
    # A stream opened with an API token ends when that token is revoked (api/tokens.py).
    limits = grant()
    opened_by = (
        token_access_key(limits.token_id)
        if limits is not None
        else hash_token(request.cookies.get(session_cookie(), ""))
    )
    sub = svc.events.subscribe(workspace_id, user.id, opened_by)
    try:
        snapshot = await svc.list(workspace_id)
    except BaseException:
        sub.close()
        raise
    if deps().cluster.presence.draining:
        # This replica is shutting down (serve.begin_drain ended the streams it had): the
        # snapshot, then the end, and the browser reconnects through the balancer elsewhere.
        sub.end()

    # An event queued while the snapshot was read may be older than the snapshot's row: the
    # stream never shows a sandbox going back (migration 0023's versions).
    shown_version = {sandbox.id: sandbox.version for sandbox in snapshot}

    def older(event: Event) -> bool:
        row = event.get("sandbox")
        if not isinstance(row, Sandbox) or row.version is None:
            return False
        known = shown_version.get(row.id)
        return known is not None and row.version <= known

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
                yield sse({"type": "sandbox", "sandbox": sandbox}, settings, view)
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
                if event is not None and older(event):
                    continue
                yield sse(event, settings, view) if event is not None else b": heartbeat\n\n"

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
