"""Restart through the lifecycle service, and the idle watcher's per-workspace timeouts, on a
real database over the FakeBackend."""

from __future__ import annotations

import psycopg
import pytest
import trio

from agentserver.errors import Conflict
from agentserver.sandboxes.idle import IdleWatcher
from tests.support.lifecycle_world import Lifecycle


async def test_restart_stops_then_starts_the_agent_again(lifecycle: Lifecycle) -> None:
    """A running sandbox restarts through resuming back to running: the backend stopped its
    agent, then started a new one."""
    sid = await lifecycle.running()
    first = lifecycle.backend.ops("resume")
    row = await lifecycle.service.restart(sid)
    assert (row.status, row.status_reason) == ("resuming", "restarting")
    assert (await lifecycle.until(sid, "running", "failed"))["status"] == "running"
    assert lifecycle.statuses(sid)[-2:] == ["resuming", "running"]
    assert lifecycle.backend.ops("pause") == [sid]
    assert lifecycle.backend.ops("resume") == [*first, sid]
    assert lifecycle.backend.running(sid)


async def test_a_paused_sandbox_restarts_into_running(lifecycle: Lifecycle) -> None:
    """Restarting a paused sandbox starts it again."""
    sid = await lifecycle.paused()
    await lifecycle.service.restart(sid)
    assert (await lifecycle.until(sid, "running", "failed"))["status"] == "running"
    assert lifecycle.backend.running(sid)


@pytest.mark.parametrize(
    ("op", "reason"),
    [("pause", "restart failed: pause failed (injected)"), ("resume", "resume failed (injected)")],
)
async def test_a_backend_failure_during_restart_ends_failed(
    lifecycle: Lifecycle, op: str, reason: str
) -> None:
    """If the backend cannot stop or start the agent, the sandbox ends failed with the reason
    (never stuck resuming)."""
    sid = await lifecycle.running()
    lifecycle.backend.fail_next(op)  # type: ignore[arg-type]
    await lifecycle.service.restart(sid)
    failed = await lifecycle.until(sid, "running", "failed")
    assert (failed["status"], failed["statusReason"]) == ("failed", reason)
    row = await lifecycle.row(sid)
    assert row is not None
    assert row.status == "failed"


async def test_restart_is_refused_unless_running_or_paused(lifecycle: Lifecycle) -> None:
    """A failed sandbox cannot be restarted (409, resume is for that); a local one neither,
    with a message that its agent is restarted on its machine."""
    sid = await lifecycle.running()
    await lifecycle.backend.crash(sid)
    assert (await lifecycle.until(sid, "failed"))["status"] == "failed"
    with pytest.raises(Conflict, match="a failed sandbox cannot be restarted"):
        await lifecycle.service.restart(sid)
    await lifecycle.sql(
        "INSERT INTO sandboxes (id, workspace_id, name, type, status, agent_secret)"
        " VALUES ('localbox', %s, 'laptop', 'local', 'running', 'x')",
        lifecycle.workspace_id,
    )
    with pytest.raises(Conflict, match="restart `agentserver agent connect` there"):
        await lifecycle.service.restart("localbox")
    assert lifecycle.backend.ops("pause") == []


def _workspace(db_url: str, name: str, idle_timeout_seconds: int | None) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO workspaces (name, idle_timeout_seconds) VALUES (%s, %s) RETURNING id",
            (name, idle_timeout_seconds),
        ).fetchone()
    assert row is not None
    return str(row[0])


async def test_the_idle_watcher_uses_each_workspaces_timeout(
    lifecycle: Lifecycle, nursery: trio.Nursery
) -> None:
    """With a one-hour server default, a sandbox in a workspace whose timeout is 1 s is paused
    and one in a workspace whose timeout is an hour keeps running."""
    await lifecycle.sql(
        "UPDATE workspaces SET idle_timeout_seconds = 1 WHERE id = %s", lifecycle.workspace_id
    )
    quick = await lifecycle.running("quick")
    slow_ws = await trio.to_thread.run_sync(_workspace, lifecycle.db_url, "slow", 3600)
    with lifecycle.service.events.subscribe(slow_ws) as slow_events:
        slow = await lifecycle.service.create(slow_ws, "slow", "opencode", None)
        with trio.fail_after(30):
            async for event in slow_events.inbox:
                if event["type"] == "sandbox" and event["sandbox"].status == "running":
                    break
    watcher = IdleWatcher(lifecycle.service, 3600)
    await nursery.start(watcher.run)
    paused = await lifecycle.until(quick, "paused", "failed")
    assert (paused["status"], paused["statusReason"]) == (
        "paused",
        "paused after 1s without activity",
    )
    # The pass that paused `quick` looked at `slow` too, against its own workspace's hour.
    row = await lifecycle.row(slow.id)
    assert row is not None
    assert row.status == "running"
    assert lifecycle.backend.ops("pause") == [quick]


async def test_a_workspace_timeout_of_zero_never_pauses(lifecycle: Lifecycle) -> None:
    """A workspace whose timeout is 0 is skipped even when the server default has passed."""
    await lifecycle.sql(
        "UPDATE workspaces SET idle_timeout_seconds = 0 WHERE id = %s", lifecycle.workspace_id
    )
    sid = await lifecycle.running()
    await lifecycle.sql(
        "UPDATE sandboxes SET last_activity_at = now() - interval '2 hours' WHERE id = %s", sid
    )
    assert await lifecycle.service.pause_idle(60) is None
    row = await lifecycle.row(sid)
    assert row is not None
    assert row.status == "running"
