"""Local agents: one-time registration codes, registration, and the tunnel endpoint.

A developer mints a code (`POST /api/workspaces/{wid}/agent-code`); `agentserver agent connect`
spends it (`POST /api/agent/register`) for a `local` sandbox and a tunnel token, then dials
`/api/tunnel/{sandboxId}` with the token in the Authorization header; the session behind it
(hub, status, heartbeat) is sandboxes/tunnel_session.py's.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from pydantic import Field
from quart import Blueprint, websocket
from quart_schema import validate_request

from agentserver.api.auditing import record
from agentserver.api.common import Body, client_address, deps, require, rfc3339
from agentserver.api.tunnel_link import QuartLink
from agentserver.audit import Action as AuditAction
from agentserver.audit import Actor, Result, Target
from agentserver.auth.permissions import Action, allowed
from agentserver.auth.tokens import hash_token, new_code, new_token
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
from agentserver.kinds import PREVIEW_PORTS_HEADER
from agentserver.models import Sandbox
from agentserver.sandboxes.service import insert_sandbox
from agentserver.sandboxes.tunnel_admission import TunnelAsk, admit
from agentserver.sandboxes.tunnel_session import TUNNEL_SETTINGS
from agentserver.tunnel import max_message_size
from agentserver.tunnel import version as tunnel_version

log = logging.getLogger(__name__)
blueprint = Blueprint("agents", __name__, url_prefix="/api")

CODE_LIFETIME = 600  # seconds: a code is for the next few minutes, not for later


class CodeSpent(AgentServerError):
    """The registration code was already used or has expired (410)."""

    status = 410
    code = "code_spent"


class RegisterBody(Body):
    code: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=100)


# -- registration --------------------------------------------------------------------------------


@blueprint.post("/workspaces/<workspace_id>/agent-code")
async def create_agent_code(workspace_id: str) -> tuple[dict[str, Any], int]:
    """A one-time code (10 minutes) to register a local agent in this workspace (developer+)."""
    user, _ = await require(workspace_id, Action.CREATE_AGENT_CODE)
    code = new_code(18)  # typed as `--code CODE`: never starting with '-'
    db = deps().db
    await db.exec("agent_delete_stale_codes")
    expires_at = await db.scalar(
        "agent_create_code",
        code_hash=hash_token(code),
        workspace_id=workspace_id,
        user_id=user.id,
        lifetime=CODE_LIFETIME,
    )
    await record(AuditAction.AGENT_CODE_CREATED, Target.of("workspace", workspace_id), workspace_id)
    return {"code": code, "expiresAt": rfc3339(expires_at)}, 201


@blueprint.post("/agent/register")
@validate_request(RegisterBody)
async def register_agent(data: RegisterBody) -> tuple[dict[str, Any], int]:
    """Spend a code for a new `local` sandbox and its tunnel token (shown this once)."""
    d = deps()
    key = f"agent-code:{client_address()}"
    wait = await d.code_throttle.retry_after(key)
    if wait:
        raise RateLimited("too many wrong registration codes; try again later", retry_after=wait)
    name = data.name.strip()
    if not name:
        raise Invalid("name: must not be blank", field="name")
    spent = await d.db.transaction(lambda tx: _spend_code(tx, hash_token(data.code.strip()), name))
    if spent is None or not spent["fresh"]:
        await d.code_throttle.fail(key)
        refusal: AgentServerError
        if spent is None:
            refusal = Unauthenticated("unknown registration code; create a new one in the web UI")
        elif spent["expired"]:
            refusal = CodeSpent(
                "this registration code has expired; create a new one in the web UI"
            )
        else:
            refusal = CodeSpent(
                "this registration code was already used; create a new one in the web UI"
            )
        await _refused(name, spent, refusal)
        raise refusal
    if not spent["creator_may_add"]:
        refusal = Forbidden(
            "whoever created this registration code may no longer add agents to this workspace"
        )
        await _refused(name, spent, refusal)
        raise refusal
    token = new_token()
    try:
        sandbox = await _insert_sandbox(d, spent["workspace_id"], name, spent["user_id"], token)
    except Conflict:  # another sandbox took the name since the check (the unique index)
        raise _name_taken(name) from None
    d.sandboxes.publish(sandbox)
    log.info(
        "local agent registered as sandbox %s in workspace %s", sandbox.id, sandbox.workspace_id
    )
    await record(
        AuditAction.AGENT_REGISTERED,
        Target.of("sandbox", sandbox.id, sandbox.name),
        sandbox.workspace_id,
        actor=Actor.agent(sandbox.id, sandbox.name),
        details={"codeCreatedBy": spent["user_id"]},
    )
    return {"sandboxId": sandbox.id, "tunnelToken": token, "workspaceId": sandbox.workspace_id}, 201


async def _refused(name: str, spent: dict[str, Any] | None, refusal: AgentServerError) -> None:
    """Audit a registration refused (in the code's workspace, when the code was a real one)."""
    await record(
        AuditAction.AGENT_REGISTERED,
        None,
        spent["workspace_id"] if spent else None,
        Result.REFUSED,
        actor=Actor.agent(None, name),
        reason=refusal.message,
    )


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


# -- the tunnel ---------------------------------------------------------------------------------


@blueprint.websocket("/tunnel/<sandbox_id>")
async def tunnel_endpoint(sandbox_id: str) -> None:
    """The agent's tunnel: authenticated by `Authorization: Bearer <tunnel token>` only.

    Agents' upgrades usually reach the front door's own WebSocket (proxy/tunnel_door.py); this
    route serves those that do not come that way. Both run `admit`'s checks."""
    d = deps()
    headers = websocket.headers
    ask = TunnelAsk(
        sandbox_id=sandbox_id,
        token_in_url="token" in websocket.args,
        authorization=headers.get("Authorization"),
        protocol=headers.get(tunnel_version.HEADER),
        extensions=headers.get("Sec-WebSocket-Extensions"),
        preview_ports=headers.get(PREVIEW_PORTS_HEADER),
        peer=websocket.remote_addr,
        forwarded=headers.getlist("Forwarded"),
        forwarded_for=headers.getlist("X-Forwarded-For"),
    )
    admitted = await admit(
        ask,
        db=d.db,
        draining=d.cluster.presence.draining,
        trusted=d.settings.trusted_proxies,
    )
    await websocket.accept()
    ws = cast(Any, websocket)._get_current_object()
    link = QuartLink(ws, max_message=max_message_size(TUNNEL_SETTINGS.max_frame_payload))
    await d.tunnels.serve(
        admitted.sandbox,
        admitted.token_hash,
        link,
        admitted.shared_ports,
        admitted.client_address,
    )
