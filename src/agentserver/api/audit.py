"""Reading the audit log: a workspace's log for its owners and maintainers, everything for
admins, and the admins' JSON-lines export (api/auditing.py records from requests)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import trio
from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, make_response
from quart_schema import validate_querystring

from agentserver.api.common import deps, require, require_admin, rfc3339
from agentserver.api.usage import parse_when
from agentserver.auth.permissions import Action as Permission
from agentserver.errors import Invalid

blueprint = Blueprint("audit", __name__, url_prefix="/api")
PAGE_DEFAULT = 50
PAGE_MAX = 500
EXPORT_PAGE = 1000  # rows per query while streaming the export
# A read first waits (this long at most) for entries recorded before it to be stored, so whoever
# just acted sees it in the log; a database that is failing does not hold the read up longer.
READ_YOUR_WRITES = 2.0


class AuditQuery(BaseModel):
    """The filters of a log: an action (or its prefix, `sandbox.`), an actor (a user's id or
    name), a period, and the cursor of the page (`nextCursor` of the previous one)."""

    model_config = ConfigDict(populate_by_name=True)

    action: str | None = Field(default=None, max_length=100, description="e.g. sandbox.paused")
    actor: str | None = Field(default=None, max_length=254, description="a user's id or name")
    since: str | None = Field(default=None, alias="from", description="RFC 3339 or YYYY-MM-DD")
    until: str | None = Field(default=None, alias="to", description="RFC 3339 or YYYY-MM-DD")
    cursor: str | None = Field(default=None, max_length=20, description="nextCursor")
    limit: int = Field(default=PAGE_DEFAULT, ge=1, le=PAGE_MAX)


class AdminAuditQuery(AuditQuery):
    workspace: str | None = Field(default=None, max_length=100, description="a workspace id")


def filters(query: AuditQuery, workspace_id: str | None) -> dict[str, Any]:
    """The query parameters of the log's SQL (audit.sql) from the request's."""
    since = parse_when(query.since, "from", end=False) if query.since else None
    until = parse_when(query.until, "to", end=True) if query.until else None
    if since and until and since > until:
        raise Invalid("from: must not be after to", field="from")
    return {
        "workspace_id": workspace_id,
        "action": query.action.strip() or None if query.action else None,
        "actor": query.actor.strip() or None if query.actor else None,
        "since": since,
        "until": until,
    }


def cursor_value(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()):
        raise Invalid("cursor: use the nextCursor of the previous page", field="cursor")
    return int(text)


def entry_json(row: dict[str, Any]) -> dict[str, Any]:
    at: datetime = row["at"]
    return {
        "id": str(row["id"]),
        "at": rfc3339(at),
        "actor": {
            "kind": row["actor_kind"],
            "id": row["actor_id"],
            "name": row["actor_name"],
            "userId": row["actor_user_id"],
        },
        "action": row["action"],
        "target": {"kind": row["target_kind"], "id": row["target_id"], "name": row["target_name"]},
        "workspaceId": row["workspace_id"],
        "clientAddress": row["client_address"],
        "result": row["result"],
        "reason": row["reason"],
        "details": json.loads(row["details"]),
    }


async def caught_up() -> None:
    with trio.move_on_after(READ_YOUR_WRITES):
        await deps().audit.flush()


async def page(query: AuditQuery, workspace_id: str | None) -> dict[str, Any]:
    """One page, newest first, with the cursor of the next (null on the last)."""
    await caught_up()
    rows = await deps().db.rows(
        "audit_page",
        **filters(query, workspace_id),
        before=cursor_value(query.cursor),
        limit=query.limit + 1,  # one more tells whether there is a next page
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return {
        "entries": [entry_json(r) for r in rows],
        "nextCursor": str(rows[-1]["id"]) if more else None,
    }


@blueprint.get("/workspaces/<workspace_id>/audit")
@validate_querystring(AuditQuery)
async def workspace_audit(workspace_id: str, query_args: AuditQuery) -> dict[str, Any]:
    """The workspace's audit log, newest first, paged (owners and maintainers)."""
    await require(workspace_id, Permission.READ_AUDIT_LOG)
    return await page(query_args, workspace_id)


@blueprint.get("/admin/audit")
@validate_querystring(AdminAuditQuery)
async def admin_audit(query_args: AdminAuditQuery) -> dict[str, Any]:
    """Every audit entry on the server, newest first, paged (`workspace=` narrows it)."""
    await require_admin()
    return await page(query_args, query_args.workspace)


@blueprint.get("/admin/audit/export")
@validate_querystring(AdminAuditQuery)
async def admin_audit_export(query_args: AdminAuditQuery) -> Response:
    """Every matching entry, oldest first, as JSON lines: streamed a page at a time, never
    held whole in memory (`cursor` and `limit` are ignored)."""
    await require_admin()
    where = filters(query_args, query_args.workspace)
    db = deps().db
    await caught_up()

    # A checkpoint before every yield (the rows of a page await nothing in between).
    async def lines() -> AsyncIterator[bytes]:
        after = 0
        while True:
            rows = await db.rows("audit_export_page", **where, after=after, limit=EXPORT_PAGE)
            for row in rows:
                await trio.lowlevel.checkpoint()
                yield (json.dumps(entry_json(row), separators=(",", ":")) + "\n").encode()
            await trio.lowlevel.checkpoint()
            if len(rows) < EXPORT_PAGE:
                return
            after = rows[-1]["id"]

    response: Response = await make_response(  # type: ignore[assignment]
        lines(),
        200,
        {
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": 'attachment; filename="audit.jsonl"',
            "Cache-Control": "no-store",
        },
    )
    response.timeout = None
    return response
