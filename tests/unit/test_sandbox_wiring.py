"""Sandbox rows become API JSON in the API layer; local agents' status goes through the
lifecycle service."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

from agentserver.api.sandboxes import sse
from agentserver.models import Sandbox
from agentserver.sandboxes.tunnel_session import TunnelSessions
from agentserver.settings import Settings
from agentserver.tunnel.hub import Hub

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def row(**changes: Any) -> Sandbox:
    fields: dict[str, Any] = {
        "id": "abcdefghijklmnop",
        "workspace_id": "w1",
        "name": "box",
        "type": "opencode",
        "status": "running",
        "status_reason": None,
        "created_by": "u1",
        "created_at": WHEN,
        "updated_at": WHEN,
        "last_activity_at": WHEN,
        "paused_at": None,
        "agent_secret": "agent-password",
        "endpoint_host": "10.0.0.7",
        "endpoint_port": 4096,
        "backend_ref": "ref",
        "last_heartbeat_at": None,
    }
    return Sandbox(**{**fields, **changes})


def data_of(message: bytes) -> tuple[str, Any]:
    kind_line, data_line, *_ = message.decode().split("\n")
    return kind_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))


def test_a_sandbox_event_is_rendered_in_the_api_shape_without_secrets() -> None:
    """A published sandbox row reaches the event stream as the API's JSON: times in RFC 3339,
    its subdomain URL, and never its password or internal address."""
    settings = Settings()
    kind, payload = data_of(sse({"type": "sandbox", "sandbox": row()}, settings))
    assert kind == "sandbox"
    assert payload["id"] == "abcdefghijklmnop"
    assert payload["createdAt"] == "2026-01-02T03:04:05Z"
    assert payload["url"] == f"{settings.base_scheme}://oc-abcdefghijklmnop.{settings.domain}/"
    text = json.dumps(payload)
    assert "agent-password" not in text
    assert "10.0.0.7" not in text


def test_a_deleted_sandbox_event_passes_through_unchanged() -> None:
    """A deletion's payload (already plain JSON) is sent as it was published."""
    event = {"type": "sandbox_deleted", "sandbox_deleted": {"id": "s1", "workspaceId": "w1"}}
    assert data_of(sse(event, Settings())) == ("sandbox_deleted", {"id": "s1", "workspaceId": "w1"})


class OpenTunnel:
    """Stands in for a live `Tunnel` in the hub (only `closed` and `going_away` are read)."""

    closed = False
    going_away = False


class RecordingOwners:
    """Stands in for the ownership table: each conditional status write is recorded as the
    transition it makes (as the lifecycle's `set_status` takes them) and changes the row."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, str, str | None]] = []

    async def mark_running(self, sandbox_id: str, generation: int) -> Sandbox:
        self.writes.append((sandbox_id, "offline", "running", None))
        return row(id=sandbox_id, type="local", status="running")

    async def mark_offline(self, sandbox_id: str, reason: str) -> Sandbox:
        self.writes.append((sandbox_id, "running", "offline", reason))
        return row(id=sandbox_id, type="local", status="offline", status_reason=reason)


class RecordingLifecycle:
    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    def publish(self, sandbox: Sandbox) -> None:
        self.published.append((sandbox.id, sandbox.status))


async def test_local_status_follows_the_hub_through_the_lifecycle_service() -> None:
    """With a live tunnel in the hub the sandbox is written `running`, without one `offline`
    with a reason, and both writes go to the lifecycle service (which publishes them)."""
    hub, lifecycle, owners = Hub(), RecordingLifecycle(), RecordingOwners()
    sessions = TunnelSessions(
        Settings(), cast(Any, None), hub, cast(Any, lifecycle), owners=cast(Any, owners)
    )
    await hub.register("s1", cast(Any, OpenTunnel()), generation=7)
    await sessions.sync_status("s1")
    hub.unregister("s1", hub.get("s1"))  # type: ignore[arg-type]
    await sessions.sync_status("s1")
    assert owners.writes == [
        ("s1", "offline", "running", None),
        ("s1", "running", "offline", "the local agent disconnected"),
    ]
    assert lifecycle.published == [("s1", "running"), ("s1", "offline")]
