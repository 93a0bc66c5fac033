"""Lifecycle races through the real `Sandboxes` service and a real database, with the
FakeBackend (sandboxes/fake.py) holding each backend operation where the race needs it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentserver.errors import BackendError, Conflict
from agentserver.sandboxes import service as service_module
from tests.support.lifecycle_world import WAIT, Lifecycle


async def test_pause_while_resuming_is_refused_and_the_resume_finishes(
    lifecycle: Lifecycle,
) -> None:
    """A pause that arrives while the backend is still resuming answers 409 and stops
    nothing; the resume then ends `running`."""
    sid = await lifecycle.paused()
    gate = lifecycle.backend.gate("resume")
    await lifecycle.service.resume(sid)
    with trio.fail_after(WAIT):
        await gate.arrived()
    with pytest.raises(Conflict, match="a resuming sandbox cannot be paused"):
        await lifecycle.service.pause(sid)
    gate.release()
    assert (await lifecycle.until(sid, "running", "failed"))["status"] == "running"
    assert lifecycle.backend.ops("pause") == [sid]  # only the pause before the resume
    assert lifecycle.backend.running(sid)


async def test_delete_while_creating_cancels_the_start(lifecycle: Lifecycle) -> None:
    """Deleting a sandbox whose backend is still creating it cancels the start: the row is
    gone, the backend was told to destroy it and holds nothing, and it never shows running."""
    gate = lifecycle.backend.gate("create")
    sandbox = await lifecycle.service.create(lifecycle.workspace_id, "box", "opencode", None)
    with trio.fail_after(WAIT):
        await gate.arrived()
        await lifecycle.service.delete(sandbox.id)
    assert gate.waiting == 0  # the held create was cancelled, not left waiting
    assert await lifecycle.row(sandbox.id) is None
    assert lifecycle.backend.ops("destroy") == [sandbox.id]
    assert lifecycle.backend.held == {}
    gate.release()
    await trio.testing.wait_all_tasks_blocked()
    assert "running" not in lifecycle.statuses(sandbox.id)
    assert lifecycle.backend.held == {}


async def test_two_resumes_at_once_start_it_once(lifecycle: Lifecycle) -> None:
    """Two resume clicks at the same moment: one wins, the other gets 409, and the backend
    is asked to resume exactly once."""
    sid = await lifecycle.paused()
    gate = lifecycle.backend.gate("resume")
    outcomes: list[str] = []

    async def click() -> None:
        try:
            await lifecycle.service.resume(sid)
        except Conflict:
            outcomes.append("conflict")
        else:
            outcomes.append("resuming")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(click)
        nursery.start_soon(click)
    assert sorted(outcomes) == ["conflict", "resuming"]
    gate.release()
    assert (await lifecycle.until(sid, "running", "failed"))["status"] == "running"
    assert lifecycle.backend.ops("resume") == [sid]


async def test_a_failed_create_leaves_failed_with_the_reason(lifecycle: Lifecycle) -> None:
    """A backend that fails to create leaves the sandbox `failed` with the backend's message
    as its reason (never deleted), and whatever half-started is stopped."""
    lifecycle.backend.fail_next("create", BackendError("no space left on device"))
    sandbox = await lifecycle.service.create(lifecycle.workspace_id, "box", "opencode", None)
    shown = await lifecycle.until(sandbox.id, "running", "failed")
    assert (shown["status"], shown["statusReason"]) == ("failed", "no space left on device")
    row = await lifecycle.row(sandbox.id)
    assert row is not None
    assert (row.status, row.status_reason) == ("failed", "no space left on device")
    assert lifecycle.backend.ops("pause") == [sandbox.id]


async def test_a_failed_pause_leaves_failed_with_the_reason(lifecycle: Lifecycle) -> None:
    """A backend that fails to stop a sandbox leaves it `failed`, saying the pause failed."""
    sid = await lifecycle.running()
    lifecycle.backend.fail_next("pause", BackendError("the container is stuck"))
    await lifecycle.service.pause(sid)
    shown = await lifecycle.until(sid, "paused", "failed")
    assert (shown["status"], shown["statusReason"]) == (
        "failed",
        "pause failed: the container is stuck",
    )


async def test_a_start_that_never_answers_fails_at_the_deadline(
    lifecycle: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create the backend never finishes fails at the start deadline with a reason naming
    it, and the half-started sandbox is stopped."""
    monkeypatch.setattr(service_module, "START_TIMEOUT", 0.2)
    lifecycle.backend.gate("create")  # never released
    sandbox = await lifecycle.service.create(lifecycle.workspace_id, "box", "opencode", None)
    shown = await lifecycle.until(sandbox.id, "running", "failed")
    assert shown["status"] == "failed"
    assert shown["statusReason"] == "the opencode agent did not become ready within 0.2 s"
    assert lifecycle.backend.ops("pause") == [sandbox.id]


async def test_a_crashed_agent_settles_failed(lifecycle: Lifecycle) -> None:
    """An agent that stops on its own is shown `failed` with the reason its backend gave."""
    sid = await lifecycle.running()
    await lifecycle.backend.crash(sid, "exit status 137")
    shown = await lifecycle.until(sid, "failed")
    assert shown["statusReason"] == "exit status 137"


async def test_a_retry_after_a_failure_runs_again(lifecycle: Lifecycle) -> None:
    """A failed sandbox resumed by the user starts again and ends `running`."""
    lifecycle.backend.fail_next("create")
    sandbox = await lifecycle.service.create(lifecycle.workspace_id, "box", "opencode", None)
    assert (await lifecycle.until(sandbox.id, "running", "failed"))["status"] == "failed"
    await lifecycle.service.resume(sandbox.id)
    assert (await lifecycle.until(sandbox.id, "running", "failed"))["status"] == "running"
    assert lifecycle.backend.running(sandbox.id)


async def test_reconcile_after_a_crash_restarts_a_running_row_the_backend_lost(
    lifecycle: Lifecycle,
) -> None:
    """After a server crash the backend no longer holds a sandbox its row says runs: the
    start-up reconciliation resumes it (→ resuming → running) rather than leaving it dead."""
    sid = await lifecycle.running()
    lifecycle.backend.forget(sid)
    await lifecycle.service.reconcile(at_start=True)
    shown = await lifecycle.until(sid, "resuming")
    assert shown["statusReason"] == "restarting after a server restart"
    assert (await lifecycle.until(sid, "running", "failed"))["status"] == "running"
    assert lifecycle.backend.ops("resume") == [sid]


async def test_reconcile_stops_an_agent_behind_a_paused_row(lifecycle: Lifecycle) -> None:
    """An agent still running behind a `paused` row (its stop was lost) is stopped."""
    sid = await lifecycle.paused()
    await lifecycle.backend.resume(next(h.spec for h in lifecycle.backend.held.values()))
    assert lifecycle.backend.running(sid)
    await lifecycle.service.reconcile()
    assert not lifecycle.backend.running(sid)
    row = await lifecycle.row(sid)
    assert row is not None
    assert row.status == "paused"


async def test_reconcile_records_a_start_whose_write_was_lost(lifecycle: Lifecycle) -> None:
    """A row left `creating` while its agent already runs (the write saying so was lost and no
    operation is under way) is recorded `running` at the backend's address, not started
    again."""
    sid = await lifecycle.running()
    endpoint = lifecycle.backend.held[sid].endpoint
    assert endpoint is not None
    await lifecycle.sql("UPDATE sandboxes SET status = 'creating' WHERE id = %s", sid)
    await lifecycle.service.reconcile()
    assert (await lifecycle.until(sid, "running"))["status"] == "running"
    row = await lifecycle.row(sid)
    assert row is not None
    assert (row.endpoint_host, row.endpoint_port) == (endpoint.host, endpoint.port)
    assert lifecycle.backend.ops("create") == [sid]
    assert lifecycle.backend.ops("resume") == []


async def test_reconcile_removes_what_the_backend_holds_without_a_row(
    lifecycle: Lifecycle,
) -> None:
    """A sandbox the backend holds with no row behind it (deleted while the server was down)
    is destroyed by the reconciliation."""
    sid = await lifecycle.running()
    await lifecycle.sql("DELETE FROM sandboxes WHERE id = %s", sid)
    await lifecycle.service.reconcile()
    assert lifecycle.backend.ops("destroy") == [sid]
    assert lifecycle.backend.held == {}
