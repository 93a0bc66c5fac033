"""Workspace events from other replicas: the notices' payloads, the relay that re-reads them,
and the versions that keep each stream from seeing a change twice or a sandbox go back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
import trio
import trio.testing

from agentserver.db.notify import WORKSPACE_EVENT, Notice
from agentserver.models import Sandbox
from agentserver.sandboxes.event_relay import Announced, EventRelay, parse
from agentserver.sandboxes.events import Event, WorkspaceEvents


def row(version: int | None, status: str = "running", sandbox_id: str = "s1") -> Sandbox:
    now = datetime.now(UTC)
    return Sandbox(
        id=sandbox_id,
        workspace_id="w1",
        name="box",
        type="opencode",
        status=status,
        status_reason=None,
        created_by=None,
        created_at=now,
        updated_at=now,
        last_activity_at=now,
        paused_at=None,
        agent_secret="s",
        endpoint_host=None,
        endpoint_port=None,
        backend_ref=None,
        last_heartbeat_at=None,
        version=version,
    )


def sandbox_event(sandbox: Sandbox) -> Event:
    return {"type": "sandbox", "sandbox": sandbox}


def deleted(sandbox_id: str = "s1") -> Event:
    return {"type": "sandbox_deleted", "sandbox_deleted": {"id": sandbox_id, "workspaceId": "w1"}}


def drain(events: WorkspaceEvents, sub: Any) -> list[Event]:
    got = []
    while True:
        try:
            got.append(sub.inbox.receive_nowait())
        except trio.WouldBlock:
            return got


async def test_a_row_no_newer_than_one_handed_on_goes_to_nobody() -> None:
    """A sandbox's row older than (or as old as) the last one published reaches neither the
    subscribers nor the observers: a late notice cannot take a dashboard back, an echo of a
    change published already is not published twice."""
    events = WorkspaceEvents()
    observed: list[Event] = []
    events.observe(lambda workspace_id, event: observed.append(event))
    with events.subscribe("w1") as sub:
        assert events.publish_nowait("w1", sandbox_event(row(5, "pausing"))) == 1
        assert events.publish_nowait("w1", sandbox_event(row(4, "running"))) == 0
        assert events.publish_nowait("w1", sandbox_event(row(5, "pausing"))) == 0
        assert events.publish_nowait("w1", sandbox_event(row(6, "paused"))) == 1
        got = drain(events, sub)
    assert [e["sandbox"].status for e in got] == ["pausing", "paused"]
    assert observed == got


async def test_after_a_deletion_nothing_of_that_sandbox_is_published_again() -> None:
    """Once a sandbox's deletion is published, a late row of it and a second deletion (the
    notice's echo) are dropped; other sandboxes are not affected."""
    events = WorkspaceEvents()
    with events.subscribe("w1") as sub:
        assert events.publish_nowait("w1", sandbox_event(row(3))) == 1
        assert events.publish_nowait("w1", deleted()) == 1
        assert events.publish_nowait("w1", sandbox_event(row(9))) == 0
        assert events.publish_nowait("w1", deleted()) == 0
        assert events.publish_nowait("w1", sandbox_event(row(1, sandbox_id="s2"))) == 1
        assert len(drain(events, sub)) == 3


async def test_a_row_without_a_version_is_published() -> None:
    """A row read without its version cannot be ordered: it is handed on, and it does not
    stop a versioned row after it."""
    events = WorkspaceEvents()
    with events.subscribe("w1"):
        assert events.publish_nowait("w1", sandbox_event(row(None))) == 1
        assert events.publish_nowait("w1", sandbox_event(row(None))) == 1
        assert events.publish_nowait("w1", sandbox_event(row(1))) == 1


@pytest.mark.parametrize(
    ("payload", "announced"),
    [
        ("sandbox w1 s1", Announced("sandbox", "w1", "s1")),
        ("previews w1 s1 abc", Announced("previews", "w1", "s1", "abc")),
        ("sandbox w1", None),
        ("previews w1 s1", None),
        ("workspace w1", None),
        ("", None),
    ],
)
def test_a_notice_payload_names_the_event_or_nothing(
    payload: str, announced: Announced | None
) -> None:
    """Payloads carry ids only: the kind, the workspace, the sandbox (and for previews the
    process that sent it); anything else is not an event this version knows."""
    assert parse(payload) == announced


class Rows:
    """Stands in for the database: the rows the relay re-reads."""

    def __init__(self, *rows: Sandbox) -> None:
        self.rows = {r.id: r for r in rows}

    async def one(self, name: str, cls: type[Sandbox], /, **params: Any) -> Sandbox | None:
        await trio.lowlevel.checkpoint()
        assert name == "sbx_get"
        return self.rows.get(params["id"])


async def test_the_relay_publishes_each_notice_as_the_database_has_it_now() -> None:
    """A sandbox notice becomes the row read now (or its deletion, found through the
    payload's workspace, when the row is gone); a previews notice from another process is
    published, one this process sent is not."""
    events = WorkspaceEvents()
    rows = Rows(row(7, "paused"))
    relay = EventRelay(cast(Any, rows), events)
    with events.subscribe("w1") as sub:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            relay.notice(Notice(WORKSPACE_EVENT, "sandbox w1 s1"))
            relay.notice(Notice(WORKSPACE_EVENT, "sandbox w1 gone"))
            relay.notice(Notice(WORKSPACE_EVENT, f"previews w1 s1 {events.origin}"))
            relay.notice(Notice(WORKSPACE_EVENT, "previews w1 s1 another"))
            relay.notice(Notice(WORKSPACE_EVENT, "nonsense"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        got = drain(events, sub)
    assert got == [
        sandbox_event(rows.rows["s1"]),
        {"type": "sandbox_deleted", "sandbox_deleted": {"id": "gone", "workspaceId": "w1"}},
        {"type": "previews", "previews": {"sandboxId": "s1"}},
    ]


async def test_a_gap_or_an_overflow_ends_every_stream() -> None:
    """Notices that may have been missed (the listener's reset, or more queued than the relay
    holds) end every open stream, so browsers reconnect and read a fresh snapshot."""
    events = WorkspaceEvents()
    relay = EventRelay(cast(Any, Rows()), events, queue=1)
    sub = events.subscribe("w1")
    relay.reset()
    with pytest.raises(trio.EndOfChannel):
        await sub.inbox.receive()
    sub = events.subscribe("w2")
    relay.notice(Notice(WORKSPACE_EVENT, "sandbox w2 s1"))  # queued, not yet read
    assert events.listeners("w2") == 1
    relay.notice(Notice(WORKSPACE_EVENT, "sandbox w2 s2"))  # no room: a gap
    assert events.listeners("w2") == 0
    sub.close()
