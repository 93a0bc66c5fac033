"""Local agents: one-time registration codes, registration, and the tunnel endpoint.

A developer mints a code (`POST /api/workspaces/{wid}/agent-code`); `agentserver agent connect`
spends it (`POST /api/agent/register`) for a `local` sandbox and a tunnel token, then dials
`/api/tunnel/{sandboxId}` with the token in the Authorization header. While the tunnel is up the
sandbox is `running`; when the registered tunnel ends it is `offline` again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import trio
from pydantic import Field
from quart import Blueprint, websocket
from quart_schema import validate_request

from agentserver.api.common import Body, client_address, deps, require, rfc3339
from agentserver.api.tunnel_link import QuartLink
from agentserver.auth.permissions import Action, allowed
from agentserver.auth.tokens import hash_token, new_token
from agentserver.db.database import Tx
from agentserver.deps import Deps
from agentserver.errors import (
    AgentServerError,
    Conflict,
    Forbidden,
    Invalid,
    RateLimited,
    Unauthenticated,
)
from agentserver.models import Sandbox, SandboxStatus
from agentserver.sandboxes.service import insert_sandbox
from agentserver.tunnel import masking
from agentserver.tunnel.connection import Role, Settings
from agentserver.tunnel.frames import max_message_size
from agentserver.tunnel.hub import Hub
from agentserver.tunnel.transport import Tunnel, TunnelClosed

log = logging.getLogger(__name__)
blueprint = Blueprint("agents", __name__, url_prefix="/api")

CODE_LIFETIME = 600  # seconds: a code is for the next few minutes, not for later
HEARTBEAT = 20.0  # tunnel pings and last_heartbeat_at, in seconds
# What the server accepts from agents. Large frames and credit: the per-frame Python cost, not
# the bytes copied, bounds bulk throughput (bench/bench_tunnel.py); 2 MiB per stream, granted
# back a megabyte at a time, keeps a download streaming without a pause for credit. A stream
# starts with 128 KiB and gets the rest at once while the tunnel's receive budget lasts, so an
# agent can never make the server hold more than budget + streams x 128 KiB for slow browsers.
TUNNEL_SETTINGS = Settings(
    max_frame_payload=256 * 1024,
    initial_window=128 * 1024,
    ping_interval=HEARTBEAT,
    stream_window=2 * 1024 * 1024,
)
STATUS_TIMEOUT = 10.0


class CodeSpent(AgentServerError):
    """The registration code was already used or has expired (410)."""

    status = 410
    code = "code_spent"


class RegisterBody(Body):
    code: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=100)


def hub_of(d: Deps) -> Hub:
    hub = d.extras.get("hub")
    assert isinstance(hub, Hub), "the tunnel feature (open_tunnel) is not running"
    return hub


# -- registration --------------------------------------------------------------------------------


@blueprint.post("/workspaces/<workspace_id>/agent-code")
async def create_agent_code(workspace_id: str) -> tuple[dict[str, Any], int]:
    """A one-time code (10 minutes) to register a local agent in this workspace (developer+)."""
    user, _ = await require(workspace_id, Action.CREATE_AGENT_CODE)
    code = new_token(18)
    db = deps().db
    await db.exec("agent_delete_stale_codes")
    expires_at = await db.scalar(
        "agent_create_code",
        code_hash=hash_token(code),
        workspace_id=workspace_id,
        user_id=user.id,
        lifetime=CODE_LIFETIME,
    )
    return {"code": code, "expiresAt": rfc3339(expires_at)}, 201


@blueprint.post("/agent/register")
@validate_request(RegisterBody)
async def register_agent(data: RegisterBody) -> tuple[dict[str, Any], int]:
    """Spend a code for a new `local` sandbox and its tunnel token (shown this once)."""
    d = deps()
    key = f"agent-code:{client_address()}"
    wait = d.code_throttle.retry_after(key)
    if wait:
        raise RateLimited("too many wrong registration codes; try again later", retry_after=wait)
    name = data.name.strip()
    if not name:
        raise Invalid("name: must not be blank", field="name")
    spent = await d.db.transaction(lambda tx: _spend_code(tx, hash_token(data.code.strip()), name))
    if spent is None or not spent["fresh"]:
        d.code_throttle.fail(key)
        if spent is None:
            raise Unauthenticated("unknown registration code; create a new one in the web UI")
        if spent["expired"]:
            raise CodeSpent("this registration code has expired; create a new one in the web UI")
        raise CodeSpent("this registration code was already used; create a new one in the web UI")
    if not spent["creator_may_add"]:
        raise Forbidden(
            "whoever created this registration code may no longer add agents to this workspace"
        )
    token = new_token()
    try:
        sandbox = await _insert_sandbox(d, spent["workspace_id"], name, spent["user_id"], token)
    except Conflict:  # another sandbox took the name since the check (the unique index)
        raise _name_taken(name) from None
    service = d.extras.get("sandboxes")
    if service is not None and hasattr(service, "publish"):
        service.publish(sandbox)
    log.info(
        "local agent registered as sandbox %s in workspace %s", sandbox.id, sandbox.workspace_id
    )
    return {"sandboxId": sandbox.id, "tunnelToken": token, "workspaceId": sandbox.workspace_id}, 201


def _name_taken(name: str) -> Conflict:
    return Conflict(
        f'this workspace already has a sandbox named "{name}"; choose another --name',
        field="name",
    )


def _spend_code(tx: Tx, code_hash: str, name: str) -> dict[str, Any] | None:
    """Spend a code, and say whether its creator may still add agents (removing or demoting
    a member also deletes their unspent codes; this check covers a spend racing that). A name
    the workspace already has refuses the registration and leaves the code unspent (the
    transaction rolls back), so the agent can try again with another name."""
    rows = tx.rows("agent_spend_code", code_hash=code_hash)
    if not rows:
        return None
    spent = rows[0]
    if spent["fresh"] and tx.scalar(
        "sbx_name_taken", workspace_id=spent["workspace_id"], name=name
    ):
        raise _name_taken(name)
    role = tx.scalar(
        "get_member_role", workspace_id=spent["workspace_id"], user_id=spent["user_id"]
    )
    return {**spent, "creator_may_add": allowed(role, Action.CREATE_AGENT_CODE)}


async def _insert_sandbox(
    d: Deps, workspace_id: str, name: str, user_id: str, token: str
) -> Sandbox:
    return await insert_sandbox(
        d.db,
        "agent_insert_sandbox",
        workspace_id=workspace_id,
        name=name,
        created_by=user_id,
        tunnel_token_hash=hash_token(token),
    )


# -- the tunnel ----------------------------------------------------------------------------------


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@blueprint.websocket("/tunnel/<sandbox_id>")
async def tunnel_endpoint(sandbox_id: str) -> None:
    """The agent's tunnel: authenticated by `Authorization: Bearer <tunnel token>` only."""
    if "token" in websocket.args:
        raise Invalid("send the tunnel token in the Authorization header, never in the URL")
    token = _bearer(websocket.headers.get("Authorization"))
    if token is None:
        raise Unauthenticated("send the tunnel token as `Authorization: Bearer <token>`")
    d = deps()
    token_hash = hash_token(token)
    sandbox = await d.db.one(
        "agent_tunnel_sandbox", Sandbox, id=sandbox_id.lower(), tunnel_token_hash=token_hash
    )
    if sandbox is None:
        raise Unauthenticated(
            "the tunnel token is not valid: the sandbox was deleted or its token revoked"
        )
    if websocket.headers.get("Sec-WebSocket-Extensions"):
        # permessage-deflate would let a small message inflate past any cap before it is seen.
        raise Invalid("the tunnel takes no WebSocket extensions (no compression)")
    await websocket.accept()
    ws = cast(Any, websocket)._get_current_object()
    link = QuartLink(ws, max_message=max_message_size(TUNNEL_SETTINGS.max_frame_payload))
    await serve_tunnel(d, sandbox, token_hash, link)


def tunnel_settings(d: Deps) -> Settings:
    """TUNNEL_SETTINGS with the configured stream cap and receive budget."""
    return replace(
        TUNNEL_SETTINGS,
        max_streams=d.settings.tunnel_max_streams,
        receive_budget=d.settings.tunnel_receive_budget,
    )


async def serve_tunnel(d: Deps, sandbox: Sandbox, token_hash: str, link: QuartLink) -> None:
    """Run one agent's tunnel until it ends; its tasks live in this handler's nursery."""
    # A tunnel closed at once may leave by `except*` with nothing awaited but shielded cleanup.
    await trio.lowlevel.checkpoint()
    hub = hub_of(d)
    tunnel = Tunnel(
        link,
        role=Role.SERVER,
        settings=tunnel_settings(d),
        send_timeout=d.settings.tunnel_send_timeout,
    )
    registered = False
    try:
        async with trio.open_nursery() as nursery:

            async def run(task_status: trio.TaskStatus[None]) -> None:
                try:
                    await tunnel.run(task_status=task_status)
                finally:
                    nursery.cancel_scope.cancel()  # the heartbeat ends with the tunnel

            await nursery.start(run)
            await hub.register(sandbox.id, tunnel)
            registered = True
            log.info("local agent of sandbox %s connected", sandbox.id)
            await sync_status(d, hub, sandbox.id)
            nursery.start_soon(heartbeat, d, tunnel, sandbox.id, token_hash)
    except* TunnelClosed as group:
        log.info("tunnel of sandbox %s ended: %s", sandbox.id, group.exceptions[0])
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(STATUS_TIMEOUT):
            if registered and hub.unregister(sandbox.id, tunnel):
                log.info("local agent of sandbox %s disconnected", sandbox.id)
                await sync_status(d, hub, sandbox.id)
            hub.release_lock(sandbox.id)
        hub.finish(tunnel)


async def heartbeat(d: Deps, tunnel: Tunnel, sandbox_id: str, token_hash: str) -> None:
    """Record the agent as alive; close the tunnel once its token is gone (sandbox deleted)."""
    while not tunnel.closed:
        try:
            alive = await d.db.exec("agent_heartbeat", id=sandbox_id, tunnel_token_hash=token_hash)
        except AgentServerError as exc:
            log.warning("heartbeat of sandbox %s not recorded: %s", sandbox_id, exc.message)
            alive = 1
        if not alive:
            log.info("sandbox %s was deleted: closing its tunnel", sandbox_id)
            await tunnel.aclose()
            return
        await trio.sleep(HEARTBEAT)
    await trio.lowlevel.checkpoint()  # the tunnel may have closed before the first beat


async def sync_status(d: Deps, hub: Hub, sandbox_id: str) -> None:
    """Write `running` or `offline` as the hub says *now*, one writer per sandbox at a time."""
    async with hub.status_lock(sandbox_id):
        if hub.get(sandbox_id) is not None:
            await set_status(d, sandbox_id, SandboxStatus.OFFLINE, SandboxStatus.RUNNING, None)
        else:
            await set_status(
                d,
                sandbox_id,
                SandboxStatus.RUNNING,
                SandboxStatus.OFFLINE,
                "the local agent disconnected",
            )


async def set_status(d: Deps, sandbox_id: str, expected: str, new: str, reason: str | None) -> None:
    service = d.extras.get("sandboxes")
    try:
        if service is not None and hasattr(service, "set_status"):
            await service.set_status(sandbox_id, expected, new, reason)
            return
        await d.db.one(
            "agent_set_status", Sandbox, id=sandbox_id, expected=[expected], new=new, reason=reason
        )
    except AgentServerError as exc:
        log.warning("status of sandbox %s not written: %s", sandbox_id, exc.message)
        await trio.lowlevel.checkpoint()  # the error may come before anything was awaited


# -- the feature ---------------------------------------------------------------------------------


@asynccontextmanager
async def open_tunnel(d: Deps) -> AsyncIterator[None]:
    """Feature opener (serve.FEATURES): the hub and these routes; no tunnel outlives the server."""
    masking.install()  # agents' frames are masked: unmask them in C (tunnel/masking.py)
    hub = Hub()
    d.extras["hub"] = hub
    d.extras.setdefault("blueprints", []).append(blueprint)
    stale = await d.db.rows("agent_all_offline")
    if stale:
        log.info("%d local sandbox(es) offline until their agents reconnect", len(stale))
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await hub.close_all()
        d.extras.pop("hub", None)
