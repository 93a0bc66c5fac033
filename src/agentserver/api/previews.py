"""Preview routes: a sandbox's previews (the ports it serves) and making a port public.

`GET /api/sandboxes/{id}/previews` lists what the sandbox serves (sandboxes/previews.py) with
each port's URL, the URL that opens it through the one-time ticket (`/open?port=`), and whether
it is public. `PUT`/`DELETE …/previews/{port}/public` make a port reachable without signing in,
or not any more (a member who may use the sandbox; never a guest); pausing the sandbox makes
every port private again (migration 0019's trigger). Each change is published on the
workspace's event stream, which also makes the proxy forget what it cached.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from agentserver.api.auditing import record
from agentserver.api.common import current_user, deps, rfc3339
from agentserver.api.sandboxes import preview_url, sandbox_for
from agentserver.audit import Action as AuditAction
from agentserver.audit import Target
from agentserver.auth.permissions import Action
from agentserver.db.database import Tx
from agentserver.errors import Invalid
from agentserver.kinds import PREVIEW_HIGHEST, PREVIEW_LOWEST, preview_refusal
from agentserver.models import Sandbox
from agentserver.sandboxes.event_relay import announce_previews
from agentserver.sandboxes.previews import PortMark, previews_of, publish_previews_changed
from agentserver.settings import Settings

blueprint = Blueprint("previews", __name__, url_prefix="/api/sandboxes")


def mark_json(sandbox: Sandbox, mark: PortMark, settings: Settings) -> dict[str, Any]:
    """One preview in its API shape."""
    return {
        "port": mark.port,
        "public": mark.public,
        "url": preview_url(sandbox.id, mark.port, settings),
        "openUrl": f"/api/sandboxes/{sandbox.id}/open?port={mark.port}",
        "changedBy": mark.changed_by_name,
        "changedAt": rfc3339(mark.changed_at) if mark.changed_at else None,
    }


def checked_port(text: str) -> int:
    """A port from the path that may be previewed (400 naming why not)."""
    port = int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else 0
    why = preview_refusal(port, None)
    if why == "out_of_range":
        raise Invalid(f"port: must be {PREVIEW_LOWEST}-{PREVIEW_HIGHEST}", field="port")
    if why == "agent_port":
        raise Invalid("port: that is an agent's own port, never a preview", field="port")
    return port


@blueprint.get("/<sandbox_id>/previews")
async def list_previews(sandbox_id: str) -> dict[str, Any]:
    """The ports the sandbox serves (where its backend can tell; a local agent's shared ports)
    and every public one, for whoever may open the sandbox."""
    sandbox, _ = await sandbox_for(sandbox_id, Action.VIEW_SANDBOX)
    d = deps()
    found = await previews_of(d.db, d.sandboxes.backend, d.hub, sandbox)
    return {
        "available": found.available,
        "previews": [mark_json(sandbox, m, d.settings) for m in found.ports],
    }


async def set_public(sandbox_id: str, port_text: str, public: bool) -> dict[str, Any]:
    sandbox, _ = await sandbox_for(sandbox_id, Action.USE_SANDBOX)
    port = checked_port(port_text)
    if public and sandbox.endpoint_port == port:
        raise Invalid("port: that is the sandbox's agent, never a preview", field="port")
    user = await current_user()
    d = deps()

    def work(tx: Tx) -> list[dict[str, Any]]:
        rows = tx.rows(
            "preview_set_public", sandbox_id=sandbox.id, port=port, public=public, user_id=user.id
        )
        # Other replicas' dashboards and proxies hear of it once this commits; this one's now.
        announce_previews(tx, d.events, sandbox.workspace_id, sandbox.id)
        return rows

    rows = await d.db.transaction(work)
    publish_previews_changed(d.events, sandbox.workspace_id, sandbox.id)
    await record(
        AuditAction.PREVIEW_MADE_PUBLIC if public else AuditAction.PREVIEW_MADE_PRIVATE,
        Target.of("sandbox", sandbox.id, sandbox.name),
        sandbox.workspace_id,
        details={"port": port},
    )
    return mark_json(sandbox, PortMark(**rows[0]), d.settings)


@blueprint.put("/<sandbox_id>/previews/<port>/public")
async def make_public(sandbox_id: str, port: str) -> dict[str, Any]:
    """Anyone may reach this port's preview without signing in, until it is made private or
    the sandbox pauses (a member who may use the sandbox)."""
    return await set_public(sandbox_id, port, True)


@blueprint.delete("/<sandbox_id>/previews/<port>/public")
async def make_private(sandbox_id: str, port: str) -> dict[str, Any]:
    """Only members may reach this port's preview again (a member who may use the sandbox)."""
    return await set_public(sandbox_id, port, False)
