"""LLM usage per workspace (members) and per-workspace LLM limits (server admin)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response
from quart_schema import validate_querystring, validate_request

from agentserver.api.auditing import record
from agentserver.api.common import Body, deps, require, require_admin, rfc3339
from agentserver.audit import Action as AuditAction
from agentserver.audit import Target
from agentserver.auth.permissions import Action
from agentserver.errors import Invalid, NotFound

blueprint = Blueprint("usage", __name__)
DEFAULT_PERIOD = timedelta(days=30)
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_COUNTS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


class UsageQuery(BaseModel):
    """`GET …/usage` query: the period, each end an RFC 3339 time or a YYYY-MM-DD day (UTC)."""

    model_config = ConfigDict(populate_by_name=True)

    since: str | None = Field(
        default=None, alias="from", description="start (default: 30 days before `to`)"
    )
    until: str | None = Field(
        default=None, alias="to", description="end; a day includes all of it (default: now)"
    )


def shifted(when: datetime, delta: timedelta) -> datetime:
    """`when + delta`, held at the ends of the calendar (year 1, year 9999) instead of failing."""
    try:
        return when + delta
    except OverflowError:
        return _LATEST if delta > timedelta(0) else _EARLIEST


def parse_when(text: str, name: str, *, end: bool) -> datetime:
    """An RFC 3339 time or a YYYY-MM-DD day (UTC; as `to`, the whole day is included)."""
    try:
        if _DAY.match(text):
            day = date.fromisoformat(text)
            when = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return shifted(when, timedelta(days=1)) if end else when
        when = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{name}: not an RFC 3339 time or a YYYY-MM-DD day", field=name) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def period(query: UsageQuery) -> tuple[datetime, datetime]:
    """The `from`/`to` query parameters: by default the last 30 days."""
    until = parse_when(query.until, "to", end=True) if query.until else datetime.now(UTC)
    since = (
        parse_when(query.since, "from", end=False)
        if query.since
        else shifted(until, -DEFAULT_PERIOD)
    )
    if since > until:
        raise Invalid("from: must not be after to", field="from")
    return since, until


def counts_json(row: dict[str, Any]) -> dict[str, int]:
    counts = {name: int(row.get(name) or 0) for name in _COUNTS}
    total = sum(counts[n] for n in _COUNTS[2:])
    return {
        "requests": counts["requests"],
        "errors": counts["errors"],
        "inputTokens": counts["input_tokens"],
        "outputTokens": counts["output_tokens"],
        "cacheCreationInputTokens": counts["cache_creation_input_tokens"],
        "cacheReadInputTokens": counts["cache_read_input_tokens"],
        "totalTokens": total,
    }


def refused_json(row: dict[str, Any]) -> dict[str, Any]:
    """Calls the proxy refused (counted per hour, so the period is read in whole hours)."""
    return {
        "sandboxId": row["sandbox_id"],
        "sandboxName": row["sandbox_name"],
        "reason": row["reason"],
        "count": int(row["count"]),
        "lastAt": rfc3339(row["last_at"]),
    }


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    return counts_json({name: sum(int(r[name]) for r in rows) for name in _COUNTS})


async def limits_json(workspace_id: str) -> dict[str, Any]:
    """The workspace's overrides, the server defaults, and what applies (0 = unlimited)."""
    settings = deps().settings
    row = await deps().db.rows("llm_get_quota", workspace_id=workspace_id)
    rpm = row[0]["rpm"] if row else None
    per_day = row[0]["tokens_per_day"] if row else None
    return {
        "rpm": rpm,
        "tokensPerDay": per_day,
        "default": {"rpm": settings.llm_rpm, "tokensPerDay": settings.llm_tokens_per_day},
        "effective": {
            "rpm": settings.llm_rpm if rpm is None else rpm,
            "tokensPerDay": settings.llm_tokens_per_day if per_day is None else per_day,
        },
        "updatedAt": rfc3339(row[0]["updated_at"]) if row else None,
    }


@blueprint.get("/api/workspaces/<workspace_id>/usage")
@validate_querystring(UsageQuery)
async def workspace_usage(workspace_id: str, query_args: UsageQuery) -> dict[str, Any]:
    """LLM calls and tokens of the workspace, per day, per sandbox and per model, and the
    calls the proxy refused, per sandbox and reason."""
    await require(workspace_id, Action.VIEW_USAGE)
    since, until = period(query_args)
    db = deps().db
    await deps().pending_writes.flush()  # calls answered before this request are counted
    params = {"workspace_id": workspace_id, "since": since, "until": until}
    by_day = await db.rows("llm_usage_by_day", **params)
    by_sandbox = await db.rows("llm_usage_by_sandbox", **params)
    by_model = await db.rows("llm_usage_by_model", **params)
    refused = await db.rows("llm_refusals_by_sandbox", **params)
    return {
        "from": rfc3339(since),
        "to": rfc3339(until),
        "totals": totals(by_day),
        "byDay": [{"day": r["day"], **counts_json(r)} for r in by_day],
        "bySandbox": [
            {"sandboxId": r["sandbox_id"], "sandboxName": r["sandbox_name"], **counts_json(r)}
            for r in by_sandbox
        ],
        "byModel": [{"model": r["model"], **counts_json(r)} for r in by_model],
        "refused": [refused_json(r) for r in refused],
        "limits": (await limits_json(workspace_id))["effective"],
    }


class QuotaBody(Body):
    rpm: int | None = Field(default=None, ge=0, le=2**31 - 1)
    tokens_per_day: int | None = Field(default=None, ge=0, le=2**62)


async def existing_workspace(workspace_id: str) -> None:
    if not await deps().db.rows("get_workspace", id=workspace_id):
        raise NotFound("workspace not found")


@blueprint.get("/api/admin/workspaces/<workspace_id>/quota")
async def get_quota(workspace_id: str) -> dict[str, Any]:
    """The workspace's LLM limits: overrides (null = server default) and what applies."""
    await require_admin()
    await existing_workspace(workspace_id)
    return await limits_json(workspace_id)


@blueprint.put("/api/admin/workspaces/<workspace_id>/quota")
@validate_request(QuotaBody)
async def put_quota(workspace_id: str, data: QuotaBody) -> dict[str, Any]:
    """Override the server's LLM limits for one workspace (0 = unlimited, null = default)."""
    await require_admin()
    await existing_workspace(workspace_id)
    await deps().db.exec(
        "llm_put_quota", workspace_id=workspace_id, rpm=data.rpm, tokens_per_day=data.tokens_per_day
    )
    await record_quota(workspace_id, {"rpm": data.rpm, "tokensPerDay": data.tokens_per_day})
    return await limits_json(workspace_id)


@blueprint.delete("/api/admin/workspaces/<workspace_id>/quota")
async def delete_quota(workspace_id: str) -> Response:
    """Drop the workspace's overrides: the server defaults apply again."""
    await require_admin()
    await existing_workspace(workspace_id)
    await deps().db.exec("llm_delete_quota", workspace_id=workspace_id)
    await record_quota(workspace_id, {"rpm": None, "tokensPerDay": None})
    return Response("", status=204)


async def record_quota(workspace_id: str, limits: dict[str, int | None]) -> None:
    """Audit a change of the workspace's LLM limits (null: the server's default again)."""
    await record(
        AuditAction.QUOTA_CHANGED, Target.of("quota", workspace_id), workspace_id, details=limits
    )
